"""Rows -> events: conversions, joins, encodings, time order, and bad rows reported with file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from services.replay.errors import BadRowError, SourceError
from services.replay.reader import BadRowReport, iter_events

SCHEMA = {
    "name": "shop",
    "sparse": [
        {"name": "user", "dtype": "int"},
        {"name": "item"},
        {"name": "tags", "multivalent": True},
        {"name": "city"},
    ],
    "dense": [{"name": "price", "transform": "log1p"}],
    "source": {
        "path": "clicks.csv",
        "format": "csv",
        "header": True,
        "label": {"column": "clicked", "rule": "value"},
        "timestamp": {"column": "when", "unit": "ms"},
        "event_id": "c-{user}-{line}",
        "key": "user",
        "features": {"item": "item_id", "tags": {"column": "tags", "split": "|"}},
        "joins": [
            {"path": "users.tsv", "format": "tsv", "columns": ["uid", "city"], "left_on": "user", "right_on": "uid",
             "encoding": "latin-1"}
        ],
    },
}


def _write(tmp_path: Path, clicks: bytes, users: bytes = b"1\tK\xf6ln\n2\tParis\n", schema: dict = SCHEMA) -> Path:
    (tmp_path / "clicks.csv").write_bytes(clicks)
    (tmp_path / "users.tsv").write_bytes(users)
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump(schema))
    return path


def test_rows_become_events_in_time_order(tmp_path: Path) -> None:
    yaml_path = _write(
        tmp_path,
        b"user,item_id,tags,price,clicked,when\n"
        b"1,a,x|y,9.5,1,2000\n"
        b'2,"b,c",,,0,1000\n'
        b"3,d,z,1e3,1,1000\n",  # no users.tsv row for 3: a left join leaves city absent
    )
    events = list(iter_events(yaml_path))
    assert [e.event_id for e in events] == ["c-2-3", "c-3-4", "c-1-2"]  # stable sort by ts: 1000, 1000, 2000
    first, second, last = events
    assert first.ts == 1000 and first.label == 0 and first.dense == {}
    assert first.sparse == {"user": 2, "item": "b,c", "city": "Paris"}
    assert second.sparse == {"user": 3, "item": "d", "tags": ["z"]} and second.dense == {"price": 1000.0}
    assert last.sparse == {"user": 1, "item": "a", "tags": ["x", "y"], "city": "Köln"}  # latin-1 side table
    assert last.dense == {"price": 9.5} and last.label == 1 and last.ts == 2000
    assert len(list(iter_events(yaml_path, limit=2))) == 2


def test_bad_rows_are_reported_with_file_and_line_counted_and_skipped(tmp_path: Path) -> None:
    yaml_path = _write(
        tmp_path,
        b"user,item_id,tags,price,clicked,when\n"
        b"1,a,x,1.0,1,1000\n"
        b"1,a,x,1.0,1\n"  # line 3: wrong column count
        b"1,a,x,cheap,1,1000\n"  # line 4: dense value is not a number
        b"\n"  # line 5: empty
        b"1,\xff\xfe,x,1.0,1,1000\n"  # line 6: not UTF-8
        b"one,a,x,1.0,1,1000\n"  # line 7: int feature is not an int
        b"1,a,x,1.0,maybe,1000\n"  # line 8: label
        b"1,a,x,1.0,1,yesterday\n"  # line 9: timestamp
        b"2,b,y,2.0,0,1001\n",
    )
    report = BadRowReport()
    events = list(iter_events(yaml_path, report=report))
    assert [e.sparse["user"] for e in events] == [1, 2]
    assert report.count == 7
    where = {(Path(b.file).name, b.line) for b in report.samples}
    assert where == {("clicks.csv", n) for n in (3, 4, 5, 6, 7, 8, 9)}
    reasons = {b.line: b.reason for b in report.samples}
    assert "5 columns, expected 6" in reasons[3]
    assert "'cheap' is not a number" in reasons[4]
    assert reasons[5] == "empty line"
    assert "not valid utf-8" in reasons[6]
    assert "'one' is not an integer" in reasons[7]
    assert "'maybe'" in reasons[8] and "yesterday" in reasons[9]
    assert str(report.samples[0]).startswith(str(tmp_path / "clicks.csv") + ":3: ")


def test_strict_report_raises_at_the_first_bad_row(tmp_path: Path) -> None:
    yaml_path = _write(tmp_path, b"user,item_id,tags,price,clicked,when\n1,a,x,1.0,1\n")
    with pytest.raises(BadRowError, match=r"clicks.csv:2: 5 columns"):
        list(iter_events(yaml_path, report=BadRowReport(strict=True)))


def test_inner_join_without_match_is_a_bad_row(tmp_path: Path) -> None:
    schema = yaml.safe_load(yaml.safe_dump(SCHEMA))
    schema["source"]["joins"][0]["how"] = "inner"
    yaml_path = _write(tmp_path, b"user,item_id,tags,price,clicked,when\n1,a,,,1,5\n7,b,,,0,6\n", schema=schema)
    report = BadRowReport()
    assert [e.sparse["user"] for e in iter_events(yaml_path, report=report)] == [1]
    assert report.count == 1 and "uid='7'" in report.samples[0].reason and report.samples[0].line == 3


def test_unknown_column_and_missing_file_fail_before_reading(tmp_path: Path) -> None:
    schema = yaml.safe_load(yaml.safe_dump(SCHEMA))
    schema["source"]["features"]["item"] = "sku"
    yaml_path = _write(tmp_path, b"user,item_id,tags,price,clicked,when\n", schema=schema)
    with pytest.raises(SourceError, match="'sku'"):
        iter_events(yaml_path)
    with pytest.raises(SourceError, match="not found"):
        iter_events(yaml_path, path=tmp_path / "nope.csv")


def test_libfm_rows(tmp_path: Path) -> None:
    schema = {
        "name": "fm",
        "sparse": [{"name": "user", "dtype": "int"}, {"name": "app", "dtype": "int"}],
        "dense": [{"name": "score"}],
        "source": {"path": "d.libfm", "format": "libfm", "columns": ["y", "user", "app", "score"],
                   "label": {"column": "y", "rule": "> 0"}, "event_id": "fm-{row}"},
    }
    (tmp_path / "d.libfm").write_text("1 3:1 17:1 40:0.25\n-1 4:1 18:1 40:2\n1 3:1 17:1\n-1 5 18:1 40:1\n")
    (tmp_path / "fm.yaml").write_text(yaml.safe_dump(schema))
    report = BadRowReport()
    events = list(iter_events(tmp_path / "fm.yaml", report=report))
    assert [(e.event_id, e.label, e.ts, e.sparse, e.dense) for e in events] == [
        ("fm-1", 1, 0, {"user": 3, "app": 17}, {"score": 0.25}),
        ("fm-2", 0, 1, {"user": 4, "app": 18}, {"score": 2.0}),
    ]
    assert [(b.line, b.reason) for b in report.samples] == [
        (3, "3 columns, expected 4"),
        (4, "libfm token '5' is not <index>:<value>"),
    ]


_alphabet = st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters=",\"|\r\n\x85\u2028\u2029")
cells = st.text(alphabet=_alphabet, min_size=1, max_size=8).filter(lambda s: s.strip() == s)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 10**12), cells, st.floats(-1e6, 1e6, allow_nan=False),
                               st.integers(0, 1), st.integers(0, 2**40)), min_size=1, max_size=20))
def test_property_every_row_round_trips(tmp_path_factory: pytest.TempPathFactory, rows: list[tuple]) -> None:
    tmp_path = tmp_path_factory.mktemp("prop")
    schema = yaml.safe_load(yaml.safe_dump(SCHEMA))
    schema["source"]["joins"] = []
    schema["sparse"] = [f for f in schema["sparse"] if f["name"] != "city"]
    schema["source"]["event_id"] = "r{row}"
    body = "user,item_id,tags,price,clicked,when\n" + "".join(
        f"{u},{i},,{p!r},{c},{t}\n" for u, i, p, c, t in rows
    )
    yaml_path = _write(tmp_path, body.encode(), schema=schema)
    got = {e.event_id: e for e in iter_events(yaml_path)}
    assert len(got) == len(rows)
    for n, (u, i, p, c, t) in enumerate(rows, 1):
        e = got[f"r{n}"]
        assert (e.sparse, e.dense, e.label, e.ts) == ({"user": u, "item": i}, {"price": p}, c, t)


def test_non_finite_dense_and_bad_multivalent_ints_are_bad_rows(tmp_path: Path) -> None:
    schema = yaml.safe_load(yaml.safe_dump(SCHEMA))
    schema["sparse"] = [{"name": "user", "dtype": "int"}, {"name": "tags", "dtype": "int", "multivalent": True},
                        {"name": "item"}]
    schema["source"]["joins"] = []
    body = b"user,item_id,tags,price,clicked,when\n1,a,1|2,inf,1,5\n2,b,3|x,1,0,6\n3,c,4|5,nan,0,7\n4,d,6,,1,8\n"
    yaml_path = _write(tmp_path, body, schema=schema)
    report = BadRowReport()
    events = list(iter_events(yaml_path, report=report))
    assert [e.sparse for e in events] == [{"user": 4, "item": "d", "tags": [6]}]
    assert [(b.line, b.reason) for b in report.samples] == [
        (2, "dense feature 'price': 'inf' is not finite"),
        (3, "feature 'tags': 'x' in '3|x' is not an integer"),
        (4, "dense feature 'price': 'nan' is not finite"),
    ]


def test_column_names_from_the_header_line(tmp_path: Path) -> None:
    schema = {
        "name": "hdr",
        "sparse": [{"name": "user", "dtype": "int"}],
        "source": {"path": ["a.tsv", "b.tsv"], "format": "tsv", "header": True,
                   "label": {"column": "y", "rule": "== 1"}, "event_id": {"column": "id"},
                   "timestamp": {"start_ms": 100, "step_ms": 10}},
    }
    (tmp_path / "a.tsv").write_text("id\tuser\ty\nx1\t5\t1\n")
    (tmp_path / "b.tsv").write_text("id\tuser\ty\nx2\t6\t0\n")
    (tmp_path / "h.yaml").write_text(yaml.safe_dump(schema))
    events = list(iter_events(tmp_path / "h.yaml"))
    assert [(e.event_id, e.ts, e.label, e.sparse) for e in events] == [
        ("x1", 100, 1, {"user": 5}),
        ("x2", 110, 0, {"user": 6}),
    ]
