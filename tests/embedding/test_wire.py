"""Event wire formats: JSON and msgpack carry the same event; the content type tells them apart."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from embedding.events import Event
from embedding.wire import EventCodec, decode, decode_message, encoding_for

names = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6)
sparse_values = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=10),
    st.lists(st.one_of(st.integers(0, 10**9), st.text(max_size=5)), max_size=4),
)
events = st.builds(
    Event,
    event_id=st.text(min_size=1, max_size=30),
    ts=st.integers(0, 2**53),
    label=st.one_of(st.none(), st.integers(0, 1)),
    dense=st.dictionaries(names, st.floats(allow_nan=False, allow_infinity=False), max_size=4),
    sparse=st.dictionaries(names, sparse_values, max_size=4),
)


@given(event=events)
def test_both_encodings_round_trip(event: Event) -> None:
    for encoding in ("json", "msgpack"):
        codec = EventCodec(encoding)  # type: ignore[arg-type]
        payload = codec.encode(event)
        assert decode_message(payload, codec.headers) == event
        assert decode(payload, codec.content_type) == event


def test_json_is_the_default_and_msgpack_is_smaller() -> None:
    event = Event(event_id="u1-m2-3", ts=3000, label=1, sparse={"user": 1, "movie": 2, "zip": "55455"})
    json_payload, msgpack_payload = EventCodec("json").encode(event), EventCodec("msgpack").encode(event)
    assert decode_message(json_payload, None) == event  # no header: JSON
    assert decode_message(json_payload, [("other", b"x")]) == event
    assert len(msgpack_payload) < len(json_payload)
    with pytest.raises(msgspec.DecodeError):
        decode_message(msgpack_payload, None)  # msgpack without its header is not JSON


@pytest.mark.parametrize(
    ("content_type", "encoding"),
    [
        (None, "json"),
        (b"", "json"),
        ("application/json; charset=utf-8", "json"),
        (b"application/msgpack", "msgpack"),
        ("Application/X-MsgPack", "msgpack"),
    ],
)
def test_content_types(content_type: str | bytes | None, encoding: str) -> None:
    assert encoding_for(content_type) == encoding


def test_unknown_content_type_and_encoding_are_named() -> None:
    with pytest.raises(ValueError, match="text/csv"):
        encoding_for("text/csv")
    with pytest.raises(ValueError, match="avro"):
        EventCodec("avro")  # type: ignore[arg-type]


def test_decoding_validates_in_both_encodings() -> None:
    bad = {"event_id": "", "ts": 1}
    for encoding, enc in (("json", msgspec.json.encode), ("msgpack", msgspec.msgpack.encode)):
        with pytest.raises(msgspec.ValidationError, match="event_id"):
            decode(enc(bad), EventCodec(encoding).content_type)  # type: ignore[arg-type]
