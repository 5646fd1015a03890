"""The `source:` section of a feature-schema YAML: how a dataset's rows become events.

A new CSV/TSV/libFM dataset needs a YAML file, not code. Example (MovieLens-100k):

    source:
      dataset: movielens                 # where relative paths resolve (services.datasets); optional
      path: ml-100k.inter                # or a list of files, read in order
      format: tsv                        # csv | tsv | libfm
      header: true                       # skip the first line of each file
      columns: [user_id, item_id, rating, timestamp]
      label: {column: rating, rule: ">= 4"}
      timestamp: {column: timestamp, unit: s}
      event_id: "u{user_id}-m{item_id}-{timestamp}"
      key: user                          # message key: a sparse feature (or event_id)
      features: {user: user_id, movie: item_id, zip: zip_code}
      joins:
        - {path: ml-100k.user, format: tsv, header: true, left_on: user_id,
           columns: [user_id, age, gender, occupation, zip_code]}

Schema features that `features` does not name read the column of the same name. Validation is
strict (unknown keys, unknown columns, bad rules are errors naming the value); column names are
checked against the schema by `compile_source` in `services.replay.reader`.
"""

from __future__ import annotations

import codecs
import operator
import re
import string
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from embedding.schema import FeatureSchema
from services.replay.errors import SourceError

_STRICT = ConfigDict(extra="forbid", frozen=True)

Format = Literal["csv", "tsv", "libfm"]
TimeUnit = Literal["s", "ms", "us", "ns"]
UNIT_TO_MS: dict[str, float] = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
_RULE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
EVENT_ID_FIELDS = ("row", "file", "line")
"""Placeholders an event-id template may use besides column names: 1-based row number over all
files, the file's stem, and the 1-based line number within the file."""


class TableSpec(BaseModel):
    """How to read one delimited file (the main table or a side table)."""

    model_config = _STRICT

    path: str | list[str]
    """File name(s); relative names resolve against the dataset's folder, else the YAML's folder."""
    format: Format = "csv"
    delimiter: str | None = None
    """Default: "," for csv, a tab for tsv; libfm splits on whitespace."""
    header: bool = False
    """The first line of each file is a header: skipped. Column names come from it unless `columns` is set."""
    columns: list[str] | None = None
    encoding: str = "utf-8"
    """Text encoding of the file (ML-100k's u.item is latin-1). A line that does not decode is a bad row."""

    @field_validator("path")
    @classmethod
    def _paths(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("path: give a file name or a non-empty list of them")
        return value

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        try:
            return codecs.lookup(value).name
        except LookupError:
            raise ValueError(f"encoding {value!r} is not a text encoding Python knows") from None

    @field_validator("columns")
    @classmethod
    def _columns(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            dupes = sorted({c for c in value if value.count(c) > 1})
            if dupes:
                raise ValueError(f"columns must be unique; repeated: {dupes}")
            if not value:
                raise ValueError("columns: an empty list names no column")
        return value

    @model_validator(mode="after")
    def _format_options(self) -> TableSpec:
        if self.format == "libfm":
            if self.delimiter is not None:
                raise ValueError("libfm splits on whitespace; drop `delimiter`")
            if self.header:
                raise ValueError("libfm files have no header line; drop `header`")
            if not self.columns or len(self.columns) < 2:
                raise ValueError("libfm needs `columns`: the label column, then one name per field in line order")
        elif self.delimiter is not None and len(self.delimiter) != 1:
            raise ValueError(f"delimiter must be one character, got {self.delimiter!r}")
        if not self.header and not self.columns:
            raise ValueError("without a header line, `columns` must name the columns")
        return self

    @property
    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)

    @property
    def sep(self) -> str | None:
        if self.format == "libfm":
            return None
        return self.delimiter or ("\t" if self.format == "tsv" else ",")


class JoinSpec(TableSpec):
    """A side table joined to each main row on a key column (e.g. ML-100k's u.user on user_id)."""

    left_on: str
    """Key column of the main row (after earlier joins). (Not `on`: YAML 1.1 reads a bare `on` as true.)"""
    right_on: str | None = None
    """Key column of the side table; default: same name as `left_on`."""
    how: Literal["left", "inner"] = "left"
    """`left`: a row without a match keeps its other features (the joined ones are absent);
    `inner`: such a row is a bad row."""

    @property
    def key(self) -> str:
        return self.right_on or self.left_on


class LabelSpec(BaseModel):
    model_config = _STRICT

    column: str
    rule: str = "value"
    """`value`: the column holds 0 or 1 (anything else is a bad row); or a comparison with a number
    that makes label 1: `>= 4` (ratings), `> 0` (libFM +1/-1), `== 1`."""

    @field_validator("rule")
    @classmethod
    def _rule(cls, value: str) -> str:
        if value != "value" and not _RULE.match(value):
            raise ValueError(f"label rule {value!r} is neither `value` nor `<op> <number>` with op in {list(_OPS)}")
        return value

    def compile(self) -> Callable[[str], int]:
        """A function from the label cell to 0/1; raises ValueError naming the bad cell."""
        if self.rule == "value":

            def as_value(cell: str) -> int:
                if cell in ("0", "1"):
                    return int(cell)
                if _number(cell) in (0.0, 1.0):
                    return int(float(cell))
                raise ValueError(f"label {cell!r} is not 0 or 1")

            return as_value
        match = _RULE.match(self.rule)
        assert match is not None
        op, threshold = _OPS[match.group(1)], float(match.group(2))

        def by_rule(cell: str) -> int:
            return 1 if op(_number(cell), threshold) else 0

        return by_rule


def _number(cell: str) -> float:
    try:
        number = float(cell)
    except ValueError:
        raise ValueError(f"label {cell!r} is not a number") from None
    if number != number:
        raise ValueError(f"label {cell!r} is not a number")
    return number


class TimestampSpec(BaseModel):
    """Event time. With a column: its values in `unit`; without: row order (`start_ms + row * step_ms`)."""

    model_config = _STRICT

    column: str | None = None
    unit: TimeUnit = "s"
    start_ms: int = Field(0, ge=0)
    step_ms: int = Field(1, ge=0)

    @property
    def multiplier(self) -> float:
        return UNIT_TO_MS[self.unit]


class ColumnRef(BaseModel):
    """A feature read from a column; `split` makes a multivalent feature from a delimited cell."""

    model_config = _STRICT

    column: str
    split: str | None = None


class EventIdColumn(BaseModel):
    model_config = _STRICT

    column: str


class SourceSpec(TableSpec):
    """The whole `source:` section."""

    dataset: str | None = None
    """A dataset known to `services.datasets` (movielens, criteo, frappe): relative paths resolve in its folder."""
    label: LabelSpec | None = None
    """None: unlabeled data (events carry no label)."""
    timestamp: TimestampSpec = TimestampSpec()
    event_id: str | EventIdColumn = "{file}-{line}"
    """A template over column names and {row}, {file}, {line}; or `{column: name}`."""
    key: str | None = None
    """Kafka message key: the name of a sparse feature (its value) or `event_id`; None: no key."""
    features: dict[str, str | ColumnRef] = {}
    """feature name <- column (or {column, split}); features not listed read the column of their own name."""
    joins: list[JoinSpec] = []
    sort: bool | None = None
    """Stable sort by timestamp before replay; default: on when `timestamp.column` is set. Sorting reads the
    whole file into memory; set false for a file already in time order."""

    @field_validator("event_id")
    @classmethod
    def _template(cls, value: str | EventIdColumn) -> str | EventIdColumn:
        if isinstance(value, str):
            try:
                names = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
            except ValueError as exc:
                raise ValueError(f"event_id template {value!r} is malformed: {exc}") from None
            if not names:
                raise ValueError(f"event_id template {value!r} has no placeholder; ids would repeat")
            for name in names:
                if not name.isidentifier():
                    raise ValueError(f"event_id placeholder {{{name}}} must be a plain column name")
        return value

    @property
    def sorted_by_time(self) -> bool:
        return self.timestamp.column is not None if self.sort is None else self.sort

    @property
    def template_fields(self) -> list[str]:
        if isinstance(self.event_id, EventIdColumn):
            return []
        return [name for _, name, _, _ in string.Formatter().parse(self.event_id) if name is not None]

    def feature_column(self, feature: str) -> ColumnRef:
        ref = self.features.get(feature, feature)
        return ColumnRef(column=ref) if isinstance(ref, str) else ref


def parse_source(schema: FeatureSchema, origin: str = "<schema>") -> SourceSpec:
    """Validate the schema's `source:` section; raises SourceError naming the file and the bad value."""
    if schema.source is None:
        raise SourceError(f"{origin}: feature schema {schema.name!r} has no `source:` section; add one to replay files")
    try:
        spec = SourceSpec.model_validate(schema.source)
    except ValidationError as exc:
        raise SourceError(f"{origin}: invalid `source:` section: {exc}") from exc
    known = set(schema.sparse_names) | set(schema.dense_names)
    extra = sorted(set(spec.features) - known)
    if extra:
        raise SourceError(
            f"{origin}: source.features maps {extra}, which the schema does not define; it has {sorted(known)}"
        )
    if spec.key not in (None, "event_id") and spec.key not in schema.sparse_names:
        raise SourceError(f"{origin}: source.key {spec.key!r} is not a sparse feature of the schema or 'event_id'")
    for name in schema.dense_names:
        if spec.feature_column(name).split is not None:
            raise SourceError(f"{origin}: dense feature {name!r} cannot use `split`")
    for spec_f in schema.sparse:
        if spec.feature_column(spec_f.name).split is not None and not spec_f.multivalent:
            raise SourceError(f"{origin}: feature {spec_f.name!r} uses `split` but is not `multivalent: true`")
    return spec


def source_dict(spec: SourceSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", exclude_defaults=True)
