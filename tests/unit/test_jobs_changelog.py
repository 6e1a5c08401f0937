"""The jobs table's changelog (the compacted ``notifications`` topic) as the worker's consumer sees it.

The worker reads the changelog only to recover the table; no stream of the worker reads it. Faust's
livelock monitor takes a topic whose records are acknowledged by a stream and which no stream has
read for ``stream_processing_timeout`` as a stalled agent, and logs it at ERROR every few seconds
once the worker has run that long with its own writes ahead of the changelog's position. So the
topic must be one whose records nothing acknowledges, as Faust's own changelog topics are."""
from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from tests.unit.test_jobs_agent import TOPICS, new_desk


async def test_the_worker_acknowledges_the_streams_it_reads_and_not_the_tables_changelog(tmp_path: Path) -> None:
    desk = new_desk(tmp_path)
    app = desk.pipe.app
    conductor, tables = cast(Any, app.topics), cast(Any, app.tables)  # the concrete classes' methods
    try:
        changelog = desk.table.changelog_topic
        assert changelog.get_topic_name() == TOPICS.notifications
        # What the table manager does when the worker starts: the changelog joins the consumer's
        # topics through the table manager's queue, beside the agents' streams.
        conductor.add(changelog.clone_using_queue(tables.changelog_queue))
        conductor.add(desk.source)
        await conductor._update_indices()

        assert not app.topics.acks_enabled_for(TOPICS.notifications)
        for read in (TOPICS.requests, TOPICS.webhooks, TOPICS.events):
            assert app.topics.acks_enabled_for(read)
    finally:
        await desk.pipe.close()
