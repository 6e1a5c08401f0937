"""``make chaos``: Floodgate's promises checked under faults on real processes.

``checker`` (pure) turns a run's history into the report's figures; ``observe`` records that
history (the client's 202s and final GETs, the topics, the simulator's provider jobs);
``scenarios`` starts the stack, drives the load and injects each fault; ``report`` writes
``chaos/results/<ts>/report.md`` and ``results.json``.
"""
