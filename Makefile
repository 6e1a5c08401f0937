# The two commands a fresh machine needs (see README): `make demo` and `make test`.
.PHONY: demo test test-all lint bench bootstrap broker-start broker-stop

bootstrap:
	@bash dev/bootstrap.sh

demo: bootstrap
	.venv/bin/floodgate demo

test: bootstrap
	.venv/bin/python -m pytest -q -m "not slow"

test-all: bootstrap
	.venv/bin/python -m pytest -q

# ruff and mypy, configured in pyproject.toml; seconds, no broker.
lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/mypy

bench: export FLOODGATE_NEED_NGINX = 1
bench: bootstrap
	.venv/bin/floodgate bench $(BENCH_ARGS)

broker-start: bootstrap
	.venv/bin/floodgate broker start

broker-stop: bootstrap
	.venv/bin/floodgate broker stop
