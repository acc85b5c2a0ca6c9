#!/usr/bin/env bash
# Prepare this machine to run webmacs under supervisor (docs/deploy.md). Idempotent:
# run it again after an upgrade; it changes only what is missing or different.
#   sudo bash scripts/install-service.sh
#
# Creates:
#   - the system user and group `webmacs` (no login shell, home = the data directory)
#   - /var/lib/webmacs   working directory (and the SQLite file, if you keep that default), 0750
#   - /var/log/webmacs   the server's log (supervisor rotates it), 0750
#   - /etc/webmacs/webmacs.env   the settings (mode 0640, root:webmacs) with a generated
#     WEBMACS_SECRET_KEY and WEBMACS_ENV=production; an existing file is never touched
#   - <checkout>/.venv with webmacs installed, if it is not there yet
#   - /etc/supervisor/conf.d/webmacs.conf from conf/supervisord.conf, paths filled in
# Then: `supervisorctl reread && supervisorctl update` starts it.
#
# Environment (defaults in brackets), e.g. for a second instance or a test:
#   SERVICE_USER [webmacs]  SERVICE_DATA_DIR [/var/lib/webmacs]  SERVICE_LOG_DIR [/var/log/webmacs]
#   SERVICE_CONF_DIR [/etc/webmacs]  SUPERVISOR_CONF_DIR [/etc/supervisor/conf.d]
#   SERVICE_PORT [8000]  (the checkout is the one this script is in)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
user="${SERVICE_USER:-webmacs}"
data="${SERVICE_DATA_DIR:-/var/lib/webmacs}"
logs="${SERVICE_LOG_DIR:-/var/log/webmacs}"
conf="${SERVICE_CONF_DIR:-/etc/webmacs}"
sup="${SUPERVISOR_CONF_DIR:-/etc/supervisor/conf.d}"
port="${SERVICE_PORT:-8000}"
say() { echo "install-service.sh: $*"; }

if [ "$(id -u)" -ne 0 ] && [ "$user" != "$(id -un)" ]; then
    say "run as root (it creates the user $user and directories in /var and /etc)" >&2
    exit 1
fi
[[ "$port" =~ ^[0-9]+$ ]] || { say "SERVICE_PORT must be a number, got '$port'" >&2; exit 1; }

# 1. the user
if ! id -u "$user" >/dev/null 2>&1; then
    useradd --system --user-group --home-dir "$data" --no-create-home --shell /usr/sbin/nologin "$user"
    say "created system user $user"
fi
group="$(id -gn "$user")"

# 2. directories the program writes to
for dir in "$data" "$logs"; do
    install -d -m 0750 -o "$user" -g "$group" "$dir"
done
install -d -m 0755 "$conf"

# 3. settings, with a secret made here once
envfile="$conf/webmacs.env"
if [ ! -f "$envfile" ]; then
    secret="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
    ( umask 077
      cat >"$envfile" <<ENV
# webmacs settings (see conf/webmacs.env.example for every variable). One VAR=value per
# line, read by /bin/sh: quote values that contain spaces.
WEBMACS_ENV=production
WEBMACS_SECRET_KEY=$secret
# Embedded SQLite by default; for TimescaleDB: postgresql://webmacs:PASSWORD@127.0.0.1:5432/webmacs
# (then run \`webmacs migrate\` before starting, and after every upgrade).
WEBMACS_DATABASE_URL=sqlite:///$data/webmacs.db
WEBMACS_SHUTDOWN_TIMEOUT=10
WEBMACS_LOG_LEVEL=INFO
ENV
    )
    say "wrote $envfile (generated WEBMACS_SECRET_KEY)"
fi
chown "root:$group" "$envfile" 2>/dev/null || true
chmod 0640 "$envfile"

# 4. the virtualenv of this checkout
if [ ! -x "$repo/.venv/bin/webmacs" ]; then
    say "creating $repo/.venv"
    python3 -m venv "$repo/.venv"
    "$repo/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$repo"
fi

# 5. the supervisor program, from conf/supervisord.conf with this machine's paths
install -d -m 0755 "$sup"
target="$sup/webmacs.conf"
new="$(sed -e "s#/opt/webmacs#$repo#g" -e "s#/var/lib/webmacs#$data#g" -e "s#/var/log/webmacs#$logs#g" \
           -e "s#/etc/webmacs#$conf#g" -e "s#^user=webmacs\$#user=$user#" -e "s#--port 8000#--port $port#" \
           "$repo/conf/supervisord.conf")"
if [ ! -f "$target" ] || [ "$(cat "$target")" != "$new" ]; then
    printf '%s\n' "$new" >"$target"
    say "wrote $target"
fi
say "ready: user $user, data $data, logs $logs, settings $envfile"
say "start or reload it with: supervisorctl reread && supervisorctl update"
