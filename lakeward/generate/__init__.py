"""Reproducible MongoDB workloads: realistic order documents, an operation mix, a paced writer.

The pure half (:class:`Generator`) yields operations and touches no I/O; :func:`run` writes them
into a collection. The demo, the tests and the benchmarks all use it, so workloads match.

    gen = Generator(seed=42, mix="insert:70,update:25,delete:5", drift=True)
    result = run(collection, gen.batches(10_000, initial=1_000, transactions=0.1), rate=5000)
"""

from lakeward.generate.documents import MAX_DRIFT_STAGE, DocumentFactory
from lakeward.generate.generator import Batch, Generator, Operation
from lakeward.generate.options import (
    DEFAULT_MIX,
    IdType,
    OpKind,
    OpMix,
    pacing_batch_size,
    parse_id_type,
    parse_ops,
    parse_rate,
)
from lakeward.generate.writer import (
    GenerateError,
    GenerateResult,
    Pacer,
    open_collection,
    redact_uri,
    requests,
    run,
)

__all__ = [
    "DEFAULT_MIX",
    "MAX_DRIFT_STAGE",
    "Batch",
    "DocumentFactory",
    "GenerateError",
    "GenerateResult",
    "Generator",
    "IdType",
    "OpKind",
    "OpMix",
    "Operation",
    "Pacer",
    "open_collection",
    "pacing_batch_size",
    "parse_id_type",
    "parse_ops",
    "parse_rate",
    "redact_uri",
    "requests",
    "run",
]
