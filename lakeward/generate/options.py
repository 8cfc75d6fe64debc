"""Parsing and validation of the generator's knobs: operation mix, rate, id type.

Every parser raises ``ValueError`` with a message that says what is wrong and how to fix it, so the
CLI can show it as one line and library callers get the same wording.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "DEFAULT_MIX",
    "IdType",
    "OpKind",
    "OpMix",
    "pacing_batch_size",
    "parse_id_type",
    "parse_ops",
    "parse_rate",
]


class OpKind(StrEnum):
    """The write operations the generator emits."""

    INSERT = "insert"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"


class IdType(StrEnum):
    """How `_id` values are made. `mixed` draws one of the others per document."""

    OBJECTID = "objectid"
    INT = "int"
    STRING = "string"
    UUID = "uuid"
    MIXED = "mixed"


@dataclass(frozen=True, slots=True)
class OpMix:
    """Percentages per operation kind; they sum to 100."""

    insert: int = 70
    update: int = 25
    replace: int = 0
    delete: int = 5

    def __post_init__(self) -> None:
        weights = self.weights()
        if any(w < 0 for w in weights.values()):
            raise ValueError("operation percentages must not be negative")
        total = sum(weights.values())
        if total != 100:
            raise ValueError(
                f"operation percentages sum to {total}, not 100; "
                "adjust them, e.g. insert:70,update:25,delete:5"
            )

    def weights(self) -> dict[OpKind, int]:
        return {
            OpKind.INSERT: self.insert,
            OpKind.UPDATE: self.update,
            OpKind.REPLACE: self.replace,
            OpKind.DELETE: self.delete,
        }

    def __str__(self) -> str:
        return ",".join(f"{kind}:{w}" for kind, w in self.weights().items() if w)


DEFAULT_MIX = OpMix()

_KINDS = ", ".join(k.value for k in OpKind)


def parse_ops(text: str) -> OpMix:
    """Parse ``insert:70,update:25,delete:5`` into an :class:`OpMix` (missing kinds are 0)."""
    weights: dict[str, int] = {}
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"no operations given; use kind:percent pairs of {_KINDS}")
    for part in parts:
        kind, sep, value = (s.strip() for s in part.partition(":"))
        if not sep:
            raise ValueError(f"'{part}' is not kind:percent; write e.g. insert:70")
        if kind not in {k.value for k in OpKind}:
            raise ValueError(f"unknown operation '{kind}'; choose from {_KINDS}")
        if kind in weights:
            raise ValueError(f"operation '{kind}' is given twice; give each kind once")
        try:
            weights[kind] = int(value)
        except ValueError:
            raise ValueError(
                f"percentage '{value}' of '{kind}' is not a whole number; write e.g. {kind}:25"
            ) from None
    return OpMix(**{k.value: weights.get(k.value, 0) for k in OpKind})


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$")
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(text: str) -> float | None:
    """Parse ``5000/s``, ``300/min``, ``5000`` (per second) or ``unlimited`` into ops per second.

    Returns None for unlimited.
    """
    if text.strip().lower() in {"unlimited", "max", "none"}:
        return None
    match = _RATE.match(text.lower())
    if not match:
        raise ValueError(
            f"'{text}' is not a rate; write e.g. 5000/s, 300/min, 5000 (per second) or unlimited"
        )
    rate = float(match.group(1)) / _PER[match.group(2) or "s"]
    if rate <= 0 or not math.isfinite(rate):
        raise ValueError(f"rate '{text}' must be above zero; use 'unlimited' for no limit")
    return rate


def parse_id_type(text: str) -> IdType:
    try:
        return IdType(text.strip().lower())
    except ValueError:
        choices = ", ".join(t.value for t in IdType)
        raise ValueError(f"unknown id type '{text}'; choose from {choices}") from None


def pacing_batch_size(rate: float | None, batch_size: int) -> int:
    """The batch size to use under a rate limit.

    A paced writer sends one batch and then waits; with a low rate a large batch would arrive as
    one burst every few seconds. Capping batches at a twentieth of the per-second rate keeps writes
    spread over each second (about 20 batches/s) while high rates still get full batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size} must be at least 1")
    if rate is None:
        return batch_size
    return max(1, min(batch_size, int(rate // 20)))
