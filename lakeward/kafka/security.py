"""How every Kafka client of Lakeward reaches the brokers: bootstrap servers plus TLS and SASL.

`KafkaConnection` carries references, not secrets (`env:`, `file:`, `vault:` or a plain value);
`client_config` resolves them at the moment a client is built, so a rotated password is picked
up by the next client and no resolved secret is kept in an object that could be logged.
Every Kafka client in the project builds its librdkafka config here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from lakeward.secrets import resolve
from lakeward.settings import Settings

__all__ = [
    "KafkaAuthenticationError",
    "KafkaConnection",
    "KafkaTarget",
    "bootstrap_of",
    "client_config",
    "kafka_connection",
    "raise_if_refused",
]

_log = logging.getLogger(__name__)

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


class KafkaAuthenticationError(RuntimeError):
    """The brokers refused the credentials or the TLS handshake; the message names the setting
    to fix, never a secret."""


@dataclass(frozen=True)
class KafkaConnection:
    """Bootstrap servers and security options; secret fields hold references (never shown)."""

    bootstrap: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    ssl_endpoint_identification: bool = True

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol.endswith("SSL")

    def describe(self) -> str:
        """What an error may say about this connection: servers, protocol, user; no secret."""
        who = f", user {self.sasl_username!r} ({self.sasl_mechanism})" if self.uses_sasl else ""
        return f"Kafka at {self.bootstrap} ({self.security_protocol}{who})"


#: What the Kafka modules accept: a bare bootstrap string (PLAINTEXT) or a full connection.
KafkaTarget = str | KafkaConnection


def kafka_connection(settings: Settings) -> KafkaConnection:
    """The process's Kafka connection from its settings (references stay unresolved)."""

    def secret(value: Any) -> str | None:
        return None if value is None else value.get_secret_value()

    def path(value: Any) -> str | None:
        return None if value is None else str(value)

    return KafkaConnection(
        bootstrap=settings.kafka_bootstrap,
        security_protocol=settings.kafka_security_protocol,
        sasl_mechanism=settings.kafka_sasl_mechanism,
        sasl_username=settings.kafka_sasl_username,
        sasl_password=secret(settings.kafka_sasl_password),
        ssl_ca_location=path(settings.kafka_ssl_ca_location),
        ssl_certificate_location=path(settings.kafka_ssl_certificate_location),
        ssl_key_location=path(settings.kafka_ssl_key_location),
        ssl_key_password=secret(settings.kafka_ssl_key_password),
        ssl_endpoint_identification=settings.kafka_ssl_endpoint_identification,
    )


def bootstrap_of(target: KafkaTarget) -> str:
    return target if isinstance(target, str) else target.bootstrap


def client_config(target: KafkaTarget) -> dict[str, Any]:
    """librdkafka settings that reach the brokers (bootstrap, TLS, SASL), secrets resolved.

    The result holds secrets: pass it to a client and drop it; never log it.
    Raises SecretReferenceError naming a reference that cannot be resolved.
    """
    if isinstance(target, str):
        return {"bootstrap.servers": target}
    config: dict[str, Any] = {
        "bootstrap.servers": target.bootstrap,
        "security.protocol": target.security_protocol,
    }
    if target.uses_sasl:
        if not target.sasl_username or target.sasl_password is None:
            raise KafkaAuthenticationError(
                f"security protocol {target.security_protocol} needs a SASL user and password: "
                "set LAKEWARD_KAFKA_SASL_USERNAME and LAKEWARD_KAFKA_SASL_PASSWORD"
            )
        config["sasl.mechanism"] = target.sasl_mechanism
        config["sasl.username"] = target.sasl_username
        config["sasl.password"] = resolve(target.sasl_password)
    if target.uses_tls:
        optional = {
            "ssl.ca.location": target.ssl_ca_location,
            "ssl.certificate.location": target.ssl_certificate_location,
            "ssl.key.location": target.ssl_key_location,
        }
        config.update({k: v for k, v in optional.items() if v})
        if target.ssl_key_password is not None:
            config["ssl.key.password"] = resolve(target.ssl_key_password)
        config["ssl.endpoint.identification.algorithm"] = (
            "https" if target.ssl_endpoint_identification else "none"
        )
    return config


#: librdkafka's codes for "the broker will not let this client in": retrying the same
#: credentials or trust store cannot help, so they end a call at once instead of at its timeout.
_REFUSALS = {KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED}


def _fix_for(target: KafkaConnection, error: KafkaError) -> str:
    if error.code() == KafkaError._SSL:
        return (
            "check LAKEWARD_KAFKA_SSL_CA_LOCATION (the CA that signed the brokers' certificates), "
            "the client certificate and key, and that the bootstrap host is named on the "
            "broker's certificate"
        )
    return (
        f"check LAKEWARD_KAFKA_SASL_USERNAME, LAKEWARD_KAFKA_SASL_PASSWORD (or the secret it "
        f"refers to) and LAKEWARD_KAFKA_SASL_MECHANISM ({target.sasl_mechanism})"
    )


def raise_if_refused(target: KafkaTarget, timeout_s: float = 10.0) -> None:
    """Fail fast with KafkaAuthenticationError when the brokers refuse this connection's
    credentials or TLS handshake (librdkafka itself retries those until a call's timeout,
    reporting only a transport failure). A plain bootstrap string needs no check.

    Returns when the cluster answers, or after `timeout_s` without an answer (an unreachable
    cluster is the caller's ordinary transient error, not a refusal).
    """
    if isinstance(target, str) or target.security_protocol == "PLAINTEXT":
        return
    refused: list[KafkaError] = []

    def on_error(error: KafkaError) -> None:
        if error.code() in _REFUSALS:
            refused.append(error)

    admin = AdminClient(
        {
            **client_config(target),
            "error_cb": on_error,  # type: ignore[dict-item]  # the client takes a callable here
            "logger": _log,  # type: ignore[dict-item]  # librdkafka's lines go to logging
        }
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=0.5)
            return
        except KafkaException:
            admin.poll(0.1)  # serves error_cb
        if refused:
            # librdkafka's text names the mechanism and the failing step, never the secret.
            raise KafkaAuthenticationError(
                f"{target.describe()} refused the connection: {refused[0].str()}; "
                f"{_fix_for(target, refused[0])}"
            )
