"""Atheris harness: the envelope decoder apply runs on every Kafka record (lakeward/events.py).

Only EnvelopeError (NotAChangeError included) may escape `decode_envelope`: anything else would
fail the whole micro-batch instead of dead-lettering one record (design invariant 5). A decoded
event must also be usable downstream: string names, a 24-hex-digit seq, a canonical key, and
documents that encode back to Extended JSON.

Half the inputs are raw record bytes (the seed corpus holds real envelopes, Lakeward's and
Debezium's, for libFuzzer to mutate); the other half build an envelope field by field, so the
JSON stays well-formed and the fuzzer spends its time inside the decoder's checks.

    python tests/fuzz/envelope_harness.py -runs=20000 CORPUS_DIR   (libFuzzer flags)
"""

from __future__ import annotations

import json
import string
import sys

import atheris
import orjson

with atheris.instrument_imports(include=["lakeward", "bson"]):
    from lakeward import extjson
    from lakeward.events import EnvelopeError, decode_envelope

_HEX = set(string.hexdigits.lower())

#: Extended JSON fragments the structured mode splices into before/after/document_key/lsid.
_EXT_VALUES = [
    '{"$oid": "5f43a1b2c3d4e5f601234567"}',
    '{"$numberLong": "9223372036854775807"}',
    '{"$numberDecimal": "1E+6144"}',
    '{"$numberDecimal": "NaN"}',
    '{"$numberDouble": "-Infinity"}',
    '{"$date": {"$numberLong": "-62135596800001"}}',
    '{"$date": "2020-01-01T00:00:00Z"}',
    '{"$date": 253402300800000}',
    '{"$binary": {"base64": "AAE=", "subType": "04"}}',
    '{"$binary": "AAE=", "$type": "80"}',
    '{"$uuid": "12345678-1234-5678-1234-567812345678"}',
    '{"$timestamp": {"t": 4294967296, "i": 1}}',
    '{"$regularExpression": {"pattern": "a", "options": "z"}}',
    '{"$regex": "^a", "$options": "i"}',
    '{"$code": "x", "$scope": {"a": 1}}',
    '{"$dbPointer": {"$ref": "c", "$id": {"$oid": "5f43a1b2c3d4e5f601234567"}}}',
    '{"$ref": "c", "$id": 1}',
    '{"$minKey": 1}',
    '{"$maxKey": 1}',
    '{"$symbol": "s"}',
    '{"$undefined": true}',
    "1e400",
    "-0.0",
    "NaN",
    "Infinity",
    '"text"',
    "true",
    "null",
    "[]",
    "{}",
]


def _ext_document(fdp: atheris.FuzzedDataProvider) -> str | None:
    choice = fdp.ConsumeIntInRange(0, 4)
    if choice == 0:
        return None
    if choice == 1:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 200))
    fields = []
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        name = fdp.PickValueInList(["_id", "_id", "a", "$x", "", "b.c"])
        value = fdp.PickValueInList(_EXT_VALUES)
        if fdp.ConsumeBool():
            value = f'{{"{name}": {value}}}'
        fields.append(f'"{name}": {value}')
    return "{" + ", ".join(fields) + "}"


def _json_value(fdp: atheris.FuzzedDataProvider) -> object:
    return fdp.PickValueInList(
        [
            None,
            True,
            0,
            -1,
            2**31,
            2**63,
            -(2**64),
            1.5,
            float("1e308"),
            "",
            "x",
            "0" * 24,
            "g" * 24,
            "ffffffffffffffffffffffff",
            [],
            {},
            {"total_order": 0},
            {"total_order": 2**40},
            {"payload": {}, "schema": {}},
        ]
    )


def _structured(fdp: atheris.FuzzedDataProvider) -> tuple[bytes, bytes | None]:
    envelope: dict[str, object] = {}
    for field in ("op", "before", "after", "document_key", "seq", "format", "transaction"):
        kind = fdp.ConsumeIntInRange(0, 3)
        if kind == 0:
            continue
        if field in ("before", "after", "document_key"):
            envelope[field] = _ext_document(fdp)
        elif field == "op" and kind > 1:
            envelope[field] = fdp.PickValueInList(["c", "u", "d", "r"])
        else:
            envelope[field] = _json_value(fdp)
    if fdp.ConsumeBool():
        source: dict[str, object] = {}
        for field in ("db", "collection", "ts_ms", "ord", "lsid", "txnNumber"):
            kind = fdp.ConsumeIntInRange(0, 3)
            if kind == 0:
                continue
            if field in ("db", "collection") and kind > 1:
                source[field] = fdp.PickValueInList(["shop", "orders", "a.b"])
            elif field == "lsid" and kind > 1:
                source[field] = _ext_document(fdp)
            elif field in ("ts_ms", "ord") and kind > 1:
                source[field] = fdp.ConsumeIntInRange(-(2**33), 2**45)
            else:
                source[field] = _json_value(fdp)
        envelope["source"] = source
    key = None
    if fdp.ConsumeBool():
        key = orjson.dumps({"id": fdp.PickValueInList([*_EXT_VALUES, "", "{"])})
    # The standard library writes integers of any size (orjson stops at 64 bits), as a producer
    # other than Lakeward may.
    return json.dumps(envelope).encode(), key


def _check(event: object) -> None:
    for name in ("op", "database", "collection", "key", "key_type", "seq"):
        value = getattr(event, name)
        assert isinstance(value, str), f"{name} is {type(value).__name__}, not a string"
    assert event.database and event.collection, "empty database or collection name"  # type: ignore[attr-defined]
    assert len(event.seq) == 24 and set(event.seq) <= _HEX, f"seq {event.seq!r}"  # type: ignore[attr-defined]
    assert isinstance(event.source_ts_ms, int)  # type: ignore[attr-defined]
    for image in (event.after, event.before, event.document_key):  # type: ignore[attr-defined]
        if image is not None:
            extjson.dumps(image)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        value, key = _structured(fdp)
    else:
        rest = fdp.ConsumeBytes(fdp.remaining_bytes())
        value, key = rest, None
    try:
        event = decode_envelope(value, key)
    except EnvelopeError:
        return
    _check(event)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
