"""`POST /v1/predict`: one probability per event, batched end to end (and across requests: batcher.py).

The route is declared here as FastAPI routes are (so /openapi.json documents it), but its work is
`answer`, written against the ASGI scope: the app calls `handle` ahead of Starlette's middleware
stack and router (`app.InferenceApp`), which cost more per request than a batch-1 forward.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic.json_schema import models_json_schema
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from services.inference.codec import RequestInvalid, decode_predict, encode_predictions
from services.inference.deps import PREDICT_SECURITY, check_predict_key, served_or_503
from services.inference.schemas import ErrorResponse, PredictRequest, PredictResponse, ValidationErrorResponse

router = APIRouter(tags=["predict"])

# The body is decoded by msgspec (see codec.py); these are the schemas /openapi.json documents for it.
_, REQUEST_SCHEMAS = models_json_schema([(PredictRequest, "validation")], ref_template="#/components/schemas/{model}")
PREDICT_OPENAPI: dict[str, Any] = {
    "security": PREDICT_SECURITY,
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/PredictRequest"},
                "examples": {
                    "one_event": {
                        "summary": "One MovieLens event",
                        "value": PredictRequest.model_json_schema()["examples"][0],
                    }
                },
            },
            "application/msgpack": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
        },
    },
}


ROUTE = "/predict"
"""The route's path in `router` (the app mounts it under /v1)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A predict answer: JSON `body` with `status` (and the headers of an error, e.g. Retry-After)."""

    status: int
    body: bytes
    headers: Mapping[str, str] | None = None


async def handle(scope: Scope, receive: Receive, send: Send) -> None:
    """`POST /v1/predict` as a plain ASGI app (the app calls it directly: see `InferenceApp`)."""
    try:
        reply = await answer(scope, receive)
    except ClientDisconnect:  # nobody to answer
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(reply.body))]
    if reply.headers:
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


async def answer(scope: Scope, receive: Receive) -> Reply:
    """The reply to the predict request of `scope`: probabilities, or an error as FastAPI writes
    HTTPException's (`{"detail": ...}`, 4xx/5xx)."""
    try:
        return await _predict(scope, receive)
    except HTTPException as exc:
        return Reply(exc.status_code, orjson.dumps({"detail": exc.detail}), exc.headers)


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The body, refusing (413) as soon as it is known to exceed `limit` bytes (declared or streamed)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"body of {declared} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _predict(scope: Scope, receive: Receive) -> Reply:
    state = scope["app"].state
    settings, batcher = state.settings, state.batcher
    headers = Headers(scope=scope)
    check_predict_key(settings, headers)
    served = served_or_503(state.holder)
    batcher.expect()
    queued = False
    try:
        body = await read_body(receive, headers.get("content-length"), settings.max_body_bytes)
        try:
            events = decode_predict(body, headers.get("content-type")).events
        except RequestInvalid as exc:
            raise _unprocessable(exc) from exc
        n = len(events)
        if n == 0:
            raise _unprocessable(
                RequestInvalid([{"type": "too_short", "loc": ["body", "events"], "msg": "at least one event"}])
            )
        if n > settings.max_batch:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE, f"{n} events exceed the maximum batch of {settings.max_batch}"
            )
        state.metrics.batch_size.observe(n)
        scope.setdefault("state", {})["log_fields"] = {"batch": n, "version": served.version}
        queued = True
        try:
            async with asyncio.timeout(settings.request_timeout_s):
                probabilities = await batcher.score(served, events)
        except RequestInvalid as exc:
            raise _unprocessable(exc) from exc
        except TimeoutError as exc:
            raise HTTPException(
                status.HTTP_504_GATEWAY_TIMEOUT, f"scoring {n} events took longer than {settings.request_timeout_s} s"
            ) from exc
    finally:
        if not queued:
            batcher.abandon()
    return Reply(200, encode_predictions(served.version, probabilities))


@router.post(
    ROUTE,
    summary="Score a batch of events",
    response_model=PredictResponse,
    openapi_extra=PREDICT_OPENAPI,
    responses={
        401: {"model": ErrorResponse, "description": "API key missing (only with `predict_requires_key`)"},
        403: {"model": ErrorResponse, "description": "API key not valid"},
        413: {"model": ErrorResponse, "description": "More events than `max_batch`, or a body over `max_body_bytes`"},
        422: {"model": ValidationErrorResponse, "description": "Bad input, one entry per bad field"},
        503: {"model": ErrorResponse, "description": "No model loaded yet"},
        504: {"model": ErrorResponse, "description": "Scoring took longer than `request_timeout_s`"},
    },
)
async def predict(request: Request) -> Response:
    """One probability per event, in order, plus the version of the model that scored them all.

    Events are in the training schema; `label` is ignored. Unknown features, missing features and
    IDs never seen in training are handled as the model's feature schema says and counted in /metrics.
    """
    reply = await answer(request.scope, request.receive)
    return Response(reply.body, reply.status, reply.headers, media_type="application/json")


def _unprocessable(exc: RequestInvalid) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, exc.details)
