"""Event wire formats: JSON (the default) and msgpack, told apart by a content type.

On Kafka the content type travels in the message header `content-type`; over HTTP in the
`Content-Type` header. A message without the header is JSON, so plain JSON producers (kcat,
other languages) need no header at all. Both formats carry exactly the same `Event` object and
decode with the same validation (see docs/events.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from embedding.events import Event

Encoding = Literal["json", "msgpack"]

CONTENT_TYPE_HEADER = "content-type"
CONTENT_TYPES: dict[Encoding, str] = {"json": "application/json", "msgpack": "application/msgpack"}
_ENCODING_OF = {value: key for key, value in CONTENT_TYPES.items()} | {
    "application/x-msgpack": "msgpack",
    "application/vnd.msgpack": "msgpack",
}

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder(Event)
_msgpack_encoder = msgspec.msgpack.Encoder()
_msgpack_decoder = msgspec.msgpack.Decoder(Event)


class EventCodec:
    """Encode events in one wire format; `headers` is what a Kafka producer sends alongside."""

    def __init__(self, encoding: Encoding = "json") -> None:
        if encoding not in CONTENT_TYPES:
            raise ValueError(f"event encoding {encoding!r} is not one of {sorted(CONTENT_TYPES)}")
        self.encoding: Encoding = encoding
        self.content_type = CONTENT_TYPES[encoding]
        self.headers: list[tuple[str, bytes]] = [(CONTENT_TYPE_HEADER, self.content_type.encode())]
        self.encode = _json_encoder.encode if encoding == "json" else _msgpack_encoder.encode


def encoding_for(content_type: str | bytes | None) -> Encoding:
    """The wire format named by a content type; None or empty means JSON. Parameters (`; charset=`) are ignored."""
    if not content_type:
        return "json"
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    media = content_type.split(";", 1)[0].strip().lower()
    try:
        return _ENCODING_OF[media]  # type: ignore[return-value]
    except KeyError:
        known = sorted(_ENCODING_OF)
        raise ValueError(f"unknown event content type {content_type!r}; expected one of {known}") from None


def content_type_of(headers: Sequence[tuple[str, bytes]] | None) -> bytes | None:
    """The `content-type` value among Kafka message headers (case-insensitive name), or None."""
    for name, value in headers or ():
        if name.lower() == CONTENT_TYPE_HEADER:
            return value
    return None


def decode(payload: bytes, content_type: str | bytes | None = None) -> Event:
    """Decode and validate one event; raises msgspec.ValidationError/DecodeError naming the bad field."""
    if encoding_for(content_type) == "msgpack":
        return _msgpack_decoder.decode(payload)
    return _json_decoder.decode(payload)


def decode_message(payload: bytes, headers: Sequence[tuple[str, bytes]] | None) -> Event:
    """Decode a Kafka message's value using its `content-type` header (JSON when absent)."""
    return decode(payload, content_type_of(headers))
