"""Predict bodies in and out: msgspec decoding into `Event` structs with FastAPI-style 422 details,
and orjson encoding of responses straight from the probability array."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import numpy as np
import orjson

from embedding.wire import encoding_for
from services.inference.schemas import PredictBody

# Lax at the HTTP edge: integral floats (7015.0) count as ints, as JSON Schema's `integer` allows and as
# clients that only have doubles send them; numeric strings for ints ("881250949000") are accepted too.
_json = msgspec.json.Decoder(PredictBody, strict=False)
_msgpack = msgspec.msgpack.Decoder(PredictBody, strict=False)
_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_FIELD = re.compile(r"Object (?P<what>missing required|contains unknown) field `(?P<name>[^`]*)`")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[(\.\.\.)\]")


class RequestInvalid(Exception):
    """The request is not what the route accepts; `details` is FastAPI's 422 `detail` list."""

    def __init__(self, details: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details))
        self.details = details


def detail(loc: list[str | int], msg: str, type_: str = "value_error") -> dict[str, Any]:
    return {"type": type_, "loc": loc, "msg": msg}


def _loc(path: str) -> list[str | int]:
    loc: list[str | int] = ["body"]
    for key, index, wildcard in _STEP.findall(path):
        loc.append(key or (int(index) if index else wildcard))
    return loc


def validation_details(exc: msgspec.ValidationError) -> list[dict[str, Any]]:
    """msgspec's `Expected int, got str - at $.events[0].ts` as FastAPI's `{loc, msg, type}`."""
    text = str(exc)
    match = _PATH.search(text)
    msg, loc = (text, ["body"]) if match is None else (text[: match.start()], _loc(match.group("path")))
    field = _FIELD.match(msg)
    if field is not None:  # FastAPI names the missing or extra field itself in `loc`
        loc.append(field.group("name"))
        return [detail(loc, msg, "missing" if field.group("what") == "missing required" else "extra_forbidden")]
    return [detail(loc, msg, "value_error" if match is not None else "type_error")]


def decode_predict(body: bytes, content_type: str | None) -> PredictBody:
    """The request body as structs; raises RequestInvalid (422) naming the bad field."""
    try:
        encoding = encoding_for(content_type)
    except ValueError as exc:
        raise RequestInvalid([detail(["header", "content-type"], str(exc), "content_type")]) from exc
    try:
        return (_msgpack if encoding == "msgpack" else _json).decode(body)
    except msgspec.ValidationError as exc:
        raise RequestInvalid(validation_details(exc)) from exc
    except msgspec.DecodeError as exc:
        raise RequestInvalid([detail(["body"], f"body is not valid {encoding}: {exc}", f"{encoding}_invalid")]) from exc


def encode_predictions(version: str, probabilities: np.ndarray) -> bytes:
    return orjson.dumps(
        {"version": version, "probabilities": probabilities},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
