#!/usr/bin/env bash
# Install webmacs into ./.venv (only when needed) and run it on the embedded SQLite default.
#   bash scripts/serve.sh [--host 0.0.0.0] [--port 8000]
# Set WEBMACS_INITIAL_ADMIN_EMAIL / WEBMACS_INITIAL_ADMIN_PASSWORD on the first start
# to get an admin account (see README).
#
# pip runs only when ./.venv has no webmacs installed from this checkout, when setup.py is
# newer than the installed metadata (dependencies changed), or when the package does not
# import. Otherwise a restart goes straight to `webmacs serve` and needs no network.
# WEBMACS_FORCE_INSTALL=1 reinstalls anyway.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$PWD"

installed_ok() {
    [ -x .venv/bin/webmacs ] || return 1
    local meta
    meta="$(ls -d .venv/lib/python3*/site-packages/webmacs-*.dist-info 2>/dev/null | head -n1)"
    [ -n "$meta" ] && [ "$meta/METADATA" -nt setup.py ] || return 1
    # the install must be of this checkout and every requirement installed (metadata only:
    # importing the whole server here would double the start time)
    .venv/bin/python - "$repo/" <<'PY' 2>/dev/null
import re, sys
from importlib import metadata
import webmacs
assert webmacs.__file__.startswith(sys.argv[1])
for req in metadata.requires("webmacs") or []:
    if "extra ==" not in req:
        metadata.version(re.split(r"[ ;<>=!~\[]", req, maxsplit=1)[0])
PY
}

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if [ "${WEBMACS_FORCE_INSTALL:-}" = 1 ] || ! installed_ok; then
    echo "serve.sh: installing webmacs into .venv" >&2
    if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check -e .; then
        installed_ok || { echo "serve.sh: pip install failed and no usable install in .venv" >&2; exit 1; }
        echo "serve.sh: pip install failed; starting the version already installed" >&2
    fi
    touch .venv/lib/python3*/site-packages/webmacs-*.dist-info/METADATA 2>/dev/null || true
fi
exec .venv/bin/webmacs serve "$@"
