"""The `debezium` capture strategy: a Debezium MongoDB connector in Kafka Connect, configured
from the pipeline spec and supervised by Lakeward (see docs/debezium.md)."""

from lakeward.debezium.capture import (
    DebeziumCapture,
    DebeziumProgress,
    delete_connector,
    resume_token_cluster_time,
)
from lakeward.debezium.config import (
    CLUSTER_TIME_STAGE,
    DEBEZIUM_MONGODB_CONNECTOR,
    MANAGED_KEYS,
    DebeziumOptions,
    collection_include_list,
    connector_config,
    connector_name,
)
from lakeward.debezium.connect import ConnectClient, ConnectorStatus, TaskStatus
from lakeward.debezium.errors import (
    ConnectorConfigError,
    ConnectorFailedError,
    ConnectRequestError,
    ConnectUnavailableError,
    DebeziumError,
    Redactor,
    SourceUnreachableError,
)

__all__ = [
    "CLUSTER_TIME_STAGE",
    "DEBEZIUM_MONGODB_CONNECTOR",
    "MANAGED_KEYS",
    "ConnectClient",
    "ConnectRequestError",
    "ConnectUnavailableError",
    "ConnectorConfigError",
    "ConnectorFailedError",
    "ConnectorStatus",
    "DebeziumCapture",
    "DebeziumError",
    "DebeziumOptions",
    "DebeziumProgress",
    "Redactor",
    "SourceUnreachableError",
    "TaskStatus",
    "collection_include_list",
    "connector_config",
    "connector_name",
    "delete_connector",
    "resume_token_cluster_time",
]
