"""What a call reports for the records it could not deliver: a librdkafka delivery report as a
:class:`DeliveryError`, and the error (or :class:`BatchDeliveryError`) a call raises, naming each
record's job id."""
from __future__ import annotations

from confluent_kafka import KafkaError

from floodgate.errors import BatchDeliveryError, DeliveryError
from floodgate.fatal_errors import is_fatal

# librdkafka sets ``retriable()`` on few delivery reports; these codes mean "the same record may
# succeed later" (timeouts, leadership moves, a topic not created yet), so say so to the caller.
_TRANSIENT = frozenset(
    getattr(KafkaError, name) for name in (
        "_MSG_TIMED_OUT", "_TIMED_OUT", "_TRANSPORT", "_ALL_BROKERS_DOWN", "_UNKNOWN_TOPIC", "UNKNOWN_TOPIC_OR_PART",
        "LEADER_NOT_AVAILABLE", "NOT_LEADER_FOR_PARTITION", "NOT_LEADER_OR_FOLLOWER", "REQUEST_TIMED_OUT",
        "NOT_ENOUGH_REPLICAS", "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "_QUEUE_FULL",
    ) if hasattr(KafkaError, name)
)

RETRY_ADVICE = "resubmit with the same idempotency_key: the pipeline drops a second record with the same job id"


def kafka_error(err: KafkaError, fatal: KafkaError | None) -> DeliveryError:
    """A delivery report's error; ``fatal``: what broke the producer meanwhile, if anything."""
    code = err.code()
    if code == KafkaError._PURGE_QUEUE:  # still queued, never in a request
        cause = f"its producer failed for good ({fatal.str()})" if fatal is not None else "purged from the queue"
        return DeliveryError(f"not sent: {cause}", retriable=True)
    if code == KafkaError._PURGE_INFLIGHT:
        return DeliveryError(f"outcome unknown: purged while its request was in flight; {RETRY_ADVICE}",
                             retriable=True)
    if is_fatal(err):
        return DeliveryError(f"its producer failed for good: {err.str()}; the next call uses a new producer",
                             retriable=True)
    return DeliveryError(f"broker did not accept the record: {err.str()}",
                         retriable=err.retriable() or code in _TRANSIENT)


def raise_failures(failures: dict[int, DeliveryError], job_ids: list[str]) -> None:
    """Raise what a call ends with if any record failed. Each failure carries its record's
    ``job_id``, so that a caller can look for that job or resubmit it with its idempotency key."""
    if not failures:
        return
    for index, error in failures.items():
        error.job_id = job_ids[index]
    if len(job_ids) == 1:
        raise failures[0]
    raise BatchDeliveryError(job_ids, failures)

