"""Delta tables on S3 (SeaweedFS from the test stack): txn-versioned writes, racing writers, and
one clear error for a wrong table URI or credentials."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.contracts import ApplyBatchInput, ApplyDeadLettersInput
from activities.pipeline import DEAD_LETTER_APPLIER, PipelineActivities
from lakeward.delta.errors import TableStorageError, storage_error
from lakeward.delta.storage import storage_options
from lakeward.delta.table import ConcurrentCommitError, TxnTable
from lakeward.secrets import SecretReferenceError
from lakeward.settings import Settings
from lakeward.stack.servers_extra import LAKE_BUCKET, s3_credentials, s3_storage_options
from workflows.spec import PipelineSpec, Sink

pytestmark = pytest.mark.slow

APP = "orders/cdc.shop.orders/0"
WRONG_SECRET = "wrong-secret-value-0123456789"

#: A current-state table of its own (the real one's document columns are changing): the
#: columns the MERGE keys and guards on, and one document field.
SCHEMA = pa.schema(
    [
        pa.field("_id", pa.string(), nullable=False),
        pa.field("_id_type", pa.string(), nullable=False),
        pa.field("_op", pa.string(), nullable=False),
        pa.field("_seq", pa.string(), nullable=False),
        pa.field("_kafka_topic", pa.string(), nullable=False),
        pa.field("_kafka_partition", pa.int32(), nullable=False),
        pa.field("_kafka_offset", pa.int64(), nullable=False),
        pa.field("qty", pa.int64()),
    ]
)
LOG_SCHEMA = pa.schema(
    [pa.field("kafka_offset", pa.int64(), nullable=False), ("note", pa.string())]
)


def _rows(*changes: tuple[str, str, int, int, int | None]) -> pa.Table:
    """(_id, _op, seq, offset, qty) per row."""
    return pa.table(
        {
            "_id": [c[0] for c in changes],
            "_id_type": ["string"] * len(changes),
            "_op": [c[1] for c in changes],
            "_seq": [f"{c[2]:024x}" for c in changes],
            "_kafka_topic": ["cdc.shop.orders"] * len(changes),
            "_kafka_partition": pa.array([0] * len(changes), pa.int32()),
            "_kafka_offset": pa.array([c[3] for c in changes], pa.int64()),
            "qty": pa.array([c[4] for c in changes], pa.int64()),
        },
        schema=SCHEMA,
    )


def _log_rows(*offsets: int) -> pa.Table:
    return pa.table(
        {"kafka_offset": pa.array(offsets, pa.int64()), "note": [f"o{o}" for o in offsets]},
        schema=LOG_SCHEMA,
    )


def _read(uri: str, options: dict[str, str], *columns: str) -> list[dict]:
    rows = DeltaTable(uri, storage_options=options).to_pyarrow_table(columns=list(columns))
    return sorted(rows.to_pylist(), key=lambda r: tuple(str(v) for v in r.values()))


@pytest.fixture(scope="module")
def s3(test_stack) -> dict[str, str]:
    """deltalake storage options for the test stack's SeaweedFS (its bucket `lakeward` exists)."""
    return s3_storage_options(test_stack.need("s3"))


@pytest.fixture
def no_aws_environment(monkeypatch) -> None:
    # delta-rs also reads credentials from the environment: only the options under test count.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_ENDPOINT_URL", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def test_txn_table_merges_appends_and_keeps_txn_versions_on_s3(s3, unique) -> None:
    uri = f"s3://{LAKE_BUCKET}/{unique}/lake/shop/orders"
    table = TxnTable(uri, SCHEMA, s3)
    assert table.applied_versions([APP]) == {APP: None}

    first = table.merge_current_state(
        _rows(("a", "c", 1, 0, 1), ("b", "c", 2, 1, 2)), {APP: 1}, {APP: None}
    )
    second = table.merge_current_state(
        _rows(("a", "u", 3, 2, 10), ("b", "d", 4, 3, None)), {APP: 3}, {APP: 1}
    )
    assert (first.version, second.version) == (1, 2)  # version 0 is the CREATE

    # Another worker's handle reads the same versions and rows from the store.
    assert TxnTable(uri, SCHEMA, s3).applied_versions([APP]) == {APP: 3}
    assert _read(uri, s3, "_id", "_op", "qty") == [{"_id": "a", "_op": "u", "qty": 10}]

    # A replay of the second batch, filtered against the versions read before it, writes nothing.
    with pytest.raises(ConcurrentCommitError, match=rf"txn {APP} moved from 1 to 3"):
        table.merge_current_state(_rows(("a", "u", 3, 2, 10)), {APP: 3}, {APP: 1})
    assert DeltaTable(uri, storage_options=s3).version() == 2

    log = TxnTable(f"s3://{LAKE_BUCKET}/{unique}/lake/_lakeward/dead_letters", LOG_SCHEMA, s3)
    assert log.append(_log_rows(6, 7), {APP: 7}, {APP: None}).version == 1
    assert log.append(_log_rows(9), {APP: 9}, {APP: 7}).version == 2
    assert log.applied_versions([APP]) == {APP: 9}
    assert [r["kafka_offset"] for r in _read(log.uri, s3, "kafka_offset")] == [6, 7, 9]


def test_two_writers_racing_for_the_same_txn_versions_commit_once(s3, unique) -> None:
    """Two attempts of each batch (a retry and its zombie) read the versions, then commit at the
    same moment: one commits, the other gets ConcurrentCommitError, whichever guard stops it
    (the versions moved, or delta-rs's conflict check after the store refused its commit)."""
    uri = f"s3://{LAKE_BUCKET}/{unique}/lake/shop/orders"
    writers = [TxnTable(uri, SCHEMA, s3), TxnTable(uri, SCHEMA, s3)]
    writers[0].ensure()
    for batch in range(4):
        rows = _rows((f"k{batch}", "c", batch + 1, batch, batch))
        outcomes = _race(writers, rows, {APP: batch})
        assert sorted(outcomes) == ["committed", "refused"], f"batch {batch}: {outcomes}"

    assert DeltaTable(uri, storage_options=s3).version() == 4  # CREATE + one commit per batch
    assert TxnTable(uri, SCHEMA, s3).applied_versions([APP]) == {APP: 3}
    assert _read(uri, s3, "_id", "qty") == [{"_id": f"k{n}", "qty": n} for n in range(4)]


def _race(writers: list[TxnTable], rows: pa.Table, versions: dict[str, int]) -> list[str]:
    """Each writer reads the txn versions, then all merge `rows` at once; what each got."""
    barrier = threading.Barrier(len(writers))
    outcomes: list[str] = []

    def attempt(writer: TxnTable) -> None:
        read = writer.applied_versions(list(versions))
        barrier.wait()
        try:
            writer.merge_current_state(rows, versions, read)
            outcomes.append("committed")
        except ConcurrentCommitError:
            outcomes.append("refused")

    threads = [threading.Thread(target=attempt, args=(w,)) for w in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


@pytest.mark.parametrize("write", ["merge", "append"])
def test_a_commit_from_a_stale_snapshot_is_refused_by_the_store(
    s3, unique, monkeypatch, write
) -> None:
    """The store's conditional put is what stops it: the late writer's commit targets the version
    the first one already wrote. Were `If-None-Match` ignored, its PUT would silently replace the
    first commit and it would succeed (the rows of one batch lost)."""
    schema = SCHEMA if write == "merge" else LOG_SCHEMA
    uri = f"s3://{LAKE_BUCKET}/{unique}/{write}"
    first, late = TxnTable(uri, schema, s3), TxnTable(uri, schema, s3)
    stale = late.ensure()  # version 0, and late never refreshes it (a writer paused mid-batch)
    monkeypatch.setattr(late, "_load", lambda: stale)

    def commit(table: TxnTable, offset: int) -> None:
        if write == "merge":
            table.merge_current_state(_rows((f"k{offset}", "c", offset, offset, offset)),
                                      {APP: offset}, {APP: None})  # fmt: skip
        else:
            table.append(_log_rows(offset), {APP: offset}, {APP: None})

    commit(first, 5)
    with pytest.raises(ConcurrentCommitError):
        commit(late, 6)

    reread = DeltaTable(uri, storage_options=s3)
    assert reread.version() == 1
    assert reread.transaction_version(APP) == 5
    column = "qty" if write == "merge" else "kafka_offset"
    assert _read(uri, s3, column) == [{column: 5}]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _without(*keys: str) -> Callable[[dict[str, str]], dict[str, str]]:
    return lambda options: {k: v for k, v in options.items() if k not in keys}


def _with(**changes: str) -> Callable[[dict[str, str]], dict[str, str]]:
    return lambda options: {**options, **changes}


#: (case, table URI under the unique prefix or whole, options, what the message says, transient)
BAD_STORAGE = [
    ("unknown scheme", "foo://lakeward/{unique}/t", _with(),
     "foo://lakeward/{unique}/t: unsupported scheme 'foo'; a lake is a local path", False),
    ("no bucket", "s3://nope-{unique}/t", _with(),
     "bucket 'nope-{unique}' does not exist at http://127.0.0.1:", False),
    ("endpoint down", "s3://lakeward/{unique}/t", _with(AWS_ENDPOINT_URL="http://127.0.0.1:{port}"),
     "cannot reach the object store at http://127.0.0.1:{port} (Connection refused", True),
    ("endpoint host unknown", "s3://lakeward/{unique}/t",
     _with(AWS_ENDPOINT_URL="http://no-such-host.invalid:8333"),
     "the endpoint host 'no-such-host.invalid' does not exist (DNS has no such name); fix "
     "AWS_ENDPOINT_URL", False),
    ("endpoint not a URL", "s3://lakeward/{unique}/t", _with(AWS_ENDPOINT_URL="127.0.0.1 8333"),
     "AWS_ENDPOINT_URL is not an http(s) URL", False),
    ("http without AWS_ALLOW_HTTP", "s3://lakeward/{unique}/t", _without("AWS_ALLOW_HTTP"),
     "is http:// but AWS_ALLOW_HTTP is not true; set AWS_ALLOW_HTTP \"true\"", False),
    ("wrong secret", "s3://lakeward/{unique}/t", _with(AWS_SECRET_ACCESS_KEY=WRONG_SECRET),
     "(S3 said SignatureDoesNotMatch); check AWS_SECRET_ACCESS_KEY and AWS_ACCESS_KEY_ID", False),
    ("unknown key id", "s3://lakeward/{unique}/t", _with(AWS_ACCESS_KEY_ID="AKIAUNKNOWN0000"),
     "(S3 said InvalidAccessKeyId); check AWS_ACCESS_KEY_ID in the lake's storage options", False),
    ("secret missing", "s3://lakeward/{unique}/t", _without("AWS_SECRET_ACCESS_KEY"),
     "AWS_SECRET_ACCESS_KEY is not set (only AWS_ACCESS_KEY_ID is); set it in the lake's", False),
    ("no credentials", "s3://lakeward/{unique}/t",
     _without("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
     "no S3 credentials: neither the storage options nor the process environment set", False),
    ("empty secret", "s3://lakeward/{unique}/t", _with(AWS_SECRET_ACCESS_KEY=""),
     "AWS_SECRET_ACCESS_KEY is empty", False),
    ("option does not parse", "s3://lakeward/{unique}/t", _with(aws_conditional_put="sometimes"),
     'a storage option is not valid (Failed to parse "sometimes" as S3PutConditional)', False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("uri", "change", "says", "transient"),
    [case[1:] for case in BAD_STORAGE],
    ids=[case[0] for case in BAD_STORAGE],
)
@pytest.mark.usefixtures("no_aws_environment")
def test_a_wrong_uri_or_credentials_is_one_clear_error(s3, unique, uri, change, says, transient):
    port = _free_port()
    uri = uri.format(unique=unique)
    options = {k: v.format(port=port) for k, v in change(s3).items()}
    table = TxnTable(uri, SCHEMA, options)
    # Both ways a batch opens its table: reading the txn versions, and creating it if missing.
    for opening in (lambda: table.applied_versions([APP]), table.ensure):
        with pytest.raises(TableStorageError) as info:
            opening()
        message = str(info.value)
        assert message.startswith(f"{uri}: ")
        assert says.format(unique=unique, port=port) in message
        assert info.value.transient is transient
        assert "\n" not in message and "\x1b" not in message
        for secret in (s3["AWS_SECRET_ACCESS_KEY"], WRONG_SECRET):
            assert secret not in message


def test_without_conditional_put_a_table_cannot_be_created(s3, unique) -> None:
    """`aws_conditional_put: disabled` turns off the only commit guard delta-rs 1.x has on S3
    (no DynamoDB locking any more): reading works, the first commit is refused, clearly."""
    options = {**s3, "aws_conditional_put": "disabled"}
    table = TxnTable(f"s3://{LAKE_BUCKET}/{unique}/t", SCHEMA, options)
    assert table.applied_versions([APP]) == {APP: None}
    with pytest.raises(TableStorageError) as info:
        table.ensure()
    assert "the store cannot do the conditional put every Delta commit needs" in str(info.value)
    assert not info.value.transient


def test_driver_text_quoted_in_a_message_has_credentials_blanked_out() -> None:
    options = {"AWS_SECRET_ACCESS_KEY": "s3cr3t/with+chars", "AWS_SESSION_TOKEN": "tok-123456"}
    exc = OSError(
        "Generic S3 error\n  ↳ Error performing GET http://h/b?x=s3cr3t%2Fwith%2Bchars\n"
        "   ↳ HTTP error\n    ↳ token tok-123456 and s3cr3t/with+chars in a strange place"
    )
    problem = storage_error("s3://b/t", options, exc)
    assert problem is not None and problem.transient
    assert "token *** and *** in a strange place" in str(problem)
    assert "s3cr3t" not in str(problem) and "tok-123456" not in str(problem)


def test_a_missing_table_is_not_a_storage_error(s3, unique) -> None:
    table = TxnTable(f"s3://{LAKE_BUCKET}/{unique}/not-yet", SCHEMA, s3)
    assert table.applied_versions([APP]) == {APP: None}
    assert table.ensure().version() == 0


@pytest.mark.usefixtures("no_aws_environment")
def test_storage_options_resolve_an_env_reference_for_the_secret_key(
    test_stack, s3, unique, monkeypatch
) -> None:
    creds = s3_credentials(test_stack.need("s3"))
    settings = Settings(
        lake_storage_options={
            "AWS_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"],
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": creds.region,
            "AWS_SECRET_ACCESS_KEY": "env:LAKEWARD_TEST_LAKE_SECRET",  # the worker's default
        }
    )
    sink = Sink(
        uri=f"s3://{LAKE_BUCKET}/{unique}/lake",
        storage_options={"AWS_ACCESS_KEY_ID": "env:LAKEWARD_TEST_LAKE_KEY_ID"},
    )
    monkeypatch.setenv("LAKEWARD_TEST_LAKE_SECRET", creds.secret_access_key)
    monkeypatch.setenv("LAKEWARD_TEST_LAKE_KEY_ID", creds.access_key_id)

    options = storage_options(sink, settings)
    assert options["AWS_SECRET_ACCESS_KEY"] == creds.secret_access_key
    assert options["AWS_ACCESS_KEY_ID"] == creds.access_key_id
    table = TxnTable(sink.table_uri("shop", "orders"), SCHEMA, options)
    outcome = table.merge_current_state(_rows(("a", "c", 1, 0, 1)), {APP: 0}, {APP: None})
    assert outcome.version == 1

    monkeypatch.delenv("LAKEWARD_TEST_LAKE_SECRET")
    with pytest.raises(SecretReferenceError, match="'LAKEWARD_TEST_LAKE_SECRET' is not set"):
        storage_options(sink, settings)


class _Applier:
    """Stands in for the warm applier: its batch opens a real table on the real store."""

    def __init__(self, table: TxnTable) -> None:
        self.table = table

    def apply_once(self, *_: object, **__: object) -> None:
        self.table.applied_versions([APP])


@pytest.mark.parametrize(
    ("change", "kind", "non_retryable"),
    [
        (_with(AWS_SECRET_ACCESS_KEY=WRONG_SECRET), "TableStorageError", True),
        (_with(AWS_ENDPOINT_URL="http://127.0.0.1:{port}"), "TableStorageUnavailable", False),
    ],
    ids=["wrong secret: fails the pipeline", "store down: retried"],
)
def test_apply_activities_fail_or_retry_on_a_storage_error(s3, unique, change, kind, non_retryable):
    port = _free_port()
    options = {k: v.format(port=port) for k, v in change(s3).items()}
    spec = PipelineSpec.model_validate({
        "name": f"s3-{unique}",
        "source": {"uri": "mongodb://h/?replicaSet=rs0", "database": "shop",
                   "collections": ["orders"]},
        "sink": {"uri": f"s3://{LAKE_BUCKET}/{unique}/lake"},
    })  # fmt: skip
    activities = PipelineActivities(Settings())
    applier = _Applier(TxnTable(spec.sink.table_uri("shop", "orders"), SCHEMA, options))
    activities._appliers[(spec.name, "orders")] = (threading.Lock(), applier)
    activities._dead_letter_appliers[(spec.name, DEAD_LETTER_APPLIER)] = (threading.Lock(), applier)
    env = ActivityEnvironment()
    for run in (
        lambda: env.run(activities.apply_batch, ApplyBatchInput(spec=spec, collection="orders")),
        lambda: env.run(activities.apply_dead_letters, ApplyDeadLettersInput(spec=spec)),
    ):
        with pytest.raises(ApplicationError) as info:
            run()
        assert (info.value.type, info.value.non_retryable) == (kind, non_retryable)
        assert info.value.message.startswith(f"s3://{LAKE_BUCKET}/{unique}/lake/shop/orders: ")
        # Only our message travels: the driver's text never reaches history or the logs.
        assert info.value.__cause__ is None and info.value.__suppress_context__
        assert WRONG_SECRET not in str(info.value)


def test_apply_writes_typed_columns_and_evolves_the_schema_on_s3(s3, kafka, unique) -> None:
    """The whole apply path on the object store: a new table, a new column, a widening (which
    rewrites the files), the change log, and the documents read back."""
    from bson import Int64

    from lakeward.apply import CHANGE_LOG_SCHEMA, BatchApplier, documents
    from lakeward.delta.table import CURRENT_STATE_SCHEMA, DEAD_LETTER_SCHEMA
    from lakeward.kafka.admin import ensure_topic
    from lakeward.kafka.consumer import PartitionReader
    from tests.test_apply_schema import _drain, _envelope, _publish

    topic = f"s3-apply-{unique}"
    ensure_topic(kafka.kafka_bootstrap, topic, partitions=1)
    lake = f"s3://{LAKE_BUCKET}/{unique}/lake"
    applier = BatchApplier(
        "p",
        PartitionReader(kafka.kafka_bootstrap, topic),
        TxnTable(f"{lake}/shop/orders", CURRENT_STATE_SCHEMA, s3),
        TxnTable(f"{lake}/_lakeward/dead_letters", DEAD_LETTER_SCHEMA, s3),
        change_log=TxnTable(f"{lake}/shop/orders__changes", CHANGE_LOG_SCHEMA, s3),
    )
    _publish(kafka.kafka_bootstrap, topic, [_envelope("c", 1, 1, {"n": 1})])
    _drain(applier)
    _publish(kafka.kafka_bootstrap, topic, [_envelope("c", 2, 2, {"n": Int64(2**40), "tag": "x"})])
    _drain(applier)

    rows = DeltaTable(f"{lake}/shop/orders", storage_options=s3).to_pyarrow_table()
    assert rows.schema.field("n").type == pa.int64()
    by_id = dict(zip(rows.column("_id").to_pylist(), documents(rows), strict=True))
    assert by_id == {"1": {"_id": 1, "n": Int64(1)}, "2": {"_id": 2, "n": Int64(2**40), "tag": "x"}}
    log = DeltaTable(f"{lake}/shop/orders__changes", storage_options=s3).to_pyarrow_table()
    assert log.num_rows == 2
