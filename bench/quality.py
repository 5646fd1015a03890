"""Parameter-accuracy comparison of the embedding methods at equal memory, on real data.

    unirec bench quality                         # full mode: every method, 4 budgets, 3 seeds, 3 datasets
    unirec bench quality --fast                  # CI mode: MovieLens head, 2 budgets, 1 seed, 4 methods
    unirec bench quality --dataset frappe --mlet-sweep

The protocol follows the unified-embedding paper's Table 1: one DCN-v2 model (`embedding.model`),
only the embedding method changes; every method gets the same number of trainable fp32 embedding
bytes (`embedding.budget.budget_method_args`), expressed as a share of the collisionless tables
(one row per value seen in the training split). Events are split in time order (first
`train_share` for training, the rest held out; Frappe has no timestamps, so row order); the model
trains one pass over the training split in time order, as a streaming trainer would, and is scored
on the held-out part (ROC AUC and log loss, mean and std over seeds; the seed changes both the
initialisation and the hash functions).

Compositional methods (QR, CRT, PQ, path, QR with threshold) are given the training split's
vocabularies (`known_vocab`): they enumerate those values (Shi et al., Def. 1), so each value seen
in training gets its own tuple of component rows, collision-free whenever the product of the moduli
covers the vocabulary (Thm 1); values first seen in the held-out part are hashed into the free
categories. The multiplexed variants (one shared space for all features) hash as before.

Optimiser (the trainer's split, in-process and unsharded): every parameter of the embedding
method (tables, ROBE arrays, importance weights, MLET projections) with Adagrad at `sparse_lr`,
the dense network with Adam at `dense_lr`; gradients are dense, which is fine at these sizes.

Results (bench/report.py `write_results`): per dataset a JSON of every run with the facts of the
split and the training spec, the markdown table rendered from it (`render`: rows = methods,
columns = budgets, best per column in bold) and a Pareto plot (embedding bytes vs AUC, log x).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from core.logs import get_logger, log_event
from embedding.budget import FP32, VARIANTS, budget_method_args
from embedding.events import Event, FeatureBatch, Featurizer
from embedding.methods import CompositionalEmbedding
from embedding.methods._ops import jagged
from embedding.model import DCNModel, ModelConfig, build_model
from embedding.schema import FeatureSchema, load_schema
from services.replay.reader import iter_events
from trainer.progressive import log_loss, rank_auc

log = get_logger("bench.quality")

DATASETS = ("movielens", "frappe", "criteo")
BASELINE = "collisionless"
MUX = {"hash_embedding_mux", "hashednet_mux", "robe_mux", "qr_mux", "pq_mux"}
"""Labels of the multiplexed variants (one parameter space shared by all features)."""
MC_EVICTION_INTERVAL = 5
"""Training steps between admissions of managed collisions: TorchRec's default-like 100 never fires in a
one-pass run of a few dozen steps, and every ID would stay on the shared not-yet-admitted row."""


@dataclass(frozen=True)
class TrainSpec:
    batch_size: int = 512
    epochs: int = 1
    sparse_lr: float = 0.1
    dense_lr: float = 5e-3


@dataclass
class Split:
    """A dataset featurized once and split in time order."""

    name: str
    schema: FeatureSchema
    train: list[FeatureBatch]
    test: list[FeatureBatch]
    vocab: dict[str, np.ndarray]
    """Fingerprints seen per feature in the training split (the collisionless vocabulary)."""
    n_train: int
    n_test: int
    positive_rate: float
    val: list[FeatureBatch] = field(default_factory=list)
    """The end of the training period, held out of training to choose hyperparameters (may be empty)."""
    n_val: int = 0

    @property
    def collisionless_bytes(self) -> int:
        return sum((len(v) + 1) * self.schema.width(n) * FP32 for n, v in self.vocab.items())


@dataclass
class RunResult:
    dataset: str
    label: str
    method: str
    budget_share: float
    budget_bytes: int
    bytes: int
    seed: int
    auc: float
    logloss: float
    train_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def load_split(
    name: str,
    *,
    limit: int | None = None,
    train_share: float = 0.8,
    batch_size: int = 512,
    data_dir: str | Path | None = None,
    embedding_dim: int | None = None,
    val_share: float = 0.0,
) -> Split:
    """Events of a dataset in time order, featurized in batches and split train/test. `name`: a
    shipped dataset (`DATASETS`) or the path of a feature YAML whose `source:` section names its files.

    With `val_share` > 0 the last `val_share` of the training period becomes the validation split:
    the model never trains on it and the vocabulary comes from the rest."""
    if not 0 <= val_share < 1:
        raise ValueError(f"val_share must be in [0, 1); got {val_share}")
    schema = load_schema(name)
    if embedding_dim is not None:
        schema = schema.model_copy(update={"embedding_dim": embedding_dim})
    events: list[Event] = list(iter_events(name, limit=limit, data_dir=data_dir))
    if len(events) < 100:
        raise ValueError(f"dataset {name!r} gave {len(events)} events; need at least 100 for a train/test split")
    cut = int(len(events) * train_share)
    featurize = Featurizer(schema)

    def batches(part: Sequence[Event]) -> list[FeatureBatch]:
        return [featurize(part[i : i + batch_size]) for i in range(0, len(part), batch_size)]

    fit_end = cut - int(cut * val_share)
    train, val, test = batches(events[:fit_end]), batches(events[fit_end:cut]), batches(events[cut:])
    seen: dict[str, list[np.ndarray]] = {n: [] for n in schema.sparse_names}
    for b in train:
        for n, bag in jagged(b.sparse, schema).items():
            seen[n].append(bag.values().numpy())
    vocab = {n: np.unique(np.concatenate(v)) if v else np.empty(0, np.int64) for n, v in seen.items()}
    labels = np.array([e.label for e in events], dtype=np.float64)
    return Split(dataset_label(name), schema, train, test, vocab, fit_end, len(events) - cut, float(labels.mean()),
                 val, cut - fit_end)  # fmt: skip


def is_dataset(ref: str) -> bool:
    """A shipped dataset, or an existing feature YAML with a `source:` section."""
    if ref in DATASETS:
        return True
    path = Path(ref)
    return path.suffix in (".yaml", ".yml") and path.is_file() and load_schema(path).source is not None


def dataset_label(ref: str) -> str:
    """What results are filed under: a shipped dataset's name, else the `name` of its YAML schema."""
    return ref if ref in DATASETS else load_schema(ref).name


def budget_shares(n: int, low: float = 0.01, high: float = 0.5) -> list[float]:
    """n shares of the collisionless bytes, log-spaced from `low` to `high`."""
    if n < 1 or not 0 < low <= high:
        raise ValueError(f"need n >= 1 and 0 < low <= high; got n={n}, low={low}, high={high}")
    if n == 1:
        return [high]
    return [float(x) for x in np.geomspace(low, high, n)]


def configs_at(split: Split, share: float, labels: Sequence[str], seed: int, **hyper: Any) -> dict[str, ModelConfig]:
    """label -> ModelConfig with `share` x the collisionless bytes (collisionless itself: the full tables);
    `hyper`: keyword arguments of `budget_method_args` (parts, robe_block, num_hashes, mlet_inner_dim)."""
    out: dict[str, ModelConfig] = {}
    variants = [v for v in labels if v != BASELINE]
    budget = int(split.collisionless_bytes * share)
    counts = {n: max(1, len(v)) for n, v in split.vocab.items()}
    for label, (method, args) in budget_method_args(
        split.schema, budget, vocab=counts, variants=variants, seed=seed, known_vocab=True, **hyper
    ).items():
        if method == "managed_collision":
            args = {**args, "eviction_interval": MC_EVICTION_INTERVAL}
        out[label] = ModelConfig(method=method, method_args=args, seed=seed)
    if BASELINE in labels:
        out[BASELINE] = ModelConfig(
            method=BASELINE, method_args={"vocab_sizes": {n: len(v) for n, v in split.vocab.items()}}, seed=seed
        )
    return {label: out[label] for label in labels if label in out}


def build(split: Split, config: ModelConfig) -> DCNModel:
    model = build_model(split.schema, config)
    if config.method == BASELINE:  # fill the vocabulary buffers with the training split's values
        for n, values in split.vocab.items():
            model.sparse.vocabulary(n).copy_(torch.from_numpy(values))
    if isinstance(model.sparse, CompositionalEmbedding) and model.sparse.vocab_sizes:  # known vocabularies
        model.sparse.set_vocabulary({n: split.vocab[n] for n in model.sparse.vocab_sizes if len(split.vocab[n])})
    return model


def embedding_bytes(model: DCNModel) -> int:
    return sum(p.numel() * p.element_size() for p in model.sparse.parameters())


def fit(split: Split, config: ModelConfig, spec: TrainSpec) -> tuple[DCNModel, float]:
    """The model of `config` trained on the training split (`spec.epochs` passes in order) and the seconds it took."""
    model = build(split, config)
    sparse_params = list(model.sparse.parameters())
    ids = {id(p) for p in sparse_params}
    dense_params = [p for p in model.parameters() if id(p) not in ids]
    optimisers = [
        torch.optim.Adagrad(sparse_params, lr=spec.sparse_lr),
        torch.optim.Adam(dense_params, lr=spec.dense_lr),
    ]
    started = time.perf_counter()
    model.train()
    for _ in range(spec.epochs):
        for batch in split.train:
            assert batch.labels is not None
            loss = F.binary_cross_entropy_with_logits(model(batch.sparse, batch.dense), batch.labels)
            for opt in optimisers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimisers:
                opt.step()
    return model, time.perf_counter() - started


def score(model: DCNModel, batches: Sequence[FeatureBatch]) -> tuple[float, float]:
    """(ROC AUC, log loss) of a trained model on `batches`."""
    model.eval()
    with torch.no_grad():
        scores = torch.cat([torch.sigmoid(model(b.sparse, b.dense)) for b in batches]).double().numpy()
    labels = torch.cat([b.labels for b in batches if b.labels is not None]).double().numpy()
    return rank_auc(scores, labels), log_loss(scores, labels)


def train_eval(split: Split, config: ModelConfig, spec: TrainSpec) -> tuple[float, float, float, int]:
    """(held-out AUC, held-out log loss, training seconds, trainable embedding bytes) of one run."""
    model, train_s = fit(split, config, spec)
    auc, loss = score(model, split.test)
    return auc, loss, train_s, embedding_bytes(model)


def run_grid(
    split: Split,
    labels: Sequence[str],
    shares: Sequence[float],
    seeds: Sequence[int],
    spec: TrainSpec,
    on_result: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Every (budget, label, seed); collisionless once per seed (its size does not depend on the budget)."""
    results: list[RunResult] = []
    for seed in seeds:
        for i, share in enumerate(shares):
            wanted = [lb for lb in labels if lb != BASELINE or i == 0]
            for label, config in configs_at(split, share, wanted, seed).items():
                auc, loss, train_s, nbytes = train_eval(split, config, spec)
                is_base = label == BASELINE
                result = RunResult(
                    dataset=split.name,
                    label=label,
                    method=config.method,
                    budget_share=1.0 if is_base else share,
                    budget_bytes=split.collisionless_bytes if is_base else int(split.collisionless_bytes * share),
                    bytes=nbytes,
                    seed=seed,
                    auc=auc,
                    logloss=loss,
                    train_s=train_s,
                )
                results.append(result)
                log_event(log, "run", **{k: v for k, v in asdict(result).items() if k != "extra"})
                if on_result is not None:
                    on_result(result)
    return results


# ------------------------------------------------------------------------------------------ reporting


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(results: Sequence[RunResult]) -> dict[tuple[str, float], dict[str, float]]:
    """(label, budget share) -> auc/logloss mean and std, bytes, number of seeds."""
    groups: dict[tuple[str, float], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.label, r.budget_share), []).append(r)
    out = {}
    for key, runs in groups.items():
        auc, auc_std = _mean_std([r.auc for r in runs])
        loss, loss_std = _mean_std([r.logloss for r in runs])
        out[key] = {
            "auc": auc,
            "auc_std": auc_std,
            "logloss": loss,
            "logloss_std": loss_std,
            # MLET trains a k-wide factorisation but serves the collapsed d-wide table: plot what is served
            "bytes": statistics.fmean(r.budget_bytes if r.method == "mlet" else r.bytes for r in runs),
            "over_budget": any(r.method != "mlet" and r.bytes > r.budget_bytes * 1.05 for r in runs),
            "n": len(runs),
            "train_s": statistics.fmean(r.train_s for r in runs),
        }
    return out


def _fmt_bytes(n: float) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def split_facts(split: Split) -> dict[str, Any]:
    """What the results document records of the data a grid ran on."""
    return {
        "name": split.name,
        "n_train": split.n_train,
        "n_test": split.n_test,
        "positive_rate": split.positive_rate,
        "embedding_dim": split.schema.embedding_dim,
        "sparse_features": len(split.schema.sparse),
        "collisionless_bytes": split.collisionless_bytes,
        "vocab_values": sum(len(v) for v in split.vocab.values()),
    }


def document(results: Sequence[RunResult], spec: TrainSpec, **facts: Any) -> dict[str, Any]:
    """The JSON document of a quality run: every run, the training spec and `facts` (split, sweep settings)."""
    return {
        **facts,
        "spec": asdict(spec),
        "mc_eviction_interval": MC_EVICTION_INTERVAL,
        "runs": [asdict(r) for r in results],
    }


def runs_of(data: dict[str, Any]) -> list[RunResult]:
    return [RunResult(**row) for row in data.get("runs", [])]


def render(data: dict[str, Any]) -> str:
    """Table-1 style: rows = methods, columns = budgets; AUC and log loss mean ± std, best per column bold."""
    results = runs_of(data)
    split, spec = data["split"], data["spec"]
    summary = summarise(results)
    shares = sorted({s for (lb, s) in summary if lb != BASELINE})
    labels = [lb for lb in dict.fromkeys(r.label for r in results) if lb != BASELINE]
    seeds = sorted({r.seed for r in results})
    base = summary.get((BASELINE, 1.0))
    collisionless = split["collisionless_bytes"]
    lines = [
        f"# Quality at equal memory: {split['name']}",
        "",
        f"Generated by `unirec bench quality`. {split['n_train']:,} training and {split['n_test']:,} held-out events "
        f"(time-ordered split; positive rate {split['positive_rate']:.3f}), d={split['embedding_dim']}, "
        f"{split['sparse_features']} sparse features, DCN-v2 (`embedding.model`), one pass in time order, "
        f"batch {spec['batch_size']}, Adagrad lr {spec['sparse_lr']:g} for the embedding method's parameters and "
        f"Adam lr {spec['dense_lr']:g} for the dense network; seeds {seeds} (initialisation and hash functions). "
        f"Budgets are shares of the collisionless tables ({_fmt_bytes(collisionless)} of fp32 for the "
        f"{split['vocab_values']:,} values seen in training), split by "
        "`embedding.budget.budget_method_args`; columns show the share and the bytes every method spends. "
        "Cells: held-out AUC mean ± std over seeds (log loss below); **bold** = best in the column; "
        "`mux` = multiplexed (one parameter space shared by all features); MLET spends the budget on the "
        "collapsed table it serves and trains a k = 4d factorisation of it; managed collisions admit new IDs "
        f"every {data['mc_eviction_interval']} steps.",
        "",
    ]
    if base is not None:
        lines += [
            f"Collisionless (full tables, {_fmt_bytes(base['bytes'])}): AUC {base['auc']:.4f} ± {base['auc_std']:.4f}, "
            f"log loss {base['logloss']:.4f} ± {base['logloss_std']:.4f}.",
            "",
        ]
    if any(v["over_budget"] for (lb, _), v in summary.items() if lb != BASELINE):
        lines += [
            "† the method cannot be configured that small (its bytes, in brackets, exceed the budget by more "
            "than 5%; e.g. path-based QR needs a d x d path matrix per feature): not an equal-memory point.",
            "",
        ]
    for metric, better in (("auc", max), ("logloss", min)):
        head = "| method | " + " | ".join(f"{s:.3g} ({_fmt_bytes(collisionless * s)})" for s in shares) + " |"
        lines += [f"## {'AUC' if metric == 'auc' else 'Log loss'}", "", head, "|---|" + "---:|" * len(shares)]
        best = {}
        for s in shares:
            values = [summary[(lb, s)][metric] for lb in labels if (lb, s) in summary]
            best[s] = better(v for v in values if math.isfinite(v)) if any(map(math.isfinite, values)) else None
        for lb in labels:
            cells = []
            for s in shares:
                cell = summary.get((lb, s))
                if cell is None:
                    cells.append("–")
                    continue
                text = f"{cell[metric]:.4f} ± {cell[metric + '_std']:.4f}"
                text = f"**{text}**" if cell[metric] == best[s] else text
                over = cell["over_budget"] and lb != BASELINE
                cells.append(f"{text} † ({_fmt_bytes(cell['bytes'])})" if over else text)
            lines.append(f"| {lb} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def pareto_plot(data: dict[str, Any], path: Path) -> None:
    """Embedding bytes (log x) vs held-out AUC, one line per method, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = runs_of(data)
    summary = summarise(results)
    labels = [lb for lb in dict.fromkeys(r.label for r in results) if lb != BASELINE]
    fig, ax = plt.subplots(figsize=(9, 6))
    cmap = plt.get_cmap("tab20")
    for i, lb in enumerate(labels):
        pts = sorted((v["bytes"], v["auc"], v["auc_std"]) for (label, _), v in summary.items() if label == lb)
        xs, ys, es = zip(*pts, strict=True)
        style = "-" if lb in MUX or lb == "unified" else "--"
        ax.errorbar(xs, ys, yerr=es, label=lb, marker="o", ms=3, linestyle=style, color=cmap(i % 20), capsize=2)
    base = summary.get((BASELINE, 1.0))
    if base is not None:
        ax.errorbar(
            [base["bytes"]],
            [base["auc"]],
            yerr=[base["auc_std"]],
            marker="*",
            ms=12,
            color="black",
            linestyle="none",
            label="collisionless",
        )
    ax.set_xscale("log")
    ax.set_xlabel("embedding bytes, fp32 (MLET: the collapsed table it serves)")
    ax.set_ylabel("held-out AUC")
    ax.set_title(f"{data['split']['name']}: AUC at equal memory (solid: unified and multiplexed)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ MLET sweep


def mlet_sweep(
    name: str,
    dims: Sequence[int],
    factors: Sequence[int],
    row_share: float,
    seeds: Sequence[int],
    spec: TrainSpec,
    *,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    on_result: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """AUC vs output dim d of unified with MLET at inner dim k = factor x d (factor 0 = plain unified).

    Rows are fixed at `row_share` x the collisionless rows, so the served table grows with d as in
    the MLET paper's comparison; k only changes training."""
    results: list[RunResult] = []
    for d in dims:
        split = load_split(name, limit=limit, batch_size=spec.batch_size, data_dir=data_dir, embedding_dim=d)
        rows = max(2, round(sum(len(v) + 1 for v in split.vocab.values()) * row_share))
        for seed in seeds:
            for factor in factors:
                unified = {"num_rows": rows, "num_blocks": 1, "seed": seed}
                if factor == 0:
                    config = ModelConfig(method="unified", method_args=unified, seed=seed)
                else:
                    config = ModelConfig(
                        method="mlet",
                        method_args={"inner": "unified", "inner_args": unified, "inner_dim": factor * d},
                        seed=seed,
                    )
                auc, loss, train_s, nbytes = train_eval(split, config, spec)
                label = "unified" if factor == 0 else f"mlet k={factor}d"
                result = RunResult(
                    name,
                    label,
                    config.method,
                    row_share,
                    rows * d * FP32,
                    nbytes,
                    seed,
                    auc,
                    loss,
                    train_s,
                    {"d": d, "k": factor * d},
                )
                results.append(result)
                log_event(log, "mlet_run", label=label, d=d, seed=seed, auc=auc, logloss=loss)
                if on_result is not None:
                    on_result(result)
    return results


def render_mlet(data: dict[str, Any]) -> str:
    """AUC per output dim d (columns) and training (rows: plain unified, MLET k = factor x d)."""
    results = runs_of(data)
    groups: dict[tuple[str, int], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.label, r.extra["d"]), []).append(r)
    dims = sorted({d for _, d in groups})
    labels = list(dict.fromkeys(r.label for r in results))
    name = results[0].dataset
    lines = [
        f"# MLET sweep: {name}",
        "",
        f"Generated by `unirec bench quality --mlet-sweep`. Unified embedding with {data['row_share']:g} x the "
        "collisionless "
        f"rows, output dim d (served table: rows x d), trained plain or through MLET with inner dim k "
        f"(W = W2 @ W1, collapsed for serving, so serving cost depends on d only). Same protocol as the "
        f"equal-memory tables (one pass, batch {data['spec']['batch_size']}); held-out AUC mean ± std over "
        f"{len({r.seed for r in results})} seeds; **bold** = best per d.",
        "",
        "| training | " + " | ".join(f"d={d}" for d in dims) + " |",
        "|---|" + "---:|" * len(dims),
    ]
    means = {key: statistics.fmean(r.auc for r in runs) for key, runs in groups.items()}
    best = {d: max(v for (_, dd), v in means.items() if dd == d) for d in dims}
    for lb in labels:
        cells = []
        for d in dims:
            runs = groups.get((lb, d))
            if not runs:
                cells.append("–")
                continue
            mean, std = _mean_std([r.auc for r in runs])
            text = f"{mean:.4f} ± {std:.4f}"
            cells.append(f"**{text}**" if mean == best[d] else text)
        lines.append(f"| {lb} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mlet_plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = runs_of(data)
    groups: dict[str, dict[int, list[float]]] = {}
    for r in results:
        groups.setdefault(r.label, {}).setdefault(r.extra["d"], []).append(r.auc)
    fig, ax = plt.subplots(figsize=(7, 5))
    for lb, by_d in groups.items():
        ds = sorted(by_d)
        stats = [_mean_std(by_d[d]) for d in ds]
        ax.errorbar(ds, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", label=lb, capsize=2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("output embedding dim d")
    ax.set_ylabel("held-out AUC")
    ax.set_title(f"{results[0].dataset}: MLET (inner dim k) vs plain unified")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_variants(labels: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    known = (BASELINE, *VARIANTS, *extra)
    bad = [lb for lb in labels if lb not in known]
    if bad:
        raise ValueError(f"unknown methods {bad}; known: {list(known)}")
    return list(labels)


# ------------------------------------------------------------------------------------------ tuned grid


TUNED_ONLY = ("unified_multisize",)
"""Labels only the tuned grid knows: multi-size unified (`embedding.multisize`: rows of width d' and 1-6
lookups per feature from the training split's cardinalities, same total width as the single-size schema)."""
MAX_CATEGORIES = 1 << 63
"""A compositional feature's S = prod(m_i) must fit int64 (the hash range); k = 8 at large budgets overflows it."""


def grid_points(label: str, d: int) -> list[tuple[str, dict[str, Any]]]:
    """(name, keywords) of the hyperparameters searched per method, after the papers: QR/CRT/PQ partitions
    k in {2, 3, 4, 8} (Shi et al. search {2, 3, 4, 8, 16}; 8 only where d allows PQ's k parts), ROBE's
    block Z in {d/2, d, 2d}, hash embedding's hashes per value in {2, 3}, MLET's inner dim in {2d, 4d},
    path-based QR's path function affine or an MLP of hidden width 4 or d, multi-size unified's row width
    d' in {d/2, d/4}; one point for the methods without one. Keywords are `budget_method_args`'s, except
    `row_dim` (multi-size unified). Points a budget cannot hold are skipped (`infeasible`)."""
    if label in ("qr", "qr_mux", "crt", "pq", "pq_mux"):
        ks = [k for k in (2, 3, 4, 8) if not label.startswith("pq") or k <= d]
        return [(f"k={k}", {"parts": k}) for k in ks]
    if label in ("robe", "robe_mux"):
        return [(f"Z={z}", {"robe_block": z}) for z in (max(1, d // 2), d, 2 * d)]
    if label in ("hash_embedding", "hash_embedding_mux"):
        return [(f"hashes={h}", {"num_hashes": h}) for h in (2, 3)]
    if label.startswith("mlet_"):
        return [(f"k={f}d", {"mlet_inner_dim": f * d}) for f in (2, 4)]
    if label == "path_qr":
        return [("affine", {"path_hidden": 0}), ("mlp h=4", {"path_hidden": 4}), (f"mlp h={d}", {"path_hidden": d})]
    if label == "unified_multisize":
        return [(f"d'={w}", {"row_dim": w}) for w in (d // 2, d // 4) if w >= 1]
    return [("-", {})]


def tuned_config(split: Split, share: float, label: str, seed: int, hyper: dict[str, Any]) -> tuple[Split, ModelConfig]:
    """The split (its schema changed for multi-size unified) and config of one grid point at `share`."""
    if label == "unified_multisize":
        from embedding.multisize import multisize_schema

        width = hyper["row_dim"]
        counts = {n: float(max(1, len(v))) for n, v in split.vocab.items()}
        schema = multisize_schema(split.schema, split.schema.total_width, width, counts)
        rows = max(1, round(split.collisionless_bytes * share / (width * FP32)))
        return replace(split, schema=schema), ModelConfig(
            method="unified", method_args={"num_rows": rows, "num_blocks": 1, "seed": seed}, seed=seed
        )
    return split, configs_at(split, share, [label], seed, **hyper)[label]


def infeasible(split: Split, config: ModelConfig, budget: int) -> str | None:
    """Why a grid point is no equal-memory point at this budget (None when it is): a category count over
    int64 (k = 8 at large budgets), or bytes over the budget by more than 5% (CRT's coprime moduli at k = 8
    and small budgets; path-based QR's MLP); MLET is judged by the table it serves."""
    moduli = config.method_args.get("moduli") if config.method == "compositional" else None
    if moduli is not None:
        per_feature = moduli.values() if isinstance(moduli, dict) else [moduli]
        if any(math.prod(m) >= MAX_CATEGORIES for m in per_feature):
            return "prod(moduli) over int64"
    nbytes = embedding_bytes(build(split, config))
    if config.method != "mlet" and nbytes > budget * 1.05:
        return f"{nbytes} bytes over the budget of {budget}"
    return None


def run_tuned(
    split: Split,
    labels: Sequence[str],
    shares: Sequence[float],
    seeds: Sequence[int],
    spec: TrainSpec,
    on_result: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Every (seed, budget, label, grid point), scored on the validation and the test split; collisionless
    once per seed. `extra` holds the grid point (`hp`) and the validation AUC and log loss."""
    if not split.val:
        raise ValueError("run_tuned needs a validation split; load it with val_share > 0")
    results: list[RunResult] = []
    d = split.schema.embedding_dim
    for seed in seeds:
        for i, share in enumerate(shares):
            for label in labels:
                if label == BASELINE and i > 0:
                    continue
                for hp, hyper in grid_points(label, d) if label != BASELINE else [("-", {})]:
                    is_base = label == BASELINE
                    budget = split.collisionless_bytes if is_base else int(split.collisionless_bytes * share)
                    point, config = tuned_config(split, share, label, seed, hyper)
                    if not is_base and (why := infeasible(point, config, budget)):
                        log_event(log, "tuned_skip", label=label, hp=hp, share=share, seed=seed, why=why)
                        continue
                    model, train_s = fit(point, config, spec)
                    val_auc, val_loss = score(model, split.val)
                    auc, loss = score(model, split.test)
                    result = RunResult(
                        dataset=split.name,
                        label=label,
                        method=config.method,
                        budget_share=1.0 if is_base else share,
                        budget_bytes=budget,
                        bytes=embedding_bytes(model),
                        seed=seed,
                        auc=auc,
                        logloss=loss,
                        train_s=train_s,
                        extra={"hp": hp, "val_auc": val_auc, "val_logloss": val_loss},
                    )
                    results.append(result)
                    log_event(log, "tuned_run", label=label, hp=hp, share=share, seed=seed, val_auc=val_auc, auc=auc)
                    if on_result is not None:
                        on_result(result)
    return results


def select_best(results: Sequence[RunResult]) -> dict[tuple[str, float], tuple[str, list[RunResult]]]:
    """(label, budget share) -> (grid point with the best mean validation AUC over seeds, its runs)."""
    groups: dict[tuple[str, float], dict[str, list[RunResult]]] = {}
    for r in results:
        groups.setdefault((r.label, r.budget_share), {}).setdefault(r.extra["hp"], []).append(r)
    out = {}
    for key, by_hp in groups.items():
        hp = max(by_hp, key=lambda h: statistics.fmean(r.extra["val_auc"] for r in by_hp[h]))
        out[key] = (hp, by_hp[hp])
    return out


def selected(data: dict[str, Any]) -> dict[str, Any]:
    """The document with only the runs of the selected grid points (what the tables and plot report)."""
    chosen = select_best(runs_of(data))
    runs = [asdict(r) for _, rs in chosen.values() for r in rs]
    return {**data, "runs": runs}


def merge_tuned(previous: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new` with the runs of `previous` whose method was not rerun; both must share the split, the training
    spec and the seeds (paired margins compare runs of the same seed)."""
    for key in ("split", "spec"):
        if previous.get(key) != new.get(key):
            raise ValueError(f"cannot merge tuned runs with another {key}: {previous.get(key)} vs {new.get(key)}")
    old_seeds = {r["seed"] for r in previous["runs"]}
    new_seeds = {r["seed"] for r in new["runs"]}
    if old_seeds != new_seeds:
        raise ValueError(f"cannot merge tuned runs over seeds {sorted(new_seeds)} into seeds {sorted(old_seeds)}")
    rerun = {r["label"] for r in new["runs"]}
    return {**new, "runs": [r for r in previous["runs"] if r["label"] not in rerun] + new["runs"]}


def paired(runs: Sequence[RunResult], against: Sequence[RunResult]) -> tuple[float, float]:
    """Mean and std over the shared seeds of the test AUC of `runs` minus that of `against`."""
    ref = {r.seed: r.auc for r in against}
    return _mean_std([r.auc - ref[r.seed] for r in runs if r.seed in ref])


def winners(
    chosen: dict[tuple[str, float], tuple[str, list[RunResult]]], share: float
) -> tuple[str, list[tuple[str, float, float]]]:
    """The method with the best mean test AUC at `share` and, for every other method, best first, the
    paired margin of the winner over it (mean, std over seeds)."""
    cells = {lb: runs for (lb, s), (_, runs) in chosen.items() if s == share and lb != BASELINE}
    order = sorted(cells, key=lambda lb: -statistics.fmean(r.auc for r in cells[lb]))
    best = order[0]
    return best, [(lb, *paired(cells[best], cells[lb])) for lb in order[1:]]


def render_winners(chosen: dict[tuple[str, float], tuple[str, list[RunResult]]], shares: Sequence[float]) -> list[str]:
    """Per budget: the winner, its paired margin over the runner-up, the methods it does not beat by more
    than one std (ties), and its paired margin over collisionless."""
    base = chosen.get((BASELINE, 1.0))
    lines = [
        "## Winner per budget",
        "",
        "Paired margins (mean ± std of the per-seed test AUC differences); a method whose margin to the "
        "winner is within one std ties with it.",
        "",
        "| budget | winner | test AUC | over the runner-up | ties (margin) | over collisionless |",
        "|---|---|---:|---:|---|---:|",
    ]
    for s in shares:
        best, rest = winners(chosen, s)
        runs = chosen[(best, s)][1]
        m, sd = _mean_std([r.auc for r in runs])
        if rest:
            up, dm, dsd = rest[0]
            runner = f"{up} {dm:+.4f} ± {dsd:.4f}" + (" tie" if abs(dm) <= dsd else "")
        else:
            runner = "–"
        ties = ", ".join(f"{lb} ({dm:+.4f} ± {dsd:.4f})" for lb, dm, dsd in rest if abs(dm) <= dsd) or "none"
        if base is not None:
            bm, bsd = paired(runs, base[1])
            vs_base = f"{bm:+.4f} ± {bsd:.4f}" + (" tie" if abs(bm) <= bsd else "")
        else:
            vs_base = "–"
        lines.append(f"| {s:.3g} | {best} | {m:.4f} ± {sd:.4f} | {runner} | {ties} | {vs_base} |")
    return [*lines, ""]


def render_tuned(data: dict[str, Any]) -> str:
    """Test AUC of the grid point chosen on validation, per method (rows) and budget (columns), with the
    margin over unified; then every grid point's validation AUC."""
    results = runs_of(data)
    chosen = select_best(results)
    split, spec = data["split"], data["spec"]
    shares = sorted({s for (lb, s) in chosen if lb != BASELINE})
    labels = [lb for lb in dict.fromkeys(r.label for r in results) if lb != BASELINE]
    seeds = sorted({r.seed for r in results})
    collisionless = split["collisionless_bytes"]

    def stats(runs: Sequence[RunResult], key: Callable[[RunResult], float]) -> tuple[float, float]:
        return _mean_std([key(r) for r in runs])

    lines = [
        f"# Quality at equal memory, tuned on validation: {split['name']}, {spec['epochs']} epoch(s)",
        "",
        f"Generated by `unirec bench quality --tune`. Time-ordered split: {split['n_train']:,} training events, "
        f"then {split['n_val']:,} validation events (the end of the training period, never trained on), then "
        f"{split['n_test']:,} test events; d={split['embedding_dim']}, {split['sparse_features']} sparse features, "
        f"DCN-v2, {spec['epochs']} pass(es) in time order, batch {spec['batch_size']}, Adagrad lr "
        f"{spec['sparse_lr']:g} / Adam lr {spec['dense_lr']:g}; seeds {seeds}. Budgets are shares of the "
        f"collisionless tables ({_fmt_bytes(collisionless)} for the {split['vocab_values']:,} values of the "
        "training events). Per method and budget the grid point (`bench.quality.grid_points`) with the best "
        "mean validation AUC over seeds is chosen; cells give its test AUC mean ± std over seeds, the chosen "
        "point, and the paired margin over unified at the same budget (mean ± std of the per-seed "
        "differences; `tie` when within one std). **bold** = best test AUC in the column. Grid points a "
        "budget cannot hold (`bench.quality.infeasible`: over it by more than 5%, or prod(moduli) over int64) "
        "are not trained (– below).",
        "",
    ]
    base = chosen.get((BASELINE, 1.0))
    if base is not None:
        m, sd = stats(base[1], lambda r: r.auc)
        lines += [f"Collisionless (full tables): test AUC {m:.4f} ± {sd:.4f}.", ""]
    means = {key: stats(runs, lambda r: r.auc)[0] for key, (_, runs) in chosen.items()}
    head = "| method | " + " | ".join(f"{s:.3g} ({_fmt_bytes(collisionless * s)})" for s in shares) + " |"
    lines += ["## Test AUC of the chosen configuration", "", head, "|---|" + "---:|" * len(shares)]
    for lb in labels:
        cells = []
        for s in shares:
            if (lb, s) not in chosen:
                cells.append("–")
                continue
            hp, runs = chosen[(lb, s)]
            m, sd = stats(runs, lambda r: r.auc)
            best = max(v for (label, ss), v in means.items() if ss == s and label != BASELINE)
            text = f"{m:.4f} ± {sd:.4f}"
            text = f"**{text}**" if m == best else text
            if hp != "-":
                text += f" ({hp})"
            ref = chosen.get(("unified", s))
            if ref is not None and lb != "unified":
                dm, dsd = paired(runs, ref[1])
                text += f"<br>{dm:+.4f} ± {dsd:.4f}" + (" tie" if abs(dm) <= dsd else "")
            cells.append(text)
        lines.append(f"| {lb} | " + " | ".join(cells) + " |")
    lines += ["", *render_winners(chosen, shares), "## Validation AUC of every grid point", "", head]
    lines += ["|---|" + "---:|" * len(shares)]
    points: dict[tuple[str, str, float], list[RunResult]] = {}
    for r in results:
        if r.label != BASELINE:
            points.setdefault((r.label, r.extra["hp"], r.budget_share), []).append(r)
    for lb in labels:
        for hp in dict.fromkeys(h for (label, h, _) in points if label == lb):
            cells = []
            for s in shares:
                runs = points.get((lb, hp, s))
                if runs is None:
                    cells.append("–")
                    continue
                m, sd = stats(runs, lambda r: r.extra["val_auc"])
                cells.append(f"{m:.4f} ± {sd:.4f}" + (" ✓" if chosen[(lb, s)][0] == hp else ""))
            lines.append(f"| {lb} {hp} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
