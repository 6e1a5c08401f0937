# The two commands a fresh machine needs (see README): `make demo` and `make test`.
.PHONY: demo test test-fast test-all lint bench chaos soak-stalls bootstrap broker-start broker-stop

# Extras installed into .venv (dev/bootstrap.sh): dev tools everywhere; matplotlib (the bench extra)
# where plots are drawn (`make bench`, the test runs that include the bench smoke test) and where
# mypy checks the code that draws them (`make lint`).
test test-all lint bench: export FLOODGATE_EXTRAS = dev,bench
# The browser tests of the pages (tests/browser/) need Debian's chromium; bootstrap installs it when missing.
test test-all: export FLOODGATE_NEED_CHROMIUM = 1

bootstrap:
	@bash dev/bootstrap.sh

demo: bootstrap
	.venv/bin/floodgate demo

# Three pytest-xdist processes, one test file each at a time (module fixtures start a stack once),
# sharing the one broker the controlling process starts. Most of a Kafka test's time is spent
# waiting for processes, renders and the broker: on two cores, two processes kept 1.43 cores busy
# and took 548 s; three kept 1.71 busy and took 465 s (2026-12-08, fresh clones). Files are handed
# out in the order tests/conftest.py gives them (those that start a stack first, the unit tier
# last), not in xdist's (the files with the most tests first).
TEST_WORKERS ?= 3
test: bootstrap
	.venv/bin/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The unit tier alone (pure rules, no broker): seconds, for the inner loop.
test-fast: bootstrap
	.venv/bin/python -m pytest -q tests/unit

test-all: bootstrap
	.venv/bin/python -m pytest -q -m "not chaos"

# The chaos suite (README, "Chaos suite"): every scenario on real processes, a report in
# chaos/results/<ts>/. CHAOS_JOBS sizes the worker-kill scenario (the others scale from it).
CHAOS_JOBS ?= 20000
chaos: export CHAOS_JOBS := $(CHAOS_JOBS)
chaos: bootstrap
	.venv/bin/python -m pytest -q -m chaos tests/chaos $(CHAOS_ARGS)

# The stall soak (README, "The stalled partition"): the backlog stop test 20 times, 4 at once on
# one broker; every run passes and the stall watchdog never fires. About 4 minutes.
soak-stalls: bootstrap
	.venv/bin/python -m pytest -q -s tests/e2e/test_stall_soak.py

# ruff and mypy, configured in pyproject.toml; seconds, no broker.
lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/mypy

bench: export FLOODGATE_NEED_NGINX = 1
bench: export FLOODGATE_NEED_REDIS = 1
bench: bootstrap
	.venv/bin/floodgate bench $(BENCH_ARGS)

broker-start: bootstrap
	.venv/bin/floodgate broker start

broker-stop: bootstrap
	.venv/bin/floodgate broker stop
