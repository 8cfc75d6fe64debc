"""The pure generator: a reproducible sequence of write operations, no I/O."""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate, islice
from typing import Any

from lakeward.generate.documents import MAX_DRIFT_STAGE, DocumentFactory
from lakeward.generate.ids import IdFactory, IdPool
from lakeward.generate.options import DEFAULT_MIX, IdType, OpKind, OpMix, parse_id_type, parse_ops

__all__ = ["Batch", "Generator", "Operation"]


@dataclass(frozen=True, slots=True)
class Operation:
    """One write: `document` (with `_id`) for insert and replace, `update` for update."""

    kind: OpKind
    id: Any
    document: dict[str, Any] | None = None
    update: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """Operations written together in one unordered bulk write.

    `initial` batches load the starting set and are not rate limited; `transactional` batches are
    applied in one multi-document transaction.
    """

    operations: list[Operation]
    transactional: bool = False
    initial: bool = False
    kinds: dict[OpKind, int] = field(default_factory=dict)


class Generator:
    """Reproducible write operations against one collection: equal arguments, equal sequence.

    Updates, replaces and deletes target ids this generator inserted earlier, kept in a bounded
    pool (`pool_size`); when the pool is empty they fall back to inserts, so the first operations
    of a run without `initial` documents are inserts whatever the mix says. Ids evicted from a full
    pool still exist but are not targeted again.

    With `drift`, the document shape moves one stage every `drift_every` operations (see
    :class:`~lakeward.generate.documents.DocumentFactory`); `initial` documents are stage 0.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        mix: OpMix | str = DEFAULT_MIX,
        id_type: IdType | str = IdType.OBJECTID,
        drift: bool = False,
        drift_every: int = 1000,
        pool_size: int = 100_000,
        extreme_dates: bool = False,
    ) -> None:
        if drift_every < 1:
            raise ValueError(f"drift_every {drift_every} must be at least 1")
        self.seed = seed
        self.mix = parse_ops(mix) if isinstance(mix, str) else mix
        self.id_type = parse_id_type(id_type) if isinstance(id_type, str) else id_type
        self.drift = drift
        self.drift_every = drift_every
        self._rng = random.Random(seed)
        # Transactions draw from their own stream so the operation sequence does not depend on
        # the batch size or the transaction fraction.
        self._tx_rng = random.Random(f"lakeward-generate-tx:{seed}")
        self._ids = IdFactory(seed, self.id_type, self._rng)
        self._pool = IdPool(pool_size, self._rng)
        self._docs = DocumentFactory(seed, self._rng, extreme_dates=extreme_dates)
        weights = self.mix.weights()
        self._kinds = list(weights)
        self._cumulative = list(accumulate(weights.values()))
        self._made = 0  # documents made so far: numbers ids and order_no
        self._tick = 0  # operations so far, initial ones included: the generated clock
        self._ops = 0  # mixed-phase operations so far: drives drift

    @property
    def drift_stage(self) -> int:
        if not self.drift:
            return 0
        return min(MAX_DRIFT_STAGE, self._ops // self.drift_every)

    @property
    def known_ids(self) -> int:
        """How many ids the pool holds (ids inserted and not deleted, up to `pool_size`)."""
        return len(self._pool)

    def initial(self, count: int) -> Iterator[Operation]:
        """`count` inserts of stage-0 documents, the starting set."""
        for _ in range(count):
            self._tick += 1
            yield self._insert(stage=0)

    def operations(self, count: int) -> Iterator[Operation]:
        """`count` operations drawn from the mix."""
        for _ in range(count):
            stage = self.drift_stage
            self._ops += 1
            self._tick += 1
            kind = self._kinds[bisect_right(self._cumulative, self._rng.randrange(100))]
            if kind is OpKind.INSERT or not self._pool:
                yield self._insert(stage)
                continue
            id_ = self._pool.pick()
            if kind is OpKind.UPDATE:
                yield Operation(kind, id_, update=self._docs.update(self._tick, stage))
            elif kind is OpKind.REPLACE:
                doc = self._docs.document(id_, self._next_n(), self._tick, stage)
                yield Operation(kind, id_, document=doc)
            else:
                self._pool.remove(id_)
                yield Operation(kind, id_)

    def batches(
        self, count: int, *, initial: int = 0, batch_size: int = 500, transactions: float = 0.0
    ) -> Iterator[Batch]:
        """`initial` inserts, then `count` operations, cut into batches of `batch_size`.

        A fraction `transactions` (0..1) of the operation batches are marked transactional.
        """
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size} must be at least 1")
        if not 0.0 <= transactions <= 1.0:
            raise ValueError(f"transactions {transactions} must be a fraction between 0 and 1")
        for ops in _chunks(self.initial(initial), batch_size):
            yield Batch(ops, initial=True, kinds={OpKind.INSERT: len(ops)})
        for ops in _chunks(self.operations(count), batch_size):
            kinds: dict[OpKind, int] = {}
            for op in ops:
                kinds[op.kind] = kinds.get(op.kind, 0) + 1
            transactional = transactions > 0 and self._tx_rng.random() < transactions
            yield Batch(ops, transactional=transactional, kinds=kinds)

    def document(self) -> dict[str, Any]:
        """One new document at the current drift stage, not recorded as inserted."""
        n = self._next_n()
        return self._docs.document(self._ids.make(n), n, self._tick, self.drift_stage)

    def _insert(self, stage: int) -> Operation:
        n = self._next_n()
        id_ = self._ids.make(n)
        self._pool.add(id_)
        doc = self._docs.document(id_, n, self._tick, stage)
        return Operation(OpKind.INSERT, id_, document=doc)

    def _next_n(self) -> int:
        n = self._made
        self._made += 1
        return n


def _chunks(ops: Iterator[Operation], size: int) -> Iterator[list[Operation]]:
    while chunk := list(islice(ops, size)):
        yield chunk
