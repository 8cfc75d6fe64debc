"""Process settings, one object per process (pydantic-settings).

Every field reads from an environment variable named ``LAKEWARD_<FIELD>`` (see docs/settings.md).
Defaults are the embedded local stack's, so a fresh checkout works with no configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "StackSettings"]


class StackSettings(BaseSettings):
    """Where the local stack keeps its data and which loopback ports its servers use.

    Ports default to each server's usual one; override any of them when that port is taken.
    """

    model_config = SettingsConfigDict(env_prefix="LAKEWARD_", extra="ignore")

    stack_dir: Path = Field(Path(".lakeward/stack"), description="Data, logs and PID files.")
    lib_dir: Path = Field(
        Path(".lakeward/lib"),
        description="Jars resolved from Maven Central, shared by every stack folder.",
    )
    host: str = Field("127.0.0.1", description="Every server binds here; loopback only.")
    mongo_port: int = Field(27017, description="mongod (replica set rs0).")
    kafka_port: int = Field(9092, description="Kafka broker listener.")
    kafka_controller_port: int = Field(9093, description="Kafka KRaft controller listener.")
    temporal_port: int = Field(7233, description="Temporal frontend (gRPC).")
    temporal_ui_port: int = Field(8233, description="Temporal Web UI.")
    s3_port: int = Field(8333, description="SeaweedFS S3 API.")
    vault_port: int = Field(8200, description="OpenBao (Vault API).")
    prometheus_port: int = Field(9090, description="Prometheus.")
    connect_port: int = Field(8083, description="Kafka Connect REST API.")
    api_port: int = Field(8000, description="Lakeward API (Prometheus scrapes it).")
    worker_metrics_port: int = Field(9464, description="Worker /metrics (Prometheus scrapes it).")
    health_timeout_s: float = Field(120.0, description="How long `up` waits for each server.")

    @property
    def mongo_uri(self) -> str:
        return f"mongodb://{self.host}:{self.mongo_port}/?replicaSet=rs0"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def temporal_address(self) -> str:
        return f"{self.host}:{self.temporal_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def vault_address(self) -> str:
        return f"http://{self.host}:{self.vault_port}"


class Settings(BaseSettings):
    """Settings of a worker or API process."""

    model_config = SettingsConfigDict(env_prefix="LAKEWARD_", extra="ignore")

    temporal_address: str = Field("127.0.0.1:7233", description="Temporal frontend host:port.")
    temporal_namespace: str = Field("default", description="Temporal namespace.")
    task_queue: str = Field("lakeward", description="Workflow task queue.")
    io_task_queue: str = Field("lakeward-io", description="Capture and apply activities.")
    cpu_task_queue: str = Field(
        "lakeward-cpu", description="CPU-heavy activities (reconciliation hashing)."
    )
    io_max_concurrent: int = Field(
        16, description="Bound of the I/O activity pool (the bulkhead); capture holds one slot."
    )
    cpu_max_concurrent: int | None = Field(
        None,
        ge=1,
        description="Bound of the CPU activity pool (its own threads) and of the CPU activities "
        "a worker runs at once; unset: the machine's CPU count.",
    )
    worker_queues: str = Field(
        "workflow,io,cpu",
        description="Which task queues `lakeward worker` polls, comma-separated (workflow, io, "
        "cpu); the CPU queue is polled only while CPU activities are registered.",
    )
    worker_shutdown_grace_s: float = Field(
        60.0,
        ge=0,
        description="On SIGTERM, how long activities in flight may run before they are "
        "cancelled; the micro-batch in flight commits within it.",
    )
    # Resilience (docs/resilience.md).
    max_activities_per_pipeline: int | None = Field(
        None,
        ge=0,
        description="Per-pipeline bulkhead: activities of one pipeline a worker runs at once "
        "(the rest fail fast, retryably, and count in lakeward_bulkhead_rejections_total); "
        "unset: half of io_max_concurrent; 0: no cap.",
    )
    breaker_failure_threshold: int = Field(
        5, ge=1, description="Consecutive failures of a dependency that open its breaker."
    )
    breaker_failure_ratio: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="Share of failed calls within breaker_window_s that opens the breaker too.",
    )
    breaker_window_s: float = Field(60.0, gt=0, description="The failure-ratio window.")
    breaker_min_calls: int = Field(
        20, ge=1, description="Calls within the window before the failure ratio counts."
    )
    breaker_open_s: float = Field(
        30.0,
        gt=0,
        description="How long an open breaker fails calls fast before one probe goes through.",
    )
    mongo_min_pool_size: int = Field(
        5, ge=0, description="Connections per MongoDB host a worker keeps open (minPoolSize)."
    )
    mongo_max_pool_size: int = Field(
        50, ge=1, description="Most connections per MongoDB host of a worker (maxPoolSize)."
    )
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    topic_prefix: str = Field("lakeward", description="Topics are <prefix>.<db>.<collection>.")
    # Transport security (docs/transport-security.md); secret-valued ones take references.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How every Kafka client talks to the brokers."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism with SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user.")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password: a secret reference (env:, file:, vault:) or value."
    )
    kafka_ssl_ca_location: Path | None = Field(
        None,
        description="PEM file of the CA(s) that signed the brokers' certificates; unset: "
        "the system's trust store.",
    )
    kafka_ssl_certificate_location: Path | None = Field(
        None, description="Client certificate (PEM) when the brokers require one."
    )
    kafka_ssl_key_location: Path | None = Field(None, description="Client private key (PEM).")
    kafka_ssl_key_password: SecretStr | None = Field(
        None, description="Password of the client key: a secret reference or value."
    )
    kafka_ssl_endpoint_identification: bool = Field(
        True,
        description="Check that a broker's certificate names the host dialled; off only "
        "for certificates without the right names (a man in the middle goes unnoticed).",
    )
    mongo_tls: bool = Field(
        False, description="TLS to MongoDB for pipelines whose spec has no source.tls."
    )
    mongo_tls_ca_file: Path | None = Field(None, description="CA (PEM) of the MongoDB servers.")
    mongo_tls_certificate_key_file: Path | None = Field(
        None,
        description="Client certificate and key in one PEM file (x.509 or required "
        "client certificates).",
    )
    mongo_tls_certificate_key_password: SecretStr | None = Field(
        None, description="Password of that key: a secret reference or value."
    )
    mongo_tls_allow_invalid_hostnames: bool = Field(
        False, description="Accept a server certificate that does not name the host dialled."
    )
    temporal_tls: bool = Field(False, description="TLS to the Temporal frontend.")
    temporal_tls_ca_file: Path | None = Field(
        None, description="CA (PEM) of the Temporal frontend; unset: the system's trust store."
    )
    temporal_tls_cert_file: Path | None = Field(
        None, description="Client certificate (PEM) for mTLS."
    )
    temporal_tls_key_file: str | None = Field(
        None,
        description="Client key for mTLS: a path, or a secret reference (env:, file:, "
        "vault:) to the PEM text.",
    )
    temporal_tls_server_name: str | None = Field(
        None,
        description="Name the frontend's certificate must carry, when it differs from "
        "the host of temporal_address.",
    )
    temporal_api_key: SecretStr | None = Field(
        None, description="Temporal Cloud API key (a secret reference or value); implies TLS."
    )
    kafka_max_message_bytes: int = Field(
        1_000_000,
        description="Largest change envelope capture publishes; a larger one goes to "
        "<prefix>._dead_letters. Raising it needs the broker's and topics' max.message.bytes "
        "raised too.",
    )
    connect_url: str = Field(
        "http://127.0.0.1:8083",
        description="Kafka Connect REST URL, for pipelines with capture: debezium.",
    )
    apply_max_record_bytes: int = Field(
        16 * 1024 * 1024,
        description="A change record larger than this is dead-lettered (reason oversize) "
        "instead of applied; MongoDB's own document limit by default.",
    )
    lake_storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="deltalake storage_options for s3:// lakes (JSON), e.g. AWS_ENDPOINT_URL, "
        "AWS_REGION, AWS_ACCESS_KEY_ID; values may be secret references (env:, file:, vault:). A "
        "pipeline's sink.storage_options override these key by key.",
    )
    api_host: str = Field("127.0.0.1", description="Where the API binds.")
    api_port: int = Field(8000, description="The API's port.")
    worker_metrics_host: str = Field(
        "127.0.0.1", description="Where the worker serves /metrics; 0.0.0.0 inside a container."
    )
    worker_metrics_port: int = Field(
        9464, description="The worker's /metrics port; 0 turns it off."
    )
    worker_sdk_metrics_port: int = Field(
        0,
        description="Loopback port of Temporal's own SDK metrics endpoint, which the worker "
        "merges into its /metrics; 0: a free port chosen at start.",
    )
    traces_exporter: Literal["none", "console", "otlp"] = Field(
        "none",
        description="Where OpenTelemetry spans of workflows and activities go: none, console "
        "(stdout) or otlp (OTLP over HTTP to traces_otlp_endpoint).",
    )
    traces_otlp_endpoint: str = Field(
        "http://127.0.0.1:4318/v1/traces", description="OTLP/HTTP traces endpoint."
    )
    traces_sample_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of traces kept, decided where a trace starts (a pipeline start); "
        "children follow their parent.",
    )
    traces_rate_limit_per_s: float = Field(
        0.0,
        ge=0.0,
        description="At most this many new traces per second (after the ratio), e.g. one per "
        "capture micro-batch; 0: no limit. Children follow their parent.",
    )
    log_format: Literal["json", "console"] = Field(
        "json",
        description="Log lines: json (one object per line, for collectors) or console (for a "
        "person at a terminal); `--log-format` overrides it.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level logged; debug adds one line per committed batch."
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bootstrap admin token for the API (and the CLI), or a secret reference to "
        "it (vault:, env:, file:) resolved at each request. Unset: the API generates one into "
        "admin_token_file on first start and the CLI reads it from there.",
    )
    admin_token_file: Path = Field(
        Path(".lakeward/admin-token"),
        description="Where the generated bootstrap admin token lives (mode 0600) when "
        "LAKEWARD_ADMIN_TOKEN is unset.",
    )
    api_tokens_file: Path = Field(
        Path(".lakeward/api-tokens.json"),
        description="Named API tokens (SHA-256 hashes only, made by `lakeward token`); the API "
        "re-reads it on change, so a revoked token is refused at once.",
    )
    audit_log: Path = Field(
        Path(".lakeward/audit.log"),
        description="Append-only JSON lines, one per mutating API call (who, what, when, result).",
    )
    api_max_body_bytes: int = Field(
        1_048_576,
        ge=1,
        description="Largest request body the API reads (counted as it streams in, whatever "
        "Content-Length says); larger is a 413. A spec is a few KiB; codec bodies carry "
        "base64 payloads.",
    )
    api_rate_limit_per_s: float = Field(
        20.0,
        ge=0,
        description="Requests per second each token may send (a token bucket per token name, "
        "in each API process); over it a 429 with Retry-After. 0: no limit.",
    )
    api_rate_limit_burst: int = Field(
        100, ge=1, description="Requests a token may send at once before its rate applies."
    )
    api_anonymous_rate_limit_per_s: float = Field(
        1.0,
        ge=0,
        description="Requests per second per client address without a valid token (guessing "
        "tokens, the codec sign-in, /openapi.json); 0: no limit. Health, readiness and metrics "
        "are never limited.",
    )
    api_anonymous_rate_limit_burst: int = Field(
        10, ge=1, description="Requests without a valid token an address may send at once."
    )
    api_hsts_max_age_s: int = Field(
        0,
        ge=0,
        description="Strict-Transport-Security max-age sent on answers to https requests (behind "
        "a TLS proxy, run uvicorn with --proxy-headers); 0: no HSTS header.",
    )
    lake_root: Path | None = Field(
        None,
        description="When set, the API refuses pipelines whose local sink is outside this "
        "directory (symlinks resolved); unset: any local path. s3:// sinks are not affected.",
    )
    api_url: str | None = Field(
        None,
        description="The API address `lakeward pipeline` talks to; unset: "
        "http://<api_host>:<api_port>.",
    )
    api_token: SecretStr | None = Field(
        None,
        description="Token `lakeward pipeline` sends; unset: LAKEWARD_ADMIN_TOKEN, then the "
        "admin_token_file.",
    )
    payload_key: SecretStr | None = Field(
        None,
        description="The AES-256 key that encrypts Temporal payloads: base64 of 32 bytes, or a "
        "secret reference to it (env:VAR, file:/path). Unset: a key generated once into "
        "payload_key_file. Every worker and API process must have the same one.",
    )
    payload_previous_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Older payload keys (JSON list, same forms as payload_key) kept for "
        "decrypting histories written before a rotation; never used to encrypt.",
    )
    payload_key_file: Path = Field(
        Path(".lakeward/payload.key"),
        description="Where the embedded default keeps its generated payload key (mode 0600) "
        "when payload_key is unset.",
    )
    # Vault / OpenBao (docs/secrets.md).
    vault_address: str = Field(
        "http://127.0.0.1:8200", description="Vault or OpenBao address that vault: references read."
    )
    vault_token: SecretStr | None = Field(
        None,
        description="Vault token, or a reference to it (env:VAR, file:/path); unset: AppRole "
        "(vault_role_id and vault_secret_id), else the local stack's OpenBao root token file.",
    )
    vault_role_id: str | None = Field(None, description="AppRole role id (with vault_secret_id).")
    vault_secret_id: SecretStr | None = Field(
        None, description="AppRole secret id, or a reference to it (env:VAR, file:/path)."
    )
    vault_approle_mount: str = Field("approle", description="Where the AppRole method is mounted.")
    vault_ca_file: Path | None = Field(
        None, description="CA bundle that signs Vault's certificate (https); unset: system CAs."
    )
    vault_timeout_s: float = Field(10.0, gt=0, description="Timeout of one Vault request.")
    vault_kv_cache_s: float = Field(
        5.0,
        ge=0,
        description="How long a KV v2 secret read is reused; a new version is seen at most this "
        "late. 0: every resolution reads Vault.",
    )
    vault_lease_renew_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Dynamic credentials are renewed once this share of their lease TTL has "
        "passed; at their max_ttl they are replaced before they expire.",
    )
    credentials_check_s: float = Field(
        5.0,
        gt=0,
        description="How often capture re-resolves its source credentials; when they changed "
        "(new KV version, new dynamic credentials) it reconnects from its checkpoint.",
    )
    credentials_rotation_grace_s: float = Field(
        30.0,
        ge=0,
        description="When MongoDB refuses capture's credentials (a rotation half done: the user "
        "changed before the secret), how long capture waits for new ones before it fails.",
    )
    codec_cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins (the Temporal Web UI) allowed to call the API's codec "
        "endpoint (JSON list); empty: no CORS at all. `lakeward demo` sets the local stack's.",
    )
