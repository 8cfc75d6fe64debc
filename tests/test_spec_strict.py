"""Strict spec validation: unknown fields at every level, names, URIs without credentials, sink
paths that cannot climb out of their directory; each refusal names the field and the fix."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from activities.discovery import _nameable
from lakeward.spec_file import SpecFileError, load_spec_text
from workflows.spec import PipelineSpec

SOURCE = {"uri": "mongodb://127.0.0.1:27017/?replicaSet=rs0", "database": "shop",
          "collections": ["orders"]}  # fmt: skip


def _spec(**changes: Any) -> dict[str, Any]:
    return {"name": "orders", "source": dict(SOURCE), **changes}


def _errors(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        PipelineSpec.model_validate(document)
    return {".".join(map(str, e["loc"])): e["msg"] for e in caught.value.errors()}


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ("", "surprise"),
        ("source", "surprise"),
        ("sink", "surprise"),
        ("batching", "max_recrods"),
        ("snapshot", "paralelism"),
        ("maintenance", "surprise"),
        ("reconcile", "scheduel"),
    ],
)
def test_unknown_fields_are_refused_at_every_level(section: str, field: str) -> None:
    document = _spec()
    target = document if not section else document.setdefault(section, {})
    target[field] = 1
    where = f"{section}.{field}" if section else field
    assert "Extra inputs are not permitted" in _errors(document)[where]


@pytest.mark.parametrize(
    ("changes", "field", "fix"),
    [
        ({"name": "Orders"}, "name", "lowercase letters"),
        ({"name": "-orders"}, "name", "starting and ending"),
        ({"name": "a" * 64}, "name", "1-63"),
        ({"source": {**SOURCE, "database": "shop.eu"}}, "source.database", "Kafka topic"),
        ({"source": {**SOURCE, "database": "a/b"}}, "source.database", "Kafka topic"),
        ({"source": {**SOURCE, "database": "sh\x00p"}}, "source.database", "Kafka topic"),
        ({"source": {**SOURCE, "collections": [".."]}}, "source.collections", "lake directories"),
        ({"source": {**SOURCE, "collections": ["a/../b"]}}, "source.collections", "ASCII"),
        ({"source": {**SOURCE, "collections": ["orders\n"]}}, "source.collections", "ASCII"),
        ({"source": {**SOURCE, "collections": ["system.views"]}}, "source.collections",
         "system"),
        ({"source": {**SOURCE, "collections": ["a$b"]}}, "source.collections", "ASCII"),
    ],
)  # fmt: skip
def test_names_that_cannot_be_topics_or_directories_are_refused(
    changes: dict[str, Any], field: str, fix: str
) -> None:
    assert fix in _errors(_spec(**changes))[field]


@pytest.mark.parametrize(
    ("uri", "fix"),
    [
        ("mongodb://u:hunter2@h/", "reference it"),
        ("mongodb://u:hunter2@h1:1,h2:2/?replicaSet=rs0", "reference it"),
        ("mongodb://u:%68unter2@h/", "reference it"),
        ("mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:x",
         "carries a credential"),
        ("mongodb://h/?tls=true&tlsCertificateKeyFilePassword=hunter2", "carries a credential"),
        ("mongodb://", "names no host"),
        ("mongodb://h1,,h2/", "names no host"),
        ("mongodb:///db", "names no host"),
        ("http://h/", "mongodb://"),
        ("mongodb://h /", "whitespace"),
        ("env:", "environment variable"),
        ("env:MONGO URI", "environment variable"),
        ("file:relative/path", "absolute path"),
        ("vault:secret", "vault:<mount>/<path>#<key>"),
        ("vault:secret/mongo", "vault:<mount>/<path>#<key>"),
    ],
)  # fmt: skip
def test_source_uris_need_a_host_and_hold_no_credential(uri: str, fix: str) -> None:
    errors = _errors(_spec(source={**SOURCE, "uri": uri}))
    assert fix in errors["source.uri"]
    assert "hunter2" not in str(errors)


@pytest.mark.parametrize(
    "uri",
    [
        "mongodb://127.0.0.1:27017/?replicaSet=rs0",
        "mongodb://h1:1,h2:2/shop?replicaSet=rs0&tls=true",
        "mongodb+srv://cluster0.example.net/",
        "mongodb://CN=lakeward@h/?authMechanism=MONGODB-X509",  # a user name alone is no secret
        "env:MONGO_URI",
        "file:/run/secrets/mongo-uri",
        "vault:secret/lakeward/mongo#uri",
    ],
)
def test_good_source_uris_pass(uri: str) -> None:
    assert PipelineSpec.model_validate(_spec(source={**SOURCE, "uri": uri})).source.uri == uri


@pytest.mark.parametrize(
    ("uri", "fix"),
    [
        ("../../etc", "'..'"),
        ("/srv/lake/../../etc", "'..'"),
        ("file:///srv/lake/..", "'..'"),
        ("/srv/lake/%2e%2e/etc", "percent-encoded"),
        ("file:///srv/lake/%2E%2E/etc", "percent-encoded"),
        ("/srv/lake/%252e%252e", "percent-encoded"),
        ("s3://bucket/%2fetc", "percent-encoded"),
        ("/srv/lake\\..\\etc", "backslash"),
        ("/srv/lake\x00/etc", "control character"),
        ("/srv/lake\n", "control character"),
        ("s3:///prefix", "names its bucket"),
        ("s3://key:secret@bucket/prefix", "names its bucket"),
        ("file://otherhost/srv/lake", "file:///absolute/path"),
        ("/srv/lake?x=1", "no query string"),
        ("ftp://h/lake", "s3://bucket/prefix"),
        ("", "is empty"),
    ],
)
def test_sink_paths_cannot_leave_the_lake(uri: str, fix: str) -> None:
    assert fix in _errors(_spec(sink={"uri": uri}))["sink.uri"]


@pytest.mark.parametrize(
    "uri", ["./.lakeward/lake", "/srv/lake/a..b", "file:///srv/lake", "s3://lake/prefix/x"]
)
def test_good_sink_paths_pass(uri: str) -> None:
    PipelineSpec.model_validate(_spec(sink={"uri": uri}))


@pytest.mark.parametrize(
    ("options", "fix"),
    [
        ({"AWS_SECRET_ACCESS_KEY": "hunter2"}, "must be a secret reference"),
        ({"aws_session_token": "hunter2"}, "must be a secret reference"),
        ({"azure_storage_account_key": "hunter2"}, "must be a secret reference"),
        ({"AWS_ENDPOINT_URL": "http://user:hunter2@minio:9000"}, "URL with a password"),
        ({"AWS_SECRET_ACCESS_KEY": "env:not a name"}, "environment variable"),
    ],
)
def test_storage_options_hold_credentials_only_as_references(
    options: dict[str, str], fix: str
) -> None:
    errors = _errors(_spec(sink={"uri": "s3://lake", "storage_options": options}))
    assert fix in errors["sink.storage_options"]
    assert "hunter2" not in str(errors)


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        ("name: orders\nsource: {uri: 'env:U', database: shop, collections: [2024-01-01]}",
         "as a date"),
        ("name: !!binary aGk=", "bytes value is not allowed"),
        ("name: .nan", "not a number JSON can carry"),
        ("1: orders", "not a string"),
        ("a: &x [1, 2]\nb: *x\nc: [*x, *x, *x", "not valid YAML"),
        ("%YAML 1.1\n%YAML 1.1\n---\na: 1", "not valid YAML"),
    ],
)  # fmt: skip
def test_the_cli_refuses_yaml_that_is_not_plain_json_values(text: str, fix: str) -> None:
    with pytest.raises(SpecFileError, match=fix):
        load_spec_text(text)


def test_yaml_anchors_cannot_expand_without_bound() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    with pytest.raises(SpecFileError, match="more than"):
        load_spec_text("\n".join(lines))


def test_discovery_leaves_out_collections_a_spec_could_not_name() -> None:
    names = ["orders", "../../etc", "a b", "orders.archive", "..", "caf\u00e9"]
    assert _nameable(names, "shop") == ["orders", "orders.archive"]
