#!/usr/bin/env bash
# Make this machine ready for Floodgate: system tools from Debian's packages (only when missing),
# a virtualenv in .venv with the package and its extras (FLOODGATE_EXTRAS, default "dev"; the Makefile
# adds "bench" where matplotlib is needed). Safe to run again; fast when done.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
command -v kcat >/dev/null 2>&1 || need_apt+=(kcat)
if [ "${FLOODGATE_NEED_NGINX:-0}" = 1 ] && ! command -v nginx >/dev/null 2>&1; then need_apt+=(nginx-light); fi
# The bench's Celery peer (floodgate/bench/celerypeer.py) uses Redis as its broker.
if [ "${FLOODGATE_NEED_REDIS:-0}" = 1 ] && ! command -v redis-server >/dev/null 2>&1; then need_apt+=(redis-server); fi
# The pages' browser tests drive Debian's chromium through Playwright (never a browser of its own).
if [ "${FLOODGATE_NEED_CHROMIUM:-0}" = 1 ] && ! command -v chromium >/dev/null 2>&1; then need_apt+=(chromium); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing ${need_apt[*]} from Debian's packages" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "bootstrap: missing ${need_apt[*]}; install them (Debian: apt-get install ${need_apt[*]})," >&2
    echo "           or run Kafka with Docker (docker compose up -d kafka) and set FLOODGATE_KAFKA_BOOTSTRAP." >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
extras=${FLOODGATE_EXTRAS:-dev}
stamp=".venv/.floodgate-installed-${extras//,/-}"  # one stamp per set of extras
# uv installs the same pinned set as pip in about a quarter of the time on a fresh machine (it
# fetches and unpacks in parallel: 26 s against 95 s here), and compiles the installed packages'
# bytecode as pip does (every process imports them). uv reads none of pip's settings: the index,
# the find-links and the certificate file are passed on below (with the platform's certificate
# store). If uv cannot be installed, or its install fails, pip does the install.
UV_VERSION=0.13.10
uv_install() {
  .venv/bin/python -m pip install -q "uv==${UV_VERSION}" >/dev/null 2>&1 || return 1
  local args=(-q --system-certs --compile-bytecode --python .venv/bin/python)
  if [ -n "${PIP_INDEX_URL:-}" ]; then args+=(--index-url "$PIP_INDEX_URL"); fi
  local links
  for links in ${PIP_FIND_LINKS:-}; do args+=(--find-links "$links"); done  # pip: whitespace-separated
  local env=(UV_LINK_MODE=copy)
  if [ -z "${SSL_CERT_FILE:-}" ] && [ -n "${PIP_CERT:-}" ]; then env+=(SSL_CERT_FILE="$PIP_CERT"); fi
  env "${env[@]}" .venv/bin/uv pip install "${args[@]}" -e ".[${extras}]"
}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  if ! uv_install; then
    echo "bootstrap: uv could not install; pip does" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".[${extras}]"
  fi
  touch "$stamp"
fi
# Floodgate's own modules are installed editable, so nothing compiled them; where the environment
# sets PYTHONDONTWRITEBYTECODE, every process would compile them anew (a test run starts a few
# hundred: workers, APIs, simulators, CLI calls). Python reads bytecode written here whatever
# that variable says; one that a later edit made stale is ignored, and the next run writes it
# again (quickly: only what changed). A file that does not compile is reported and left to the
# tests and the linters to name; it does not stop the command.
.venv/bin/python -m compileall -q -j 0 floodgate streams connectors schemas \
  || echo "bootstrap: some modules did not compile (above); continuing" >&2
