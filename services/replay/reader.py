"""Dataset rows -> events, driven by a feature schema's `source:` section.

    events = iter_events("movielens", limit=5000)          # shipped schema; fetches ML-100k if needed
    events = iter_events("my.yaml", path=["data.tsv"])      # any CSV/TSV/libFM described by a YAML

Bad rows (an empty line, a wrong number of columns, a value that does not parse, a line that is not
valid in the file's encoding, an inner join without a match) are reported with file and line,
counted in a `BadRowReport`, and skipped. Each line is one row (CSV quoting works within a line).
"""

from __future__ import annotations

import csv
import math
import string
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

from core.logs import get_logger, log_event
from embedding.events import Event
from embedding.schema import SCHEMA_DIR, FeatureSchema, load_schema
from services.replay.errors import BadRowError, SourceError
from services.replay.source import EventIdColumn, JoinSpec, SourceSpec, TableSpec, parse_source

log = get_logger("replay")
_VALUE_SUFFIX = "#value"
"""libFM: a field named f has its index in column f and its value in column f#value (for dense features)."""


@dataclass(frozen=True)
class BadRow:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class BadRowReport:
    """Counts bad rows and keeps the first `max_samples` of them; logs each sample as a warning."""

    max_samples: int = 20
    count: int = 0
    samples: list[BadRow] = field(default_factory=list)
    strict: bool = False
    """Raise BadRowError at the first bad row instead of skipping it."""

    def add(self, file: str | Path, line: int, reason: str) -> None:
        self.count += 1
        bad = BadRow(str(file), line, reason)
        if self.strict:
            raise BadRowError(str(bad))
        if len(self.samples) < self.max_samples:
            self.samples.append(bad)
            log_event(log, "bad_row", level=30, file=bad.file, line=line, reason=reason)
            if len(self.samples) == self.max_samples:
                log_event(log, "bad_rows_truncated", level=30, note=f"only the first {self.max_samples} are logged")


# ---------------------------------------------------------------------------------------------- files


def _lines(path: Path, encoding: str, report: BadRowReport) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without the line break); lines that do not decode are bad rows."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as exc:
                report.add(path, number, f"not valid {encoding}: {exc.reason} at byte {exc.start}")
                continue
            yield number, text.rstrip("\r\n")


def _splitter(table: TableSpec) -> Callable[[str], list[str]]:
    sep = table.sep
    if table.format == "libfm":
        return _split_libfm
    if table.format == "tsv":
        return lambda text: text.split(sep)
    return lambda text: next(csv.reader((text,), delimiter=sep or ","))


def _split_libfm(text: str) -> list[str]:
    """`<label> <index>:<value> ...` -> [label, index_1..index_n, value_1..value_n]."""
    tokens = text.split()
    indexes, values = [], []
    for token in tokens[1:]:
        index, colon, value = token.partition(":")
        if not colon or not index:
            raise ValueError(f"libfm token {token!r} is not <index>:<value>")
        indexes.append(index)
        values.append(value)
    return tokens[:1] + indexes + values


def _column_names(table: TableSpec, files: list[Path]) -> list[str]:
    """The table's column names: `columns`, else the header line of its first file."""
    if table.format == "libfm":
        assert table.columns is not None
        return list(table.columns) + [c + _VALUE_SUFFIX for c in table.columns[1:]]
    if table.columns is not None:
        return list(table.columns)
    with files[0].open("rb") as fh:
        header = fh.readline().decode(table.encoding, errors="replace").rstrip("\r\n")
    names = _splitter(table)(header)
    if not header or len(set(names)) != len(names):
        raise SourceError(f"{files[0]}:1: header {header!r} does not give unique column names; set `columns`")
    return names


def _rows(
    table: TableSpec, files: list[Path], width: int, report: BadRowReport
) -> Iterator[tuple[Path, int, list[str]]]:
    """(file, line, cells) for every well-formed row; rows with a wrong column count are bad rows."""
    split = _splitter(table)
    libfm = table.format == "libfm"
    for path in files:
        for number, text in _lines(path, table.encoding, report):
            if number == 1 and table.header:
                continue
            if not text.strip():
                report.add(path, number, "empty line")
                continue
            try:
                cells = split(text)
            except (ValueError, csv.Error) as exc:
                report.add(path, number, str(exc))
                continue
            if len(cells) != width:
                got = (len(cells) + 1) // 2 if libfm else len(cells)
                want = (width + 1) // 2 if libfm else width
                report.add(path, number, f"{got} columns, expected {want}")
                continue
            yield path, number, cells


# ---------------------------------------------------------------------------------------------- compile


@dataclass(frozen=True)
class _Join:
    spec: JoinSpec
    left: int
    """Index of the key in the main row."""
    table: dict[str, list[str]]
    """key -> the side row's cells, key column removed."""
    width: int
    file: str


@dataclass
class CompiledSource:
    """A `source:` section bound to a schema and files: turns rows into events."""

    schema: FeatureSchema
    spec: SourceSpec
    files: list[Path]
    columns: list[str]
    joins: list[_Join]
    report: BadRowReport

    def __post_init__(self) -> None:
        index = {name: i for i, name in enumerate(self.columns)}
        spec, schema = self.spec, self.schema

        def col(name: str, what: str) -> int:
            if name not in index:
                visible = [c for c in self.columns if not c.endswith(_VALUE_SUFFIX)]
                raise SourceError(f"source: {what} reads column {name!r}, which is not among {visible}")
            return index[name]

        # split by kind, so the per-row work is a few dict comprehensions (bad cells: see _bad_cell)
        self._str: list[tuple[str, int]] = []
        self._int: list[tuple[str, int]] = []
        self._multi: list[tuple[str, int, Callable[[str], int | str], str]] = []
        for feat in schema.sparse:
            ref = spec.feature_column(feat.name)
            i = col(ref.column, f"feature {feat.name!r}")
            if ref.split is not None:
                self._multi.append((feat.name, i, int if feat.dtype == "int" else str, ref.split))
            else:
                (self._int if feat.dtype == "int" else self._str).append((feat.name, i))
        self._dense: list[tuple[str, int]] = []
        for dense in schema.dense:
            name = spec.feature_column(dense.name).column
            if spec.format == "libfm":
                name += _VALUE_SUFFIX
            self._dense.append((dense.name, col(name, f"dense feature {dense.name!r}")))
        self._label = spec.label.compile() if spec.label else None
        self._label_col = col(spec.label.column, "label") if spec.label else -1
        ts = spec.timestamp
        self._ts_col = col(ts.column, "timestamp") if ts.column else -1
        if isinstance(spec.event_id, EventIdColumn):
            self._id_col = col(spec.event_id.column, "event_id")
            self._id_template = ""
            self._id_cols: list[int] = []
        else:
            self._id_col = -1
            # "{user_id}-{ts}" -> "{0}-{1}" over [cells[i] ...] + [row, file, line]
            parts, self._id_cols = [], []
            extra = {name: len(self.columns) + k for k, name in enumerate(("row", "file", "line"))}
            for literal, name, fmt, conversion in string.Formatter().parse(spec.event_id):
                parts.append(literal.replace("{", "{{").replace("}", "}}"))
                if name is None:
                    continue
                position = extra[name] if name in extra and name not in index else col(name, "event_id template")
                parts.append("{" + str(len(self._id_cols)) + ("!" + conversion if conversion else "")
                             + (":" + fmt if fmt else "") + "}")
                self._id_cols.append(position)
            self._id_template = "".join(parts)

    def _event(self, cells: list[str], row: int, stem: str, line: int) -> Event:
        """One event from one (joined) row; raises ValueError naming the bad cell."""
        sparse: dict[str, object] = {name: cells[i] for name, i in self._str if cells[i]}
        dense: dict[str, float] = {}
        try:
            if self._int:
                sparse.update({name: int(cells[i]) for name, i in self._int if cells[i]})
            for name, i, conv, split in self._multi:
                if cells[i]:
                    sparse[name] = [conv(v) for v in cells[i].split(split) if v]
            if self._dense:
                dense = {name: float(cells[i]) for name, i in self._dense if cells[i]}
        except ValueError:
            raise ValueError(self._bad_cell(cells)) from None
        if dense and not all(map(math.isfinite, dense.values())):
            raise ValueError(self._bad_cell(cells))
        label = None
        if self._label is not None:
            cell = cells[self._label_col]
            label = self._label(cell)  # raises ValueError("label '...' is not ...")
        ts_spec = self.spec.timestamp
        if self._ts_col >= 0:
            cell = cells[self._ts_col]
            try:
                ts = round(float(cell) * ts_spec.multiplier)
            except ValueError:
                raise ValueError(f"timestamp {cell!r} is not a number") from None
            if ts < 0:
                raise ValueError(f"timestamp {cell!r} is before 1970")
        else:
            ts = ts_spec.start_ms + (row - 1) * ts_spec.step_ms
        if self._id_col >= 0:
            event_id = cells[self._id_col]
        else:
            extra = (row, stem, line)
            width = len(cells)
            event_id = self._id_template.format(*[cells[i] if i < width else extra[i - width] for i in self._id_cols])
        if not 0 < len(event_id) <= 256:
            raise ValueError(f"event_id {event_id[:40]!r} must have 1 to 256 characters")
        return Event(event_id=event_id, ts=ts, label=label, dense=dense, sparse=sparse)  # type: ignore[arg-type]

    def _bad_cell(self, cells: list[str]) -> str:
        """The message for the first cell that does not convert (the slow path of `_event`)."""
        for name, i in self._int:
            try:
                int(cells[i] or 0)
            except ValueError:
                return f"feature {name!r}: {cells[i]!r} is not an integer"
        for name, i, conv, split in self._multi:
            for value in cells[i].split(split):
                try:
                    conv(value or 0)
                except ValueError:
                    return f"feature {name!r}: {value!r} in {cells[i]!r} is not an integer"
        for name, i in self._dense:
            try:
                if not math.isfinite(float(cells[i] or 0)):
                    return f"dense feature {name!r}: {cells[i]!r} is not finite"
            except ValueError:
                return f"dense feature {name!r}: {cells[i]!r} is not a number"
        return "a value does not convert"

    def events(self) -> Iterator[Event]:
        """Events in file order (bad rows skipped and reported); see `iter_events` for time order."""
        width = len(self.columns) - sum(j.width for j in self.joins)
        row = 0
        stems = {path: path.stem for path in self.files}
        for path, line, cells in _rows(self.spec, self.files, width, self.report):
            joined = True
            for join in self.joins:
                side = join.table.get(cells[join.left])
                if side is None:
                    if join.spec.how == "inner":
                        self.report.add(path, line, f"no row of {join.file} has {join.spec.key}={cells[join.left]!r}")
                        joined = False
                        break
                    side = [""] * join.width
                cells.extend(side)
            if not joined:
                continue
            row += 1
            try:
                yield self._event(cells, row, stems[path], line)
            except ValueError as exc:
                row -= 1
                self.report.add(path, line, str(exc))


def _load_join(join: JoinSpec, files: list[Path], report: BadRowReport) -> tuple[list[str], dict[str, list[str]]]:
    names = _column_names(join, files)
    if join.key not in names:
        raise SourceError(f"join with {files[0].name}: key column {join.key!r} is not among {names}")
    k = names.index(join.key)
    table: dict[str, list[str]] = {}
    for path, line, cells in _rows(join, files, len(names), report):
        key = cells.pop(k)
        if key in table:
            report.add(path, line, f"repeated join key {join.key}={key!r} (the first row wins)")
            continue
        table[key] = cells
    return names[:k] + names[k + 1 :], table


def _resolve(paths: Iterable[str], base: Path) -> list[Path]:
    out = []
    for name in paths:
        path = Path(name).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise SourceError(f"source file {path} not found")
        out.append(path)
    return out


def compile_source(
    schema: FeatureSchema,
    spec: SourceSpec,
    base_dir: Path,
    paths: list[Path] | None = None,
    report: BadRowReport | None = None,
) -> CompiledSource:
    """Bind a source spec to files. `paths` replaces the spec's main file(s); then side tables resolve
    next to the first of them. Otherwise relative names resolve against `base_dir`."""
    report = report or BadRowReport()
    files = _resolve([str(p) for p in paths], Path.cwd()) if paths else _resolve(spec.paths, base_dir)
    side_dir = files[0].parent if paths else base_dir
    columns = _column_names(spec, files)
    joins: list[_Join] = []
    for join in spec.joins:
        join_files = _resolve(join.paths, side_dir)
        if join.left_on not in columns:
            raise SourceError(f"join with {join_files[0].name}: left_on column {join.left_on!r} is not among {columns}")
        names, table = _load_join(join, join_files, report)
        clash = sorted(set(names) & set(columns))
        if clash:
            raise SourceError(f"join with {join_files[0].name} brings columns {clash} the row already has")
        joins.append(_Join(join, columns.index(join.left_on), table, len(names), join_files[0].name))
        columns = columns + names
    return CompiledSource(schema, spec, files, columns, joins, report)


def resolve_schema(schema_or_yaml: str | Path | FeatureSchema) -> tuple[FeatureSchema, Path]:
    """A schema and the folder its relative paths resolve against (the YAML's folder)."""
    if isinstance(schema_or_yaml, FeatureSchema):
        return schema_or_yaml, Path.cwd()
    path = Path(schema_or_yaml)
    schema = load_schema(schema_or_yaml)
    return schema, (path.parent if path.exists() else SCHEMA_DIR)


def open_source(
    schema_or_yaml: str | Path | FeatureSchema,
    path: str | Path | list[str | Path] | None = None,
    report: BadRowReport | None = None,
    data_dir: str | Path | None = None,
) -> CompiledSource:
    """Load a schema (shipped name, YAML path, or object) and bind its source to files.

    Relative file names resolve in `data_dir`, else the dataset's folder (`source.dataset`, fetched
    or located by `services.datasets`), else the YAML's folder."""
    schema, yaml_dir = resolve_schema(schema_or_yaml)
    spec = parse_source(schema, origin=str(schema_or_yaml) if not isinstance(schema_or_yaml, FeatureSchema) else "")
    paths = None if path is None else [Path(p) for p in (path if isinstance(path, list) else [path])]
    if data_dir is not None:
        base = Path(data_dir)
    elif spec.dataset and not paths:
        from services.datasets import dataset_dir

        base = dataset_dir(spec.dataset)
    else:
        base = yaml_dir
    return compile_source(schema, spec, base, paths, report)


def iter_events(
    schema_or_yaml: str | Path | FeatureSchema,
    path: str | Path | list[str | Path] | None = None,
    limit: int | None = None,
    report: BadRowReport | None = None,
    data_dir: str | Path | None = None,
) -> Iterator[Event]:
    """Events of a dataset in time order (stable sort by timestamp when the source has one), at most `limit`.

    Files are opened (and side tables loaded) before this returns, so a missing file or a bad `source:`
    raises here, not at the first `next()`."""
    return source_events(open_source(schema_or_yaml, path, report, data_dir), limit)


def source_events(source: CompiledSource, limit: int | None = None) -> Iterator[Event]:
    events: Iterable[Event] = source.events()
    if source.spec.sorted_by_time:
        events = sorted(events, key=attrgetter("ts"))
    for n, event in enumerate(events):
        if limit is not None and n >= limit:
            return
        yield event
