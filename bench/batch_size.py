"""Batch size against learning rate: what a larger batch costs in progressive AUC, and what LR scaling buys back.

The trainer's real step (`Trainer.train_batch`: the TorchRec unified table with fused row-wise
Adagrad, the dense Adam, progressive validation) trains the first N MovieLens-100k ratings in time
order, in memory, one rank; every event is scored before the step that trains on it. For batch B
against the reference batch B0 (64, the old default) with k = B / B0, each optimiser's learning rate
is kept, scaled by sqrt(k) or by k (Goyal et al. 2017 linear scaling; Krizhevsky 2014 sqrt scaling
for adaptive methods), capped at `--max-sparse-lr` / `--max-dense-lr`. Progressive AUC is reported
over the scored window the trainer test uses (events 15,001-20,000) and over all events, as the
median of `--seeds` initialisations.

    .venv/bin/python bench/batch_size.py [--events 20000] [--seeds 3] [--batch-size 256 ...]

Writes bench/results/batch_size.{json,md} (bench/report.py).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.report import machine_load, write_results

NAME = "batch_size"
REFERENCE_BATCH = 64
SCALINGS = ("none", "sqrt", "linear")


def _scale(kind: str, k: float) -> float:
    return {"none": 1.0, "sqrt": math.sqrt(k), "linear": k}[kind]


def progressive_auc(events: list, home: Path, redis_url: str, batch_size: int, sparse_lr: float,
                    dense_lr: float, seed: int, scored: slice) -> dict[str, float]:  # fmt: skip
    """(AUC over `scored`, AUC over all, events/s) of one in-memory training pass."""
    import torch.distributed as dist

    from core.net import free_port
    from embedding.events import Featurizer
    from trainer.ingest import Batch
    from trainer.loop import Trainer
    from trainer.progressive import rank_auc
    from trainer.settings import TrainerSettings

    os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    torch.manual_seed(seed)
    np.random.seed(seed)
    settings = TrainerSettings(home=home, redis_url=redis_url, metrics_port=0, export_every_s=0, delta_every_s=0,
                               threads=1, batch_size=batch_size, sparse_lr=sparse_lr, dense_lr=dense_lr)  # fmt: skip
    trainer = Trainer(settings)
    predictions = io.StringIO()
    trainer._predictions = predictions  # the predictions log `run()` opens when UNIREC_TRAINER_PREDICTIONS_LOG is set
    try:
        featurizer = Featurizer(trainer.schema)
        started = time.perf_counter()
        for i in range(0, len(events), batch_size):
            chunk = events[i : i + batch_size]
            trainer.train_batch(Batch(features=featurizer(chunk), event_ids=[e.event_id for e in chunk],
                                      max_ts_ms=max(e.ts for e in chunk), offsets={}))  # fmt: skip
        rate = len(events) / (time.perf_counter() - started)
    finally:
        trainer.churn.close()
        dist.destroy_process_group()
    index = {e.event_id: i for i, e in enumerate(events)}
    scores = np.full(len(events), np.nan)
    for line in predictions.getvalue().splitlines():
        _, event_id, score, _ = line.split("\t")
        scores[index[event_id]] = float(score)
    assert not np.isnan(scores).any(), "every event is scored once"
    labels = np.array([float(e.label) for e in events])
    return {"auc_scored": rank_auc(scores[scored], labels[scored]), "auc_all": rank_auc(scores, labels),
            "events_per_s": rate}  # fmt: skip


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from core.net import free_port
    from services.replay.reader import iter_events
    from trainer.settings import TrainerSettings
    from unirec.infra import LocalServer

    defaults = TrainerSettings()
    events = list(iter_events("movielens", limit=args.events))
    scored = slice(int(len(events) * 0.75), len(events))
    cells: list[dict[str, Any]] = []
    load_before = machine_load()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        redis = LocalServer("redis", "127.0.0.1", free_port(), root)
        redis.start()
        try:
            configs = [(REFERENCE_BATCH, "none", "none")]
            for b in args.batch_size:
                configs += [(b, s, d) for s in SCALINGS for d in SCALINGS]
            for b, s_kind, d_kind in configs:
                k = b / REFERENCE_BATCH
                sparse_lr = min(defaults.sparse_lr * _scale(s_kind, k), args.max_sparse_lr)
                dense_lr = min(defaults.dense_lr * _scale(d_kind, k), args.max_dense_lr)
                runs = [progressive_auc(events, root / f"b{b}-{s_kind}-{d_kind}-{seed}", redis.address, b,
                                        sparse_lr, dense_lr, seed, scored)
                        for seed in range(args.seeds)]  # fmt: skip
                cell = {"batch_size": b, "sparse_scaling": s_kind, "dense_scaling": d_kind, "sparse_lr": sparse_lr,
                        "dense_lr": dense_lr, "runs": runs,
                        **{key: statistics.median(r[key] for r in runs)
                           for key in ("auc_scored", "auc_all", "events_per_s")}}  # fmt: skip
                cells.append(cell)
                print(f"batch {b:5d} sparse {s_kind:6s} ({sparse_lr:.3g}) dense {d_kind:6s} ({dense_lr:.3g}): "
                      f"AUC {cell['auc_scored']:.4f} scored, {cell['auc_all']:.4f} all, "
                      f"{cell['events_per_s']:,.0f} events/s", flush=True)  # fmt: skip
        finally:
            redis.stop()
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "events": len(events),
        "scored": [scored.start + 1, scored.stop],
        "seeds": args.seeds,
        "reference": {"batch_size": REFERENCE_BATCH, "sparse_lr": defaults.sparse_lr, "dense_lr": defaults.dense_lr},
        "caps": {"sparse_lr": args.max_sparse_lr, "dense_lr": args.max_dense_lr},
        "load_before": round(load_before, 2),
        "load_after": round(machine_load(), 2),
        "cells": cells,
    }


def render(data: dict[str, Any]) -> str:
    ref = data["reference"]
    base = next(c for c in data["cells"] if c["batch_size"] == ref["batch_size"])
    lines = [
        "# Batch size against learning rate: progressive AUC on MovieLens-100k",
        "",
        f"Generated by `bench/batch_size.py` ({data['created']}; load average {data['load_before']} before, "
        f"{data['load_after']} after). The trainer's step in memory, 1 rank, the first {data['events']:,} "
        f"ratings in time order; AUC of each event scored before it is trained on, over events "
        f"{data['scored'][0]:,}-{data['scored'][1]:,} (scored) and over all; median of {data['seeds']} seeds. "
        f"Reference: batch {ref['batch_size']}, sparse (row-wise Adagrad) LR {ref['sparse_lr']}, dense (Adam) LR "
        f"{ref['dense_lr']}; batch B scales each LR by 1, sqrt(B/{ref['batch_size']}) or B/{ref['batch_size']}, "
        f"capped at {data['caps']['sparse_lr']} and {data['caps']['dense_lr']}.",
        "",
        "| batch | sparse LR | dense LR | AUC scored | vs reference | AUC all | vs reference | events/s |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for c in data["cells"]:
        lines.append(
            f"| {c['batch_size']} | {c['sparse_scaling']} ({c['sparse_lr']:.3g}) | {c['dense_scaling']} "
            f"({c['dense_lr']:.3g}) | {c['auc_scored']:.4f} | {c['auc_scored'] - base['auc_scored']:+.4f} | "
            f"{c['auc_all']:.4f} | {c['auc_all'] - base['auc_all']:+.4f} | {c['events_per_s']:,.0f} |"
        )
    best: dict[int, dict[str, Any]] = {}
    for c in data["cells"]:
        if c["batch_size"] not in best or c["auc_scored"] > best[c["batch_size"]]["auc_scored"]:
            best[c["batch_size"]] = c
    lines += ["", "Best scaling per batch size (scored window):", ""]
    for b, c in sorted(best.items()):
        lines.append(f"- batch {b}: sparse {c['sparse_scaling']}, dense {c['dense_scaling']}: "
                     f"{c['auc_scored']:.4f} ({c['auc_scored'] - base['auc_scored']:+.4f})")  # fmt: skip
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, action="append", help="repeatable; default 256, 1024, 4096")
    parser.add_argument("--max-sparse-lr", type=float, default=1.0)
    parser.add_argument("--max-dense-lr", type=float, default=0.03)
    parser.add_argument("--dry-run", action="store_true", help="print, do not write results")
    args = parser.parse_args()
    args.batch_size = args.batch_size or [256, 1024, 4096]
    run = measure(args)
    if args.dry_run:
        print(json.dumps([{k: v for k, v in c.items() if k != "runs"} for c in run["cells"]], indent=1))
        return
    print(write_results(NAME, run, render))


if __name__ == "__main__":
    main()
