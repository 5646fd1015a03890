"""Multi-size against single-size unified embedding at equal memory and equal width, on real data.

    flock /tmp/unirec-bench.lock .venv/bin/python -m bench.quality_multisize --dataset movielens --dataset frappe

The protocol is `bench.quality`'s (one DCN-v2, time-ordered split, one pass, held-out ROC AUC and
log loss, mean and std over seeds; `load_split`, `train_eval`), with three unified models that
hold the same table bytes (a share of the collisionless tables) and give the network the same
input width W = (features) x 16, so the dense network is the same size in all three:

- `unified`: single-size, rows of d = 16, one lookup per feature (the shipped schemas);
- `unified_k2`: rows of d = 8, two lookups for every feature (twice the rows of `unified`);
- `unified_multisize`: rows of d = 8, 1-6 lookups per feature allocated by the fourth-root rule
  of `embedding.multisize` from the training split's cardinalities, summing to W / 8.

`unified_k2` separates the effect of the allocation from that of simply looking up more rows
(the paper's Multiplex PQ is k lookups for every feature).
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
from typing import Annotated, Any

import torch
import typer

from bench.quality import Split, TrainSpec, load_split, train_eval
from bench.report import machine_load, write_results
from core.logs import get_logger, log_event
from embedding.budget import FP32
from embedding.model import ModelConfig
from embedding.multisize import multisize_schema, with_lookups
from embedding.schema import FeatureSchema

log = get_logger("bench.quality_multisize")

NAME = "quality_multisize"
VARIANTS = ("unified", "unified_k2", "unified_multisize")
HALF = 8
"""Row width of the multi-lookup variants (the shipped schemas' d = 16 halved)."""


def variant_schema(label: str, split: Split) -> FeatureSchema:
    """The schema of a variant: same features and total width as the split's single-size schema."""
    base = split.schema
    if label == "unified":
        return base
    if label == "unified_k2":
        return with_lookups(base, dict.fromkeys(base.sparse_names, 2), embedding_dim=HALF)
    if label == "unified_multisize":
        counts = {n: float(len(v)) for n, v in split.vocab.items()}
        return multisize_schema(base, base.total_width, HALF, counts)
    raise ValueError(f"unknown variant {label!r}; known: {list(VARIANTS)}")


def run(datasets: list[str], shares: list[float], seeds: int, epochs: list[int], spec: TrainSpec) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    facts: dict[str, Any] = {}
    for dataset in datasets:
        split = load_split(dataset, batch_size=spec.batch_size)
        single = split.schema
        if any(s.lookups != 1 for s in single.sparse):
            raise ValueError(f"schema {single.name!r} is already multi-size; the comparison starts from single-size")
        schemas = {label: variant_schema(label, split) for label in VARIANTS}
        facts[dataset] = {
            "n_train": split.n_train,
            "n_test": split.n_test,
            "collisionless_bytes": split.collisionless_bytes,
            "cardinalities": {n: len(v) for n, v in split.vocab.items()},
            "lookups": {label: {s.name: s.lookups for s in sch.sparse} for label, sch in schemas.items()},
            "embedding_dim": {label: sch.embedding_dim for label, sch in schemas.items()},
            "total_width": {label: sch.total_width for label, sch in schemas.items()},
        }
        for share in shares:
            budget = int(split.collisionless_bytes * share)
            for epoch in epochs:
                for seed in range(seeds):
                    for label, schema in schemas.items():
                        rows = max(1, round(budget / (schema.embedding_dim * FP32)))
                        config = ModelConfig(method="unified", method_args={"num_rows": rows, "seed": seed}, seed=seed)
                        auc, logloss, seconds, used = train_eval(
                            dataclasses.replace(split, schema=schema), config, dataclasses.replace(spec, epochs=epoch)
                        )
                        runs.append(
                            {"dataset": dataset, "label": label, "share": share, "budget_bytes": budget,
                             "bytes": used, "epochs": epoch, "seed": seed, "auc": auc, "logloss": logloss,
                             "train_s": seconds}
                        )  # fmt: skip
                        log_event(log, "run", **runs[-1])
    return {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "load_1m": machine_load()},
        "spec": dataclasses.asdict(spec),
        "seeds": seeds,
        "facts": facts,
        "runs": runs,
    }


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _paired(runs: list[dict[str, Any]], cell: list[dict[str, Any]], against: str) -> str:
    """Mean ± std over seeds of the AUC difference to `against` in the same seed."""
    base = {r["seed"]: r["auc"] for r in cell if r["label"] == against}
    return "{:+.4f} ± {:.4f}".format(*_stats([r["auc"] - base[r["seed"]] for r in runs if r["seed"] in base]))


def render(data: dict[str, Any]) -> str:
    """The results tables (rendered from the JSON document alone)."""
    runs = data["runs"]
    lines = [
        "# Multi-size vs single-size unified embedding (equal table bytes, equal width)",
        "",
        "Generated by `python -m bench.quality_multisize` (protocol: `bench/quality_multisize.py`). "
        f"{data['seeds']} seeds; AUC and log loss on the held-out time-ordered 20%, mean ± std over seeds; "
        "Δ AUC is against the named variant of the same budget, epochs and seed (mean ± std of the paired "
        "differences). "
        f"Machine: {data['machine']['platform']}, torch {data['machine']['torch']}, "
        f"load {data['machine']['load_1m']:.2f}.",
        "",
    ]
    for dataset, facts in data["facts"].items():
        lines += [f"## {dataset}", "", f"{facts['n_train']:,} training and {facts['n_test']:,} held-out events.", ""]
        lines += ["| feature | values seen | " + " | ".join(f"{v} lookups" for v in facts["lookups"]) + " |"]
        lines += ["|---|---:|" + "---:|" * len(facts["lookups"])]
        for name, count in facts["cardinalities"].items():
            ks = " | ".join(str(facts["lookups"][v][name]) for v in facts["lookups"])
            lines.append(f"| {name} | {count:,} | {ks} |")
        dims = ", ".join(f"{v}: d = {d}" for v, d in facts["embedding_dim"].items())
        lines += ["", f"Row widths: {dims}; total width {sorted(set(facts['total_width'].values()))}.", ""]
        lines += [
            "| budget | epochs | method | table bytes | AUC | Δ AUC vs unified | Δ AUC vs unified_k2 | log loss |",
            "|---|---:|---|---:|---:|---:|---:|---:|",
        ]
        mine = [r for r in runs if r["dataset"] == dataset]
        for share in sorted({r["share"] for r in mine}):
            for epochs in sorted({r["epochs"] for r in mine}):
                cell = [r for r in mine if r["share"] == share and r["epochs"] == epochs]
                for label in VARIANTS:
                    rs = [r for r in cell if r["label"] == label]
                    if not rs:
                        continue
                    auc, auc_sd = _stats([r["auc"] for r in rs])
                    ll, ll_sd = _stats([r["logloss"] for r in rs])
                    vs_single = _paired(rs, cell, "unified") if label != "unified" else "—"
                    vs_k2 = _paired(rs, cell, "unified_k2") if label == "unified_multisize" else "—"
                    lines.append(
                        f"| {share:g} x collisionless | {epochs} | {label} | {rs[0]['bytes'] / 1024:,.0f} KiB "
                        f"| {auc:.4f} ± {auc_sd:.4f} | {vs_single} | {vs_k2} | {ll:.4f} ± {ll_sd:.4f} |"
                    )
        lines.append("")
    return "\n".join(lines)


def main(
    dataset: Annotated[list[str], typer.Option(help="Shipped dataset schemas (single-size).")] = ["movielens"],  # noqa: B006
    share: Annotated[list[float], typer.Option(help="Table bytes as shares of the collisionless tables.")] = [0.05, 0.25],  # noqa: B006, E501
    seeds: Annotated[int, typer.Option(min=1)] = 3,
    epochs: Annotated[list[int], typer.Option(help="Passes over the training split (each a separate run).")] = [1],  # noqa: B006
) -> None:
    torch.set_num_threads(1)
    data = run(dataset, share, seeds, epochs, TrainSpec())
    path = write_results(NAME, data, render)
    typer.echo(f"wrote {path}")


if __name__ == "__main__":
    typer.run(main)
