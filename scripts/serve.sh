#!/usr/bin/env bash
# Install webmacs into ./.venv and run it on the embedded SQLite default.
#   bash scripts/serve.sh [--host 0.0.0.0] [--port 8000]
# Set WEBMACS_INITIAL_ADMIN_EMAIL / WEBMACS_INITIAL_ADMIN_PASSWORD on the first start
# to get an admin account (see README).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/webmacs serve "$@"
