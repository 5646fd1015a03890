"""Request and response schemas, named by role.

`POST /v1/predict` decodes its body with msgspec straight into `embedding.events.Event` structs
(`PredictBody`), several times faster than pydantic for large batches; the pydantic models here
describe the same shapes for `/openapi.json` and type the other routes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field

from embedding.events import Event


class PredictBody(msgspec.Struct, forbid_unknown_fields=True):
    """The wire form of `PredictRequest` (what the handler actually decodes)."""

    events: list[Event]


EXAMPLE_EVENT: dict[str, Any] = {
    "event_id": "u196-i242-881250949",
    "ts": 881250949000,
    "dense": {},
    "sparse": {"user": 196, "movie": 242, "age": 49, "gender": "M", "occupation": "writer", "zip": "55105"},
}

SparseValue = (
    Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]
    | str
    | list[Annotated[int, Field(ge=-(2**63), le=2**64 - 1)] | str]
)


class EventIn(BaseModel):
    """One event in the training schema; `label` is accepted (so training events replay as-is) and ignored."""

    model_config = ConfigDict(extra="forbid", title="Event")

    event_id: str = Field(min_length=1, max_length=256, description="Caller's id of the event (not used by the model).")
    ts: int = Field(ge=0, le=2**63 - 1, description="Event time, milliseconds since the Unix epoch.")
    label: int | None = Field(None, ge=0, le=1, description="Ignored at inference.")
    dense: dict[str, float] = Field(
        default_factory=dict, description="Dense features by name; absent ones take the schema default."
    )
    sparse: dict[str, SparseValue] = Field(
        default_factory=dict,
        description="Categorical features by name: an int, a string, or a list of them (multivalent). "
        "An absent feature is an empty bag, or a 422 where the schema says `on_missing: reject`.",
    )


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"events": [EXAMPLE_EVENT]}]},
    )

    events: list[EventIn] = Field(
        min_length=1,
        description="The batch (at most `UNIREC_SERVE_MAX_BATCH` events; more is answered 413).",
    )


class PredictResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"version": "v000042", "probabilities": [0.137]}]})

    version: str = Field(description="Model version that scored the whole batch.")
    probabilities: list[float] = Field(description="Click probability per event, in request order.")


class ModelInfo(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "version": "v000042",
                    "kind": "delta",
                    "created_at": "2026-11-23T20:00:00Z",
                    "watermark_ms": 893286638000,
                    "freshness_s": 12.5,
                    "loaded_at": 1763928000.0,
                    "pinned": False,
                    "history": ["v000041"],
                    "refused": {},
                    "schema": {"name": "movielens", "embedding_dim": 16, "sparse": [{"name": "user"}]},
                }
            ]
        }
    )

    version: str
    kind: str = Field(description="How the version was reached: `full` load or `delta` applied.")
    created_at: Any = Field(None, description="When the artifact was exported (from its manifest).")
    watermark_ms: int | None = Field(None, description="Largest event time the model was trained on (ms).")
    freshness_s: float | None = Field(None, description="Now minus the watermark, in seconds.")
    loaded_at: float = Field(description="When this process swapped to the version (Unix seconds).")
    pinned: bool = Field(description="True after a rollback: new exports are not followed until a reload.")
    history: list[str] = Field(description="Versions kept for rollback, newest first.")
    refused: dict[str, str] = Field(
        default_factory=dict,
        description="Versions refused since start (not retried by the follower), with the reason: "
        "e.g. a corrupt newest version this replica fell back from at start.",
    )
    schema_: dict[str, Any] = Field(alias="schema", serialization_alias="schema", description="The feature schema.")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": "v000042"}, {}]})

    version: str | None = Field(None, min_length=1, max_length=256, description="Version to load; default: the latest.")


class ErrorDetail(BaseModel):
    type: str
    loc: list[str | int]
    msg: str


class ValidationErrorResponse(BaseModel):
    """FastAPI's 422 shape: one entry per bad field."""

    detail: list[ErrorDetail]


class ErrorResponse(BaseModel):
    detail: str
    reason: str | None = None
    version: str | None = None


class Health(BaseModel):
    status: Literal["ok", "ready", "not_ready"]
    version: str | None = None


class StatusResponse(BaseModel):
    """Everything the status page shows, from the service's own state and Redis."""

    ready: bool
    model: ModelInfo | None
    requests: dict[str, float] = Field(description="Counters for rates: predict requests, predictions, errors.")
    follower: dict[str, Any]
    training: dict[str, Any] = Field(
        description="Figures from the manifest of the served model (progressive metrics...)."
    )
    churn: dict[str, Any] = Field(description="Values under `unirec:churn:*` in Redis, by key suffix; empty when none.")
    refused: dict[str, str] = Field(description="Versions refused since start, with the reason.")
