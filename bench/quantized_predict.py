"""Predictions/s of served artifacts (fbgemm quantised lookups) against the fp32 training module.

    .venv/bin/python bench/quantized_predict.py [--rows 1000000] [--batch 512] [--seconds 3]

One MovieLens-schema DCN model (unified embedding of `rows` x 16, 4 row blocks) is exported in
fp32, fp16, int8 and int4; each `ServingModel.predict` (inference mode, fbgemm
`IntNBitTableBatchedEmbeddingBagsCodegen` on CPU) is timed on the same pre-featurized batches as
the baseline: the trained `DCNModel` (TorchRec EmbeddingBagCollection, fp32) under
`torch.inference_mode()`. Also: the time of `apply_delta` for a delta of 1% of the rows, and the
served table bytes. Ratios are measured in the same run; absolute numbers depend on the machine's
load. Writes bench/results/quantized_predict.{json,md} (bench/report.py `write_results`, `render`).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import typer

from bench.report import machine_load, write_results
from embedding import Event, Featurizer, load_schema
from embedding.model import ModelConfig, build_model
from registry.exporter import Exporter
from registry.loading import load_delta, load_serving_model
from registry.store import LocalModelStore

NAME = "quantized_predict"


def events(n: int, seed: int) -> list[Event]:
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, 200_000, (n,), generator=g).tolist()
    movies = torch.randint(0, 50_000, (n,), generator=g).tolist()
    return [
        Event(
            event_id=str(i),
            ts=i,
            sparse={
                "user": u,
                "movie": m,
                "age": 18 + u % 50,
                "gender": "MF"[u % 2],
                "occupation": str(u % 21),
                "zip": str(10000 + u % 900),
            },
        )  # fmt: skip
        for i, (u, m) in enumerate(zip(users, movies, strict=True))
    ]


def rate(fn, batches, seconds: float) -> float:  # type: ignore[no-untyped-def]
    fn(batches[0])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for batch in batches:
            fn(batch)
            done += len(batch)
    return done / (time.perf_counter() - started)


def main(
    rows: int = typer.Option(1_000_000, help="Rows of the unified table."),
    batch: int = typer.Option(512, help="Events per predict call."),
    seconds: float = typer.Option(2.0, help="Timing window per variant and round."),
    threads: int = typer.Option(2, help="torch intra-op threads."),
    rounds: int = typer.Option(3, help="Interleaved timing rounds; the best rate of each variant is kept."),
) -> None:
    torch.set_num_threads(threads)
    load_before = machine_load()
    schema = load_schema("movielens")
    config = ModelConfig(method_args={"num_rows": rows, "num_blocks": 4})
    model = build_model(schema, config).eval()
    featurizer = Featurizer(schema)
    batches = [featurizer(events(batch, seed)) for seed in range(8)]

    def baseline(b):  # type: ignore[no-untyped-def]
        with torch.inference_mode():
            return torch.sigmoid(model(b.sparse, b.dense))

    predictors = {"fp32 DCNModel (EmbeddingBagCollection)": baseline}
    info: dict[str, tuple[int, float | None]] = {"fp32 DCNModel (EmbeddingBagCollection)": (rows * 16 * 4, None)}
    tmp = tempfile.TemporaryDirectory()
    for quantization in ("fp32", "fp16", "int8", "int4"):
        store = LocalModelStore(Path(tmp.name) / quantization)
        exporter = Exporter(store, quantization, retention=None)
        base = exporter.export_full(model)
        served = load_serving_model(store)
        ids = torch.randperm(rows // 4)[: rows // 400]
        exporter.export_delta({f"unified_{b}": ids for b in range(4)}, model)
        delta = load_delta(store, base.version, 1, served.manifest)
        started = time.perf_counter()
        served.apply_delta(delta)
        apply_s = time.perf_counter() - started
        name = f"served {quantization}"
        predictors[name] = served.predict
        info[name] = (sum(q.num_bytes() for q in served.tables.values()), apply_s)
    tmp.cleanup()
    # interleaved rounds, best rate per variant: the machine is shared, so load moves between runs
    best = dict.fromkeys(predictors, 0.0)
    for _ in range(rounds):
        for name, fn in predictors.items():
            best[name] = max(best[name], rate(fn, batches, seconds))
    data = {
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": threads,
        "rows": rows,
        "batch": batch,
        "seconds": seconds,
        "rounds": rounds,
        "load_before": load_before,
        "load_after": machine_load(),
        "variants": [
            {"name": name, "events_per_s": best[name], "table_bytes": info[name][0], "apply_delta_s": info[name][1]}
            for name in predictors
        ],
    }
    print(write_results(NAME, data, render).read_text())


def render(data: dict[str, Any]) -> str:
    variants = data["variants"]
    base_rate = variants[0]["events_per_s"]
    lines = [
        "# Quantised serving vs the fp32 training module",
        "",
        f"Generated by `bench/quantized_predict.py` on {data['machine']} ({data['threads']} torch threads, "
        f"{data['cores']} cores shared with other jobs, load average {data['load_before']:.1f} before and "
        f"{data['load_after']:.1f} after; torch {data['torch']}). Unified table {data['rows']:,} x 16 in 4 blocks, "
        f"MovieLens schema, batches of {data['batch']} events (pre-featurized), `predict` under inference mode; "
        f"best of {data['rounds']} interleaved rounds of {data['seconds']:g} s. "
        "`apply_delta`: a delta of 1% of the rows "
        "(copy of the quantised tables + row writes + dense weights).",
        "",
        "| variant | events/s | vs fp32 module | table MB | apply_delta s |",
        "|---|---:|---:|---:|---:|",
    ]
    for v in variants:
        apply_s = v["apply_delta_s"]
        lines.append(
            f"| {v['name']} | {v['events_per_s']:,.0f} | {v['events_per_s'] / base_rate:.2f}x | "
            f"{v['table_bytes'] / 1e6:.1f} | {'-' if apply_s is None else f'{apply_s:.3f}'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    typer.run(main)
