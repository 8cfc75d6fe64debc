"""The pipeline spec: what users write is validated with clear, field-level errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from workflows.spec import PipelineSpec

MINIMAL = {
    "name": "orders",
    "source": {
        "uri": "mongodb://127.0.0.1:27017/?replicaSet=rs0",
        "database": "shop",
        "collections": ["orders"],
    },
}


def _spec(**changes: object) -> PipelineSpec:
    return PipelineSpec.model_validate({**MINIMAL, **changes})


def test_minimal_spec_gets_documented_defaults() -> None:
    spec = _spec()
    assert spec.workflow_id == "pipeline:orders"
    assert spec.source.capture.value == "change_stream"
    assert spec.batching.max_records == 1000
    assert spec.batching.max_wait_ms == 100
    assert spec.sink.uri == ".lakeward/lake"


def test_tables_map_each_collection_to_its_delta_uri(tmp_path: Path) -> None:
    spec = _spec(source={**MINIMAL["source"], "collections": ["orders", "users"]})
    spec = spec.with_absolute_sink(tmp_path)
    assert spec.tables() == {
        "shop.orders": f"{tmp_path.resolve()}/.lakeward/lake/shop/orders",
        "shop.users": f"{tmp_path.resolve()}/.lakeward/lake/shop/users",
    }
    s3 = _spec(sink={"uri": "s3://bucket/lake/"})
    assert s3.tables() == {"shop.orders": "s3://bucket/lake/shop/orders"}


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"name": "Orders!"}, "name", "lowercase letters"),
        ({"name": "x" * 64}, "name", "1-63"),
        ({"surprise": 1}, "surprise", "Extra inputs"),
        (
            {"source": {**MINIMAL["source"], "uri": "mongodb://u:hunter2@h/"}},
            "source.uri",
            "password",
        ),
        ({"source": {**MINIMAL["source"], "uri": "http://h"}}, "source.uri", "mongodb://"),
        (
            {"source": {**MINIMAL["source"], "collections": ["a", "a"]}},
            "source.collections",
            "twice",
        ),
        ({"sink": {"uri": "../../etc"}}, "sink.uri", ".."),
        ({"sink": {"uri": "ftp://x/y"}}, "sink.uri", "s3://"),
        ({"batching": {"max_records": 0}}, "batching.max_records", "greater than"),
    ],
)
def test_bad_spec_names_the_field_and_the_fix(changes, field, fragment) -> None:
    with pytest.raises(ValidationError) as caught:
        _spec(**changes)
    errors = caught.value.errors()
    assert any(".".join(map(str, e["loc"])) == field and fragment in e["msg"] for e in errors), (
        errors
    )
