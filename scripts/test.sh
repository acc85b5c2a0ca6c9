#!/usr/bin/env bash
# Install everything the test suite needs, start the TimescaleDB cluster, run the tests.
#   bash scripts/test.sh [pytest args]
# Installs (idempotent): Debian's chromium (browser tests), PostgreSQL 15 + TimescaleDB
# (scripts/timescaledb.sh), a ./.venv with webmacs and its test extras.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive

if ! command -v chromium >/dev/null 2>&1; then
    echo "test.sh: installing chromium" >&2
    apt-get update -qq >&2
    apt-get install -y -qq chromium >&2
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

url="$(bash scripts/timescaledb.sh)"
export WEBMACS_TEST_PG_URL="${url%/*}/webmacs_test"
echo "test.sh: TimescaleDB at ${url%/*}" >&2

exec .venv/bin/python -m pytest "$@"
