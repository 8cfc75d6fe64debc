"""Which Kafka errors mean "the brokers did not answer" (a circuit breaker's and a retry's
business) rather than a refusal retrying cannot change (fenced, a fatal producer, bad config)."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from lakeward.kafka.consumer import KafkaReadError
from lakeward.kafka.producer import PublishError

__all__ = ["is_unavailable"]

#: librdkafka's local codes for a cluster that cannot be reached or did not answer in time.
_UNAVAILABLE_CODES = {
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TIMED_OUT,
    KafkaError._MSG_TIMED_OUT,
    KafkaError._RESOLVE,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
}


def is_unavailable(exc: BaseException) -> bool:
    """True for a broker that is down, restarting or too slow; False for fenced producers and
    fatal errors, which a newer attempt or an operator must handle."""
    if isinstance(exc, KafkaException):
        error = exc.args[0] if exc.args else None
        if not isinstance(error, KafkaError) or error.fatal():
            return False
        return error.code() in _UNAVAILABLE_CODES or error.retriable()
    # Lakeward's own wrappers: transient by contract; their cause, when they have one, says
    # more (caused_by() walks to it first only if this returns False, so check it here).
    if isinstance(exc, PublishError | KafkaReadError):
        cause = exc.__cause__
        return is_unavailable(cause) if isinstance(cause, KafkaException) else True
    return False
