"""The `source:` section: every shipped YAML validates, and mistakes are errors that name the bad value."""

from __future__ import annotations

from typing import Any

import pytest

from embedding.schema import SCHEMA_DIR, load_schema, parse_schema
from services.replay.errors import SourceError
from services.replay.source import LabelSpec, SourceSpec, parse_source
from services.simulate import SimulatorConfig


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_schema_has_a_valid_source(path) -> None:  # noqa: ANN001
    schema = load_schema(path)
    assert schema.source is not None, f"{path.name} has no source section"
    if "simulator" in schema.source:
        config = SimulatorConfig.from_schema(schema)
        assert sorted(f.name for f in config.features) == sorted(schema.sparse_names)
    else:
        spec = parse_source(schema, origin=path.name)
        assert spec.key is None or spec.key in schema.sparse_names


def test_movielens_model_part_is_unchanged() -> None:
    schema = load_schema("movielens")
    assert schema.sparse_names == ["user", "movie", "age", "gender", "occupation", "zip"]
    spec = parse_source(schema)
    assert spec.timestamp.column == "timestamp" and spec.timestamp.unit == "s" and spec.sorted_by_time
    assert spec.joins[0].key == "user_id" and spec.joins[0].how == "inner"


def test_criteo_has_13_log1p_dense_and_26_string_sparse() -> None:
    schema = load_schema("criteo")
    assert [d.name for d in schema.dense] == [f"I{i}" for i in range(1, 14)]
    assert all(d.transform == "log1p" for d in schema.dense)
    assert schema.sparse_names == [f"C{i}" for i in range(1, 27)]
    assert all(s.dtype == "str" for s in schema.sparse)
    spec = parse_source(schema)
    assert spec.timestamp.column is None and not spec.sorted_by_time


def _schema(source: dict[str, Any]) -> Any:
    return parse_schema(
        {
            "name": "t",
            "sparse": [{"name": "user", "dtype": "int"}, {"name": "tags", "multivalent": True}],
            "dense": [{"name": "price"}],
            "source": source,
        }
    )


BASE = {"path": "x.csv", "columns": ["user", "tags", "price", "y"], "label": {"column": "y", "rule": "value"}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "colour"),
        ({"format": "parquet"}, "format"),
        ({"label": {"column": "y", "rule": "at least 4"}}, "at least 4"),
        ({"delimiter": ";;"}, "one character"),
        ({"encoding": "klingon-8"}, "klingon-8"),
        ({"columns": ["user", "user"]}, "repeated"),
        ({"columns": None}, "columns"),
        ({"event_id": "constant"}, "no placeholder"),
        ({"features": {"price_usd": "price"}}, "price_usd"),
        ({"key": "price"}, "price"),
        ({"features": {"user": {"column": "user", "split": "|"}}}, "multivalent"),
        ({"timestamp": {"column": "ts", "unit": "days"}}, "unit"),
        ({"joins": [{"path": "u.tsv", "format": "tsv", "header": True, "on": "user"}]}, "left_on"),
        ({"format": "libfm", "header": True}, "header"),
    ],
)
def test_bad_source_is_rejected_naming_the_value(change: dict[str, Any], message: str) -> None:
    with pytest.raises(SourceError, match=message):
        parse_source(_schema(BASE | change))


def test_schema_without_source_says_so() -> None:
    schema = parse_schema({"name": "bare", "sparse": [{"name": "a"}]})
    with pytest.raises(SourceError, match="no `source:` section"):
        parse_source(schema)


@pytest.mark.parametrize(
    ("rule", "cells", "labels"),
    [
        (">= 4", ["1", "3", "4", "5", "4.0"], [0, 0, 1, 1, 1]),
        ("> 0", ["1", "-1", "+1"], [1, 0, 1]),
        ("== 1", ["1", "0", "2"], [1, 0, 0]),
        ("value", ["0", "1", "1.0"], [0, 1, 1]),
    ],
)
def test_label_rules(rule: str, cells: list[str], labels: list[int]) -> None:
    fn = LabelSpec(column="y", rule=rule).compile()
    assert [fn(c) for c in cells] == labels


@pytest.mark.parametrize(("rule", "cell"), [("value", "2"), ("value", "yes"), (">= 4", "four"), ("> 0", "nan")])
def test_label_rules_reject_bad_cells(rule: str, cell: str) -> None:
    with pytest.raises(ValueError, match="label"):
        LabelSpec(column="y", rule=rule).compile()(cell)


def test_unmapped_features_read_the_column_of_their_name() -> None:
    spec = SourceSpec.model_validate(BASE | {"features": {"tags": {"column": "t", "split": ","}}})
    assert spec.feature_column("user").column == "user"
    assert spec.feature_column("tags").split == ","
