"""Hostile envelopes become dead letters (EnvelopeError with a reason), never another exception
that would fail the whole batch: the inputs the fuzzer (tests/fuzz) found, and their kin."""

from __future__ import annotations

import json

import pytest

from lakeward.events import EnvelopeError, decode_envelope

SOURCE = {"db": "shop", "collection": "orders", "ts_ms": 1_700_000_000_000, "ord": 1}
SEQ = "0" * 24


def _envelope(**fields: object) -> bytes:
    return json.dumps({"op": "c", "source": SOURCE, "seq": SEQ, **fields}).encode()


@pytest.mark.parametrize(
    "after",
    [
        '{"_id": {"$oid": "5f43a1b2c3d4e5f6067"}}',  # bson's InvalidId (found by the fuzzer)
        '{"_id": {"$oid": 5}}',  # TypeError
        '{"_id": 1, "b": {"$binary": {"base64": 1, "subType": "00"}}}',  # TypeError
        '{"_id": 1, "d": {"$date": 1e400}}',  # OverflowError
        '{"_id": 1, "d": {"$date": 1e20}}',  # InvalidBSON
        '{"_id": 1, "t": {"$timestamp": {"t": "x", "i": 1}}}',  # TypeError
        '{"_id": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}",  # RecursionError
    ],
)
def test_extended_json_that_bson_cannot_read_is_a_dead_letter(after: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        decode_envelope(_envelope(after=after))
    assert caught.value.reason == "bad_extended_json"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (_envelope(op={"c": 1}, after='{"_id": 1}'), "unknown_op"),
        (_envelope(op=["c"], after='{"_id": 1}'), "unknown_op"),
        (_envelope(source={**SOURCE, "db": ["shop"]}, after='{"_id": 1}'), "missing_source"),
        (_envelope(source={**SOURCE, "ts_ms": "soon"}, after='{"_id": 1}'), "missing_source"),
        (_envelope(seq="g" * 24, after='{"_id": 1}'), "bad_seq"),
        (_envelope(seq="A" * 24, after='{"_id": 1}'), "bad_seq"),
        # A Debezium snapshot row (no seq, ord -1) read at a negative time.
        (json.dumps({"op": "r", "after": '{"_id": 1}',
                     "source": {**SOURCE, "ts_ms": -5000, "ord": -1}}).encode(), "bad_seq"),
    ],
)  # fmt: skip
def test_fields_of_the_wrong_type_are_dead_letters(value: bytes, reason: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        decode_envelope(value)
    assert caught.value.reason == reason


def test_a_debezium_key_that_bson_cannot_read_is_ignored_not_raised() -> None:
    value = json.dumps({"op": "d", "source": SOURCE, "seq": SEQ}).encode()
    with pytest.raises(EnvelopeError) as caught:
        decode_envelope(value, json.dumps({"id": '{"$oid": 5}'}).encode())
    assert caught.value.reason == "missing_id"
