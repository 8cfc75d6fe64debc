"""Deterministic `_id` values and the bounded pool of ids known to exist."""

from __future__ import annotations

import hashlib
import random
import uuid
from typing import Any

from bson.binary import Binary
from bson.objectid import ObjectId

from lakeward.generate.options import IdType

__all__ = ["IdFactory", "IdPool", "uuid4_binary"]

# ObjectIds normally embed the clock and a per-process random value; both would break
# reproducibility, so the timestamp part is a fixed epoch advanced by the sequence number.
_OBJECTID_EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z
_SIMPLE = (IdType.OBJECTID, IdType.INT, IdType.STRING, IdType.UUID)


def uuid4_binary(rng: random.Random) -> Binary:
    """A random version-4 UUID from `rng`, as BSON binary subtype 4 (the standard encoding)."""
    return Binary(uuid.UUID(int=rng.getrandbits(128), version=4).bytes, 4)


class IdFactory:
    """Makes the n-th `_id` of a run; equal seeds give equal ids.

    ObjectIds: 4-byte timestamp = epoch + n // 1000, 5 bytes from the seed, 3-byte counter = n
    (mod 2**24), so ids of one seed are unique and roughly ordered, and different seeds do not
    collide. Ints are n + 1 and strings ``ORD-<n+1>``, so those do collide across seeds. UUIDs
    (version 4, stored as BSON binary subtype 4) are drawn from the run's random generator.
    """

    def __init__(self, seed: int, id_type: IdType, rng: random.Random) -> None:
        self.id_type = id_type
        self._rng = rng
        self._seed_bytes = hashlib.sha256(f"lakeward-generate:{seed}".encode()).digest()[:5]

    def make(self, n: int) -> Any:
        kind = self.id_type
        if kind is IdType.MIXED:
            kind = self._rng.choice(_SIMPLE)
        if kind is IdType.OBJECTID:
            return self.object_id(n)
        if kind is IdType.INT:
            return n + 1
        if kind is IdType.STRING:
            return f"ORD-{n + 1:010d}"
        return uuid4_binary(self._rng)

    def object_id(self, n: int) -> ObjectId:
        stamp = (_OBJECTID_EPOCH + n // 1000).to_bytes(4, "big")
        return ObjectId(stamp + self._seed_bytes + (n & 0xFFFFFF).to_bytes(3, "big"))


class IdPool:
    """A bounded set of ids known to exist, with O(1) add, remove and uniform pick.

    Updates, replaces and deletes target ids from here instead of querying the collection. When
    full, a new id replaces a random member, so the pool stays a uniform sample of live ids.
    """

    def __init__(self, capacity: int, rng: random.Random) -> None:
        if capacity < 1:
            raise ValueError(f"id pool capacity {capacity} must be at least 1")
        self.capacity = capacity
        self._rng = rng
        self._ids: list[Any] = []
        self._slots: dict[Any, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._slots

    def add(self, id_: Any) -> None:
        if len(self._ids) < self.capacity:
            self._slots[id_] = len(self._ids)
            self._ids.append(id_)
            return
        slot = self._rng.randrange(self.capacity)
        del self._slots[self._ids[slot]]
        self._ids[slot] = id_
        self._slots[id_] = slot

    def pick(self) -> Any:
        return self._ids[self._rng.randrange(len(self._ids))]

    def remove(self, id_: Any) -> None:
        slot = self._slots.pop(id_)
        last = self._ids.pop()
        if slot < len(self._ids):
            self._ids[slot] = last
            self._slots[last] = slot
