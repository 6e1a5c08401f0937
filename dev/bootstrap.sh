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
# bytecode as pip does (every process imports them). It reads pip's settings from the
# environment only where they are passed on below; if it cannot run or fails, pip does the install.
UV_VERSION=0.13.10
uv_install() {
  .venv/bin/python -m pip install -q "uv==${UV_VERSION}" >/dev/null 2>&1 || return 1
  UV_LINK_MODE=copy .venv/bin/uv pip install -q --native-tls --compile-bytecode --python .venv/bin/python \
    ${PIP_INDEX_URL:+--index-url "$PIP_INDEX_URL"} ${PIP_FIND_LINKS:+--find-links "$PIP_FIND_LINKS"} \
    -e ".[${extras}]"
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
# that variable says; one that a later edit made stale is ignored, and the next run writes it again.
.venv/bin/python -m compileall -q -j 0 floodgate streams connectors schemas >/dev/null
