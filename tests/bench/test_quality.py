"""`unirec bench quality --fast` end to end on the MovieLens head, and the pieces it is built from."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bench import quality as q
from bench.cli import bench_app
from embedding.events import Event
from embedding.methods._ops import jagged


def test_budget_shares_are_log_spaced_between_the_ends() -> None:
    shares = q.budget_shares(4, 0.01, 0.5)
    assert shares[0] == pytest.approx(0.01) and shares[-1] == pytest.approx(0.5)
    ratios = [b / a for a, b in zip(shares, shares[1:], strict=False)]
    assert ratios == pytest.approx([ratios[0]] * 3)
    with pytest.raises(ValueError, match="0 < low"):
        q.budget_shares(3, 0.0, 0.5)


def _result(label: str, share: float, seed: int, auc: float) -> q.RunResult:
    return q.RunResult("ml", label, label, share, 100, 100, seed, auc, 0.6, 1.0)


def test_summary_is_mean_and_std_over_seeds() -> None:
    summary = q.summarise([_result("unified", 0.1, 0, 0.70), _result("unified", 0.1, 1, 0.72)])
    cell = summary[("unified", 0.1)]
    assert cell["auc"] == pytest.approx(0.71)
    assert cell["auc_std"] == pytest.approx(0.0141421, rel=1e-4)
    assert cell["n"] == 2


@pytest.mark.slow
def test_fast_mode_writes_the_table_and_plot_with_sane_aucs(movielens_dir: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    result = CliRunner().invoke(
        bench_app, ["quality", "--fast", "--data-dir", str(movielens_dir), "--out", str(tmp_path), "--threads", "2"]
    )
    assert result.exit_code == 0, result.output
    table = (tmp_path / "quality_fast_movielens.md").read_text()
    assert (tmp_path / "quality_fast_movielens.png").stat().st_size > 10_000
    runs = json.loads((tmp_path / "quality_fast_movielens.json").read_text())["runs"]
    assert {r["label"] for r in runs} == {"unified", "hashing_trick", "qr_mux"}
    for share in {r["budget_share"] for r in runs}:  # equal memory: every method within 1% of the budget
        sizes = [r["bytes"] for r in runs if r["budget_share"] == share]
        assert max(sizes) <= min(sizes) * 1.01
    unified = max((r for r in runs if r["label"] == "unified"), key=lambda r: r["budget_share"])
    assert unified["auc"] > 0.6, table
    assert "| unified |" in table and "**" in table


def test_compositional_methods_enumerate_the_training_vocabulary() -> None:
    """QR gets the split's vocabularies: with moduli covering them, every training value its own tuple."""
    from embedding.events import Featurizer
    from embedding.methods import CompositionalEmbedding
    from embedding.schema import load_schema

    schema = load_schema("movielens")
    rng = np.random.default_rng(0)
    events = [
        Event(event_id=f"e{i}", ts=i, label=int(rng.random() < 0.5),
              sparse={"user": int(u), "movie": int(rng.integers(0, 900)), "gender": "MF"[i % 2]})
        for i, u in enumerate(rng.integers(0, 500, 2000))
    ]  # fmt: skip
    batch = Featurizer(schema)(events)
    vocab = {n: np.unique(bag.values().numpy()) for n, bag in jagged(batch.sparse, schema).items()}
    split = q.Split("ml", schema, [batch], [batch], vocab, 2000, 2000, 0.5)
    config = q.configs_at(split, 1.0, ["qr"], seed=0)["qr"]
    model = q.build(split, config)
    sparse = model.sparse
    assert isinstance(sparse, CompositionalEmbedding)
    assert all(sparse.vocab_sizes[n] == len(v) for n, v in vocab.items() if len(v))
    users = torch.from_numpy(vocab["user"])
    moduli = config.method_args["moduli"]["user"]
    assert math.prod(moduli) >= len(users)
    categories = sparse.categories("user", 0, users)  # component rows are a bijection of the category
    assert categories.unique().numel() == len(users), "collision-free on the known vocabulary"


def _tuned(label: str, hp: str, seed: int, val_auc: float, auc: float) -> q.RunResult:
    return q.RunResult("ml", label, label, 0.1, 100, 100, seed, auc, 0.6, 1.0, {"hp": hp, "val_auc": val_auc})


def test_the_grid_point_is_chosen_on_validation_not_on_test() -> None:
    runs = [
        *(_tuned("qr", "k=2", s, val_auc=0.70, auc=0.60) for s in range(3)),
        *(_tuned("qr", "k=3", s, val_auc=0.65, auc=0.80) for s in range(3)),
    ]
    hp, chosen = q.select_best(runs)[("qr", 0.1)]
    assert hp == "k=2" and [r.auc for r in chosen] == [0.60] * 3


def test_tuned_table_gives_the_paired_margin_over_unified_and_calls_ties() -> None:
    runs = [
        *(_tuned("unified", "-", s, 0.6, 0.60 + 0.01 * s) for s in range(3)),
        *(_tuned("robe", "Z=8", s, 0.7, 0.65 + 0.01 * s) for s in range(3)),
        _tuned("qr", "k=2", 0, 0.7, 0.61), _tuned("qr", "k=2", 1, 0.7, 0.60), _tuned("qr", "k=2", 2, 0.7, 0.63),
    ]  # fmt: skip
    split = {"name": "ml", "n_train": 1, "n_val": 1, "n_test": 1, "embedding_dim": 16, "sparse_features": 2,
             "collisionless_bytes": 1000, "vocab_values": 10}  # fmt: skip
    table = q.render_tuned({"split": split, "spec": {"epochs": 1, "batch_size": 8, "sparse_lr": 0.1, "dense_lr": 0.1},
                            "runs": [dataclasses.asdict(r) for r in runs]})  # fmt: skip
    robe = next(line for line in table.splitlines() if line.startswith("| robe |"))
    assert "**0.6600 ± 0.0100** (Z=8)<br>+0.0500 ± 0.0000" in robe and "tie" not in robe
    qr = next(line for line in table.splitlines() if line.startswith("| qr |"))
    assert qr.endswith("+0.0033 ± 0.0115 tie |")


def test_grid_points_follow_the_papers_search() -> None:
    assert [h for h, _ in q.grid_points("robe", 16)] == ["Z=8", "Z=16", "Z=32"]
    assert [kw["parts"] for _, kw in q.grid_points("qr", 16)] == [2, 3, 4, 8]
    assert [kw["parts"] for _, kw in q.grid_points("pq", 4)] == [2, 3, 4]  # PQ splits d into k parts
    assert [kw["path_hidden"] for _, kw in q.grid_points("path_qr", 16)] == [0, 4, 16]
    assert [kw["row_dim"] for _, kw in q.grid_points("unified_multisize", 16)] == [8, 4]
    assert [kw["mlet_inner_dim"] for _, kw in q.grid_points("mlet_unified", 16)] == [32, 64]
    assert q.grid_points("unified", 16) == [("-", {})]


def test_winner_row_gives_the_margin_over_the_runner_up_ties_and_collisionless() -> None:
    runs = [
        *(_tuned("unified", "-", s, 0.6, 0.60 + 0.01 * s) for s in range(3)),
        *(_tuned("robe", "Z=8", s, 0.7, 0.70 + 0.01 * s) for s in range(3)),
        _tuned("qr", "k=2", 0, 0.7, 0.71), _tuned("qr", "k=2", 1, 0.7, 0.70), _tuned("qr", "k=2", 2, 0.7, 0.73),
    ]  # fmt: skip
    runs += [dataclasses.replace(r, label="collisionless", budget_share=1.0, auc=0.69) for r in runs[:3]]
    chosen = q.select_best(runs)
    best, rest = q.winners(chosen, 0.1)
    assert best == "qr" and [lb for lb, _, _ in rest] == ["robe", "unified"]
    row = next(line for line in q.render_winners(chosen, [0.1]) if line.startswith("| 0.1 |"))
    assert row.startswith("| 0.1 | qr | 0.7133 ± 0.0153 | robe +0.0033 ± 0.0115 tie | robe (+0.0033 ± 0.0115) |")
    assert row.endswith("| +0.0233 ± 0.0153 |")  # over collisionless, paired by seed: 0.02, 0.01, 0.04


def test_grid_points_a_budget_cannot_hold_are_skipped() -> None:
    from embedding.model import ModelConfig

    schema = _schema()
    vocab = {n: np.arange(900 if n == "movie" else 50) for n in schema.sparse_names}
    split = q.Split("ml", schema, [], [], vocab, 1, 1, 0.5)
    crt = q.configs_at(split, 0.05, ["crt"], seed=0, parts=8)["crt"]  # coprime moduli from 1: over budget
    assert "over the budget" in (q.infeasible(split, crt, int(split.collisionless_bytes * 0.05)) or "")
    big = ModelConfig(method="compositional", method_args={"moduli": [2**16] * 4, "operation": "concat"})
    assert q.infeasible(split, big, 10**9) == "prod(moduli) over int64"
    qr = q.configs_at(split, 1.0, ["qr"], seed=0, parts=2)["qr"]
    assert q.infeasible(split, qr, split.collisionless_bytes) is None


def _schema():  # noqa: ANN202 - a FeatureSchema
    from embedding.schema import load_schema

    return load_schema("movielens")


def test_merge_keeps_the_methods_not_rerun_and_refuses_another_split() -> None:
    doc = {"split": {"name": "ml"}, "spec": {"epochs": 1}}
    def runs(labels: tuple[str, ...], auc: float) -> list[dict]:
        return [dataclasses.asdict(_tuned(lb, "-", s, auc, auc)) for lb in labels for s in (0, 1)]

    old, new = {**doc, "runs": runs(("unified", "qr"), 0.6)}, {**doc, "runs": runs(("qr", "crt"), 0.7)}
    merged = q.merge_tuned(old, new)
    assert [(r["label"], r["auc"]) for r in merged["runs"]] == [("unified", 0.6)] * 2 + [("qr", 0.7)] * 2 + [
        ("crt", 0.7)
    ] * 2
    with pytest.raises(ValueError, match="another split"):
        q.merge_tuned({**old, "split": {"name": "other"}}, new)
    with pytest.raises(ValueError, match="seeds"):
        q.merge_tuned(old, {**new, "runs": new["runs"][:1]})


def test_all_methods_with_tune_include_the_tuned_only_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from bench import cli

    assert cli.method_set("all", tune=True) == (*cli.FULL_METHODS, "unified_multisize")
    assert "unified_multisize" not in cli.method_set("all", tune=False)  # run_grid has no multi-size config
    assert cli.method_set("core", tune=True) == cli.CORE_METHODS

    class Stop(Exception):
        pass

    seen: list[str] = []

    def run_tuned(split: object, labels: list[str], *args: object, **kwargs: object) -> None:
        seen.extend(labels)
        raise Stop

    split = types.SimpleNamespace(schema=types.SimpleNamespace(embedding_dim=16))
    monkeypatch.setattr(q, "load_split", lambda *a, **k: split)
    monkeypatch.setattr(q, "run_tuned", run_tuned)
    result = CliRunner().invoke(bench_app, ["quality", "--tune", "-d", "criteo", "--share", "0.05"])
    assert isinstance(result.exception, Stop), result.output
    assert seen == [*cli.FULL_METHODS, "unified_multisize"]


def test_any_dataset_described_by_a_feature_yaml_runs(tmp_path: Path) -> None:
    """`-d PATH.yaml`: the YAML's `source:` names the file (here libFM next to it); results are filed
    under the schema's name. A path that is not such a YAML is refused with what is expected."""
    rng = np.random.default_rng(0)
    users, apps = rng.integers(0, 40, 4000), rng.integers(0, 25, 4000)
    clicks = rng.random(4000) < np.where(apps % 2 == 0, 0.9, 0.1)
    (tmp_path / "d.libfm").write_text(
        "".join(f"{1 if c else -1} {u}:1 {100 + a}:1\n" for u, a, c in zip(users, apps, clicks, strict=True))
    )
    schema = {
        "name": "toyfm",
        "sparse": [{"name": "user", "dtype": "int"}, {"name": "app", "dtype": "int"}],
        "source": {"path": "d.libfm", "format": "libfm", "columns": ["y", "user", "app"],
                   "label": {"column": "y", "rule": "> 0"}, "event_id": "toy-{row}"},
    }  # fmt: skip
    (tmp_path / "toy.yaml").write_text(json.dumps(schema))  # JSON is YAML
    out = tmp_path / "out"
    args = ["quality", "--fast", "-m", "unified", "-m", "hashing_trick", "--out", str(out), "--threads", "1"]
    result = CliRunner().invoke(bench_app, [*args, "-d", str(tmp_path / "toy.yaml")])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "quality_fast_toyfm.json").read_text())
    assert doc["split"]["name"] == "toyfm" and doc["split"]["n_train"] == 3200
    assert {r["label"] for r in doc["runs"]} == {"unified", "hashing_trick"}
    assert max(r["auc"] for r in doc["runs"] if r["label"] == "unified") > 0.65  # the app effect is learned
    (tmp_path / "plain.yaml").write_text(json.dumps({k: v for k, v in schema.items() if k != "source"}))
    refused = CliRunner().invoke(bench_app, [*args, "-d", str(tmp_path / "plain.yaml")], env={"COLUMNS": "300"})
    assert refused.exit_code == 2 and "plain.yaml" in refused.output and "source: section" in refused.output
