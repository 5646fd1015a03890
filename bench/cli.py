"""`unirec bench quality`: the equal-memory comparison of the embedding methods (bench/quality.py)."""

from __future__ import annotations

from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import quality as q
from bench.report import RESULTS_DIR, read_results, write_results
from embedding.budget import VARIANTS

bench_app = typer.Typer(help="Benchmarks over real data (results under bench/results/).", no_args_is_help=True)


@bench_app.callback()
def bench() -> None:
    """Benchmarks over real data (results under bench/results/)."""


RESULTS = RESULTS_DIR
FAST_METHODS = ("unified", "hashing_trick", "qr_mux")
FULL_METHODS = (q.BASELINE, *VARIANTS)
CORE_METHODS = (
    q.BASELINE,
    "unified",
    "hashing_trick",
    "hash_embedding",
    "hash_embedding_mux",
    "hashednet_mux",
    "robe",
    "robe_mux",
    "qr",
    "qr_mux",
    "managed_collision",
    "mlet_unified",
    "mlet_hashing_trick",
)
"""One variant per family and its multiplexed twin (CRT, PQ, path-based QR and per-feature HashedNet left out)."""


def method_set(methods: str, tune: bool) -> tuple[str, ...]:
    """The labels of `--methods` when no `--method` is given: `all` is every variant and, with `--tune`, the
    labels only the tuned grid knows (`bench.quality.TUNED_ONLY`: multi-size unified); `core` is
    CORE_METHODS."""
    if methods == "core":
        return CORE_METHODS
    return (*FULL_METHODS, *q.TUNED_ONLY) if tune else FULL_METHODS


@bench_app.command("quality")
def quality_command(
    dataset: list[str] = typer.Option(
        None, "--dataset", "-d",
        help="Datasets: movielens, frappe, criteo, or a feature YAML with a source: section (default: the three; "
             "fast: movielens).",
    ),  # fmt: skip
    method: list[str] = typer.Option(None, "--method", "-m", help="Budget variants (default: --methods set)."),
    methods: str = typer.Option(
        "all", help="Default set when no --method: all (every variant; --tune adds unified_multisize) or core."
    ),
    fast: bool = typer.Option(False, help="CI mode: 20k MovieLens events, 2 budgets, 1 seed, 3 methods."),
    budgets: int = typer.Option(4, min=1, help="Budgets per dataset, log-spaced between --low and --high."),
    low: float = typer.Option(0.01, help="Smallest budget, as a share of the collisionless tables."),
    high: float = typer.Option(0.5, help="Largest budget, as a share of the collisionless tables."),
    seeds: int = typer.Option(3, min=1, help="Seeds per configuration."),
    limit: int = typer.Option(None, help="Events per dataset (default: all)."),
    batch_size: int = typer.Option(512, min=1),
    epochs: int = typer.Option(1, min=1),
    sparse_lr: float = typer.Option(0.1, help="Adagrad learning rate of the embedding method's parameters."),
    dense_lr: float = typer.Option(5e-3, help="Adam learning rate of the dense network."),
    mlet_sweep: bool = typer.Option(False, help="Instead of the table: AUC vs d for MLET k in {d,2d,4d,8d}."),
    mlet_dims: list[int] = typer.Option([4, 8, 16, 32], "--mlet-dim", help="Output dims of the MLET sweep."),
    mlet_row_share: float = typer.Option(0.05, help="MLET sweep: unified rows as a share of collisionless rows."),
    data_dir: Path = typer.Option(None, help="Folder of the datasets (default: the usual search path)."),
    out: Path = typer.Option(RESULTS, help="Where the markdown, JSON and PNG files go."),
    threads: int = typer.Option(1, min=1, help="torch threads (the bench is single-process)."),
    render_only: bool = typer.Option(False, help="Rewrite the markdown and plot from the JSON of an earlier run."),
    merge: bool = typer.Option(False, help="Replace only the rerun methods' rows in an existing JSON."),
    tune: bool = typer.Option(
        False, help="Search each method's grid (bench.quality.grid_points), choose on validation, report test."
    ),
    val_share: float = typer.Option(0.1, help="--tune: share of the training period held out for validation."),
    share: list[float] = typer.Option(None, "--share", help="Explicit budget shares (instead of --budgets)."),
) -> None:
    """Train every method at equal memory on real data; write quality_<dataset>.md/.json/.png."""
    torch.set_num_threads(threads)
    console = Console(stderr=True)
    if fast:
        datasets = dataset or ["movielens"]
        labels = q.check_variants(method or FAST_METHODS)
        budgets, seeds, limit, batch_size = 2, 1, limit or 20_000, 256
        low, high = 0.1, 0.5
    else:
        datasets = dataset or list(q.DATASETS)
        if methods not in ("all", "core"):
            raise typer.BadParameter(f"expected all or core; got {methods!r}", param_hint="--methods")
        extra = q.TUNED_ONLY if tune else ()
        labels = q.check_variants(method or method_set(methods, tune), extra)
    bad = [d for d in datasets if not q.is_dataset(d)]
    if bad:
        raise typer.BadParameter(f"unknown datasets {bad}; expected one of {list(q.DATASETS)} or the path of a "
                                 "feature YAML with a source: section", param_hint="--dataset")  # fmt: skip
    spec = q.TrainSpec(batch_size=batch_size, epochs=epochs, sparse_lr=sparse_lr, dense_lr=dense_lr)
    out.mkdir(parents=True, exist_ok=True)
    prefix = "quality_fast_" if fast else "quality_"
    shares = sorted(share) if share else q.budget_shares(budgets, low, high)
    seed_list = list(range(seeds))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    for ref in datasets:
        name = q.dataset_label(ref)
        with Progress(*columns, console=console) as progress:
            if mlet_sweep:
                factors = [0, 1, 2, 4, 8]
                task = progress.add_task(f"{name} MLET", total=len(mlet_dims) * len(seed_list) * len(factors))
                results = q.mlet_sweep(
                    ref,
                    mlet_dims,
                    factors,
                    mlet_row_share,
                    seed_list,
                    spec,
                    limit=limit,
                    data_dir=data_dir,
                    on_result=lambda _r, _t=task: progress.advance(_t),
                )
                data = q.document(results, spec, dataset=name, row_share=mlet_row_share)
                md = write_results(f"quality_mlet_{name}", data, q.render_mlet, out)
                q.mlet_plot(data, out / f"quality_mlet_{name}.png")
                console.print(f"wrote {md}")
                continue
            if tune:
                name_e = f"quality_tuned_{name}_e{epochs}"
                if render_only:
                    data = read_results(name_e, out)
                else:
                    split = q.load_split(
                        ref, limit=limit, batch_size=batch_size, data_dir=data_dir, val_share=val_share
                    )
                    d = split.schema.embedding_dim
                    points = sum(len(q.grid_points(lb, d)) for lb in labels if lb != q.BASELINE)
                    total = (points * len(shares) + (q.BASELINE in labels)) * len(seed_list)
                    task = progress.add_task(f"{name} tuned", total=total)
                    results = q.run_tuned(
                        split, labels, shares, seed_list, spec, on_result=lambda _r, _t=task: progress.advance(_t)
                    )
                    data = q.document(results, spec, split={**q.split_facts(split), "n_val": split.n_val})
                    if merge:
                        data = q.merge_tuned(read_results(name_e, out), data)
                md = write_results(name_e, data, q.render_tuned, out)
                q.pareto_plot(q.selected(data), out / f"{name_e}.png")
                console.print(f"wrote {md} and .png")
                continue
            if render_only:
                data = read_results(f"{prefix}{name}", out)
                write_results(f"{prefix}{name}", data, q.render, out)
                q.pareto_plot(data, out / f"{prefix}{name}.png")
                continue
            split = q.load_split(ref, limit=limit, batch_size=batch_size, data_dir=data_dir)
            per_seed = (len(labels) - (q.BASELINE in labels)) * len(shares) + (q.BASELINE in labels)
            task = progress.add_task(name, total=per_seed * len(seed_list))
            results: list[q.RunResult] = []

            def done(result: q.RunResult, _task: int = task, _results: list[q.RunResult] = results) -> None:
                _results.append(result)
                progress.advance(_task)
                progress.update(_task, description=f"{result.dataset} {result.label} {result.budget_share:.3g}")

            q.run_grid(split, labels, shares, seed_list, spec, on_result=done)
            if merge:
                previous = q.runs_of(read_results(f"{prefix}{name}", out))
                results[:0] = [r for r in previous if r.label not in labels]
        data = q.document(results, spec, split=q.split_facts(split))
        md = write_results(f"{prefix}{name}", data, q.render, out)
        q.pareto_plot(data, out / f"{prefix}{name}.png")
        console.print(f"wrote {md} and .png")


STREAM_METHODS = ("unified", "hashing_trick", "robe_mux", "qr", "qr_mux", "managed_collision")


@bench_app.command("streaming")
def streaming_command(
    method: list[str] = typer.Option(None, "--method", "-m", help="Budget variants (default: a core set)."),
    events_per_window: int = typer.Option(5_000, min=100, help="Simulated events per window."),
    windows: int = typer.Option(6, min=2, help="Windows of event time."),
    budget_share: float = typer.Option(0.05, help="Bytes as a share of collisionless tables for every ID."),
    batch_size: int = typer.Option(256, min=1),
    churn: list[str] = typer.Option(["low", "high"], help="Churn settings (low, high)."),
    out: Path = typer.Option(RESULTS, help="Where quality_streaming.md/.json go."),
    merge: bool = typer.Option(False, help="Replace only the rerun methods' rows in an existing JSON."),
    tune: bool = typer.Option(
        False, help="Search each method's grid (bench.quality.grid_points), choose on validation, report test."
    ),
    val_share: float = typer.Option(0.1, help="--tune: share of the training period held out for validation."),
    share: list[float] = typer.Option(None, "--share", help="Explicit budget shares (instead of --budgets)."),
) -> None:
    """Train each method online through Kafka with `unirec train` on the churn simulator."""
    from bench import streaming as s

    labels = q.check_variants(method or STREAM_METHODS)
    bad = [c for c in churn if c not in s.CHURN]
    if bad:
        raise typer.BadParameter(f"unknown churn settings {bad}; known: {list(s.CHURN)}", param_hint="--churn")
    console = Console(stderr=True)
    results: list[s.StreamResult] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("streaming", total=len(labels) * len(churn))

        def done(result: s.StreamResult) -> None:
            results.append(result)
            progress.advance(task)
            progress.update(task, description=f"{result.churn} {result.label} AUC {result.auc:.4f}")

        s.run_streaming(
            labels,
            events_per_window=events_per_window,
            windows=windows,
            budget_share=budget_share,
            batch_size=batch_size,
            churn={c: s.CHURN[c] for c in churn},
            on_result=done,
        )
    if merge:
        kept = s.runs_of(read_results(s.NAME, out))
        rerun = {(r.churn, r.label) for r in results}
        results = [r for r in kept if (r.churn, r.label) not in rerun] + results
    data = s.document(results, events_per_window=events_per_window, windows=windows, batch_size=batch_size)
    console.print(f"wrote {write_results(s.NAME, data, s.render, out)}")
