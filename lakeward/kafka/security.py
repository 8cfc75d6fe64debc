"""How every Kafka client of Lakeward reaches the brokers: bootstrap servers plus TLS and SASL.

`KafkaConnection` carries references, not secrets (`env:`, `file:`, `vault:` or a plain value);
`client_config` resolves them at the moment a client is built, so a rotated password is picked
up by the next client and no resolved secret is kept in an object that could be logged.
Every Kafka client in the project builds its librdkafka config here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lakeward.secrets import resolve
from lakeward.settings import Settings

__all__ = [
    "KafkaAuthenticationError",
    "KafkaConnection",
    "KafkaTarget",
    "bootstrap_of",
    "client_config",
    "kafka_connection",
]

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


def describe(target: KafkaTarget) -> str:
    return f"Kafka at {target}" if isinstance(target, str) else target.describe()


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
