#!/usr/bin/env bash
# Install everything the test suite needs, start the TimescaleDB cluster, run the tests.
#   bash scripts/test.sh [pytest args]
# Installs (idempotent): Debian's chromium (browser tests), supervisor and nginx (tests of
# conf/), PostgreSQL 15 + TimescaleDB (scripts/timescaledb.sh), a ./.venv with webmacs and
# its test extras. Leaves only the TimescaleDB cluster running, and says how to stop it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive

if ! command -v chromium >/dev/null 2>&1; then
    echo "test.sh: installing chromium" >&2
    apt-get update -qq >&2
    apt-get install -y -qq chromium >&2
fi

# supervisor and nginx: tests/test_deploy.py runs conf/ with the real programs, each as
# a process of its own. Debian starts a package's service when it is installed; stop and
# disable those we installed here, so the suite leaves nothing running on ports 80/9001.
missing=()
for pkg in supervisor nginx; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test.sh: installing ${missing[*]}" >&2
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    for pkg in "${missing[@]}"; do
        if [ -d /run/systemd/system ]; then
            systemctl disable --now "$pkg" >&2 2>&1 || true
        else
            service "$pkg" stop >/dev/null 2>&1 || true
        fi
    done
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

was_running=0
bash scripts/timescaledb.sh status >/dev/null 2>&1 && was_running=1
url="$(bash scripts/timescaledb.sh)"
export WEBMACS_TEST_PG_URL="${url%/*}/webmacs_test"
echo "test.sh: TimescaleDB at ${url%/*}" >&2
# Every other process the tests start, they stop. The cluster is kept for the next run;
# said here, before pytest, so that pytest's summary stays the last line.
if [ "$was_running" -eq 0 ]; then
    echo "test.sh: the TimescaleDB cluster started now keeps running after the tests; stop it with: bash scripts/timescaledb.sh stop" >&2
else
    echo "test.sh: the TimescaleDB cluster was already running and keeps running (stop: bash scripts/timescaledb.sh stop)" >&2
fi

exec .venv/bin/python -m pytest "$@"
