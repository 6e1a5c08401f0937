"""The reader of ``results`` for an API without a job view: each result read takes its job out of
the process's own count, by key alone (the value is never decoded), whoever accepted the job."""
from __future__ import annotations

from aiokafka import ConsumerRecord, TopicPartition

from floodgate.api.ended import EndedJobs
from floodgate.quotas import JobsByTenant


def result(key: bytes | None, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic="results", partition=0, offset=offset, timestamp=0, timestamp_type=0, key=key,
                          value=b"\xff not a snapshot", checksum=None, serialized_key_size=0,
                          serialized_value_size=0, headers=())


async def test_a_result_read_ends_its_job_in_the_count() -> None:
    jobs = JobsByTenant()
    for job_id, tenant in [("j1", "a"), ("j2", "a"), ("j3", "b")]:
        jobs.add(job_id, tenant)
    reader = EndedJobs("127.0.0.1:1", "results", 2, jobs)  # not started: no broker needed
    reader.take({TopicPartition("results", 0): [result(b"j1", 0), result(b"other", 1), result(None, 2)],
                 TopicPartition("results", 1): [result(b"j3", 0), result(b"j1", 1)]})
    assert (jobs.open_for("a"), jobs.open_for("b")) == (1, 0)
    assert reader.read == 5
