"""The feature schema: which features a model has and how wide each one is.

One YAML file per dataset/model (see `embedding/schemas/*.yaml`). The model part (`features`,
`dense`, `embedding_dim`) is validated here; the optional `source` part maps a dataset's columns
to features and is validated by the replay tools (`services.replay`), so this library does not
know about files or datasets.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from embedding.errors import SchemaError

_STRICT = ConfigDict(extra="forbid", frozen=True)

OnMissing = Literal["default", "reject"]


class SparseFeature(BaseModel):
    """A categorical feature. Its embedding width is `lookups * embedding_dim` (multi-size)."""

    model_config = _STRICT

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    dtype: Literal["int", "str"] = "str"
    """Values are coerced to this type before hashing, so 7 and "7" give the same embedding."""
    lookups: int = Field(1, ge=1, le=16)
    """k: the feature's width is k rows of the shared table, looked up with k seeds and concatenated."""
    seed_group: str | None = None
    """Features with the same seed group share hash seeds (a shared vocabulary); default: own seeds."""
    multivalent: bool = False
    pooling: Literal["sum", "mean"] = "sum"
    vocab_size: int | None = Field(None, ge=1)
    """Estimated distinct values; used by per-feature methods (hashing trick, collisionless) and budgets."""
    on_missing: OnMissing = "default"
    """At inference: `default` treats an absent feature as an empty bag, `reject` answers 422."""

    @property
    def group(self) -> str:
        return self.seed_group or self.name


class DenseFeature(BaseModel):
    model_config = _STRICT

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    default: float = 0.0
    transform: Literal["none", "log1p"] = "none"
    """`log1p` applies sign(x)*log1p(|x|), the usual squashing of Criteo counts."""


class FeatureSchema(BaseModel):
    model_config = _STRICT

    name: str
    embedding_dim: int = Field(16, ge=1, le=1024)
    """d: the width of one row of the shared table."""
    sparse: tuple[SparseFeature, ...]
    dense: tuple[DenseFeature, ...] = ()
    unknown_features: Literal["ignore", "reject"] = "ignore"
    """At inference: what to do with a feature the schema does not name."""
    source: dict[str, Any] | None = None
    """Dataset mapping for replay tools; validated by `services.replay`, opaque here."""

    @field_validator("sparse")
    @classmethod
    def _non_empty(cls, value: tuple[SparseFeature, ...]) -> tuple[SparseFeature, ...]:
        if not value:
            raise ValueError("a schema needs at least one sparse feature")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> FeatureSchema:
        names = [f.name for f in self.sparse] + [f.name for f in self.dense]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature names must be unique; repeated: {dupes}")
        return self

    @property
    def sparse_names(self) -> list[str]:
        return [f.name for f in self.sparse]

    @property
    def dense_names(self) -> list[str]:
        return [f.name for f in self.dense]

    def feature(self, name: str) -> SparseFeature:
        for spec in self.sparse:
            if spec.name == name:
                return spec
        raise SchemaError(f"schema {self.name!r} has no sparse feature {name!r}; it has {self.sparse_names}")

    def width(self, name: str) -> int:
        return self.feature(name).lookups * self.embedding_dim

    @property
    def total_width(self) -> int:
        return sum(f.lookups for f in self.sparse) * self.embedding_dim

    def model_dict(self) -> dict[str, Any]:
        """The part of the schema a trained model depends on (no dataset mapping)."""
        return self.model_dump(mode="json", exclude={"source"})

    def fingerprint(self) -> str:
        """sha256 of the model part: two schemas with equal fingerprints give equal models."""
        return hashlib.sha256(orjson.dumps(self.model_dict(), option=orjson.OPT_SORT_KEYS)).hexdigest()


SCHEMA_DIR = Path(__file__).parent / "schemas"


def load_schema(path_or_name: str | Path) -> FeatureSchema:
    """Load a schema from a YAML path, or by name from the schemas shipped in `embedding/schemas/`."""
    path = Path(path_or_name)
    if not path.exists() and not path.suffix:
        path = SCHEMA_DIR / f"{path_or_name}.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        shipped = sorted(p.stem for p in SCHEMA_DIR.glob("*.yaml"))
        raise SchemaError(f"feature schema {str(path_or_name)!r} not found; shipped schemas: {shipped}") from exc
    except yaml.YAMLError as exc:
        raise SchemaError(f"{path}: not valid YAML: {exc}") from exc
    return parse_schema(doc, origin=str(path))


def parse_schema(doc: Any, origin: str = "<schema>") -> FeatureSchema:
    from pydantic import ValidationError

    try:
        return FeatureSchema.model_validate(doc)
    except ValidationError as exc:
        raise SchemaError(f"{origin}: invalid feature schema: {exc}") from exc
