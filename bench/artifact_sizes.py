"""Artifact bytes per embedding method and quantisation, against fp32 collisionless on the same features.

    .venv/bin/python bench/artifact_sizes.py [--schema movielens --schema frappe --schema criteo]
        [--budget-share 0.25] [--vocab-cap 50000]

For each shipped schema, the baseline is the collisionless model (one full-vocabulary table per
feature, vocab_size from the schema, capped at `vocab-cap` so Criteo's 33M values fit this
machine) exported in fp32. Every other method gets an equal-memory
budget of `budget-share` x the collisionless tables (`embedding.budget.budget_method_args`, the
paper's comparison at a fixed budget) and is exported in fp32, fp16, int8 and int4. Sizes are
the whole artifact (tables, dense network, manifest) and the sparse part alone; ratios are to the
fp32 collisionless artifact measured in the same run. Export and load (verify + build) times are
single runs on this machine: indicative only. Writes bench/results/artifact_sizes.{json,md}
(bench/report.py `write_results`, `render`).
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
from rich.progress import Progress

from bench.report import machine_load, write_results
from embedding import FeatureSchema, load_schema
from embedding.budget import VARIANTS, budget_method_args, with_vocab
from embedding.export import QUANTIZATIONS
from embedding.export.artifact import StoreSource, read_full
from embedding.model import ModelConfig, build_model
from registry.exporter import export_model
from registry.loading import load_serving_model
from registry.store import LocalModelStore

NAME = "artifact_sizes"


def collisionless_config(schema: FeatureSchema) -> ModelConfig:
    vocab = {s.name: s.vocab_size or 1000 for s in schema.sparse}
    return ModelConfig(method="collisionless", method_args={"vocab_sizes": vocab})


def measure(schema: FeatureSchema, label: str, config: ModelConfig, quantization: str, root: Path) -> dict:
    store = LocalModelStore(root / f"{label}-{quantization}")
    model = build_model(schema, config)
    started = time.perf_counter()
    manifest = export_model(model, store, quantization)
    export_s = time.perf_counter() - started
    started = time.perf_counter()
    load_serving_model(store)
    load_s = time.perf_counter() - started
    artifact = read_full(StoreSource(store, manifest.version))
    total = sum(len(store.read(manifest.version, name)) for name in store.files(manifest.version))
    sparse = sum(t.numel() * t.element_size() for t in artifact.tables.values())
    sparse += sum(v.numel() * v.element_size() for k, v in artifact.params.items() if k.startswith("sparse."))
    return {
        "label": label,
        "method": manifest.trained_method,
        "served": manifest.method,
        "quantization": quantization,
        "total": total,
        "sparse": sparse,
        "export_s": export_s,
        "load_s": load_s,
    }


def main(
    schema_names: list[str] = typer.Option(
        ["movielens", "frappe", "criteo"], "--schema", help="Shipped schemas to measure."
    ),
    vocab_cap: int = typer.Option(50_000, help="Cap on each feature's vocab_size (collisionless table rows)."),
    budget_share: float = typer.Option(0.25, help="Budget of every method as a share of collisionless fp32 tables."),
) -> None:
    torch.set_num_threads(2)
    data: dict[str, Any] = {
        "budget_share": budget_share,
        "vocab_cap": vocab_cap,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "load_before": machine_load(),
        "schemas": [],
    }
    with tempfile.TemporaryDirectory() as tmp, Progress() as progress:
        root = Path(tmp)
        for name in schema_names:
            schema = load_schema(name)
            schema = with_vocab(schema, {s.name: min(s.vocab_size or 1000, vocab_cap) for s in schema.sparse})
            base_cfg = collisionless_config(schema)
            base = measure(schema, "collisionless", base_cfg, "fp32", root)
            budget = int(base["sparse"] * budget_share)
            variants = budget_method_args(schema, budget, variants=VARIANTS)
            configs = {"collisionless": base_cfg} | {
                label: ModelConfig(method=method, method_args=args) for label, (method, args) in variants.items()
            }
            task = progress.add_task(f"{name}", total=len(configs) * len(QUANTIZATIONS))
            rows = []
            for label, config in configs.items():
                for quantization in QUANTIZATIONS:
                    if schema.embedding_dim % 2 and quantization == "int4":
                        continue
                    rows.append(measure(schema, label, config, quantization, root))
                    progress.advance(task)
            data["schemas"].append({
                "name": name, "embedding_dim": schema.embedding_dim, "sparse_features": len(schema.sparse),
                "baseline": base, "budget": budget, "rows": rows,
            })  # fmt: skip
    data["load_after"] = machine_load()
    print(write_results(NAME, data, render).read_text())


def render(data: dict[str, Any]) -> str:
    lines = [
        "# Artifact sizes",
        "",
        "Generated by `bench/artifact_sizes.py`. Baseline: the fp32 collisionless artifact of the same schema "
        f"(one full-vocabulary table per feature). Other methods: equal-memory budget of {data['budget_share']:g} x "
        "the collisionless tables (trainable fp32 parameters, `embedding.budget`), exported in each quantisation. "
        "`total` is every file of the artifact; `sparse` the embedding part (quantised tables plus the method's "
        "other tensors); ratios are to the baseline's total and sparse bytes. MLET is exported collapsed, so its "
        f"size is that of the method it wraps. Vocabularies capped at {data['vocab_cap']:,} values per feature. "
        f"Times are single runs on a shared {data['cores']}-core {data['machine']} CPU (torch {data['torch']}; "
        f"load average {data['load_before']:.1f} before, {data['load_after']:.1f} after).",
        "",
    ]
    for entry in data["schemas"]:
        base, budget = entry["baseline"], entry["budget"]
        lines += [
            f"## {entry['name']} (d={entry['embedding_dim']}, {entry['sparse_features']} sparse features, "
            f"baseline {base['total'] / 1024:.1f} KiB, budget {budget / 1024:.1f} KiB)",
            "",
            "| variant | method (served) | quantization | total KiB | sparse KiB | total vs baseline "
            "| sparse vs baseline | export s | load s |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in entry["rows"]:
            served = r["method"] if r["method"] == r["served"] else f"{r['method']} ({r['served']})"
            lines.append(
                f"| {r['label']} | {served} | {r['quantization']} | {r['total'] / 1024:.1f} | "
                f"{r['sparse'] / 1024:.1f} | {r['total'] / base['total']:.3f} | {r['sparse'] / base['sparse']:.3f} "
                f"| {r['export_s']:.3f} | {r['load_s']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    typer.run(main)
