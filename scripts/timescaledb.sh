#!/usr/bin/env bash
# scripts/timescaledb.sh — provision a project-local PostgreSQL 15 + TimescaleDB
# cluster for webmacs (development, tests and CI).
#
# Usage:
#   scripts/timescaledb.sh          install/build/init/start as needed, then print the URL
#   scripts/timescaledb.sh start    same as above
#   scripts/timescaledb.sh url      only print the URL
#   scripts/timescaledb.sh stop     stop the cluster (if running)
#   scripts/timescaledb.sh status   exit 0 if the cluster is running
#
# stdout gets exactly one line (the URL) for start/url; all progress goes to stderr,
# so `export WEBMACS_DATABASE_URL="$(scripts/timescaledb.sh)"` works.
#
# Environment:
#   WEBMACS_PGDATA      data directory      (default: <repo>/.pgdata, see fallback below)
#   WEBMACS_PGPORT      TCP port            (default: 54329; never the system 5432)
#   WEBMACS_BUILD_DIR   TimescaleDB build   (default: /tmp/webmacs-timescaledb-build)
#
# Steps (each one skipped when already done, so a second run takes a second or two):
#   1. apt-get install postgresql-15, postgresql-server-dev-15, cmake, build-essential,
#      dpkg-dev (apt-get update runs at most once, and only when something is missing).
#   2. If timescaledb.control is not in PostgreSQL 15's extension dir: fetch Debian
#      trixie's `timescaledb` *source* package (deb-src only, using the same mirror URI
#      this machine's apt already uses — no registry host is hard-coded here), build the
#      Apache-2 edition with cmake against PG 15 and `make install` it.
#   3. initdb (as user postgres when run as root) with timescaledb preloaded.
#   4. Start it, create role/password webmacs, databases webmacs and webmacs_test
#      (owner webmacs) and CREATE EXTENSION timescaledb in both as superuser.
set -euo pipefail

# All progress output goes to stderr; fd 3 is the real stdout for the final URL.
exec 3>&1 1>&2

die() { echo "timescaledb.sh: ERROR: $*" >&2; trap - EXIT; exit 1; }
log() { echo "timescaledb.sh: $*" >&2; }
# shellcheck disable=SC2154  # rc is assigned inside the trap string
trap 'rc=$?; [ $rc -eq 0 ] || echo "timescaledb.sh: failed (exit $rc) at line $LINENO: $BASH_COMMAND" >&2' EXIT

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"

PG_MAJOR=15
PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"
PG_CONFIG="$PG_BIN/pg_config"
PORT="${WEBMACS_PGPORT:-54329}"
BUILD_DIR="${WEBMACS_BUILD_DIR:-/tmp/webmacs-timescaledb-build}"
DB_USER=webmacs
DB_PASS=webmacs
URL="postgresql://$DB_USER:$DB_PASS@127.0.0.1:$PORT/webmacs"
SRC_LIST=/etc/apt/sources.list.d/webmacs-trixie-src.sources
export DEBIAN_FRONTEND=noninteractive

[ "$PORT" != 5432 ] || die "WEBMACS_PGPORT=5432 is reserved for the system cluster; pick another port"
[[ "$PORT" =~ ^[0-9]+$ ]] || die "WEBMACS_PGPORT must be a number, got '$PORT'"

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
    IS_ROOT=1
else
    IS_ROOT=0
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else SUDO=(); fi
fi

# Run a command as the cluster owner: `postgres` when we are root (initdb/postgres
# refuse to run as root), else the current user.
as_pg() {
    if [ "$IS_ROOT" -eq 1 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# ---------------------------------------------------------------- data directory
# Default: <repo>/.pgdata (git-ignored).  When run as root the cluster belongs to
# `postgres`, which must be able to traverse every directory above the data dir.  A
# checkout under e.g. /root (mode 0700) is not traversable; rather than chmod'ing a
# home directory (a security change outside the repo) we then fall back to
# /var/lib/postgresql/webmacs-<hash of repo path>/pgdata, which postgres owns.  The hash
# keeps separate checkouts apart.  An explicit WEBMACS_PGDATA is used as given.
pg_can_reach() {  # $1 = directory that must be traversable by the cluster owner
    [ "$IS_ROOT" -eq 0 ] && return 0
    id postgres >/dev/null 2>&1 || return 0   # user not there yet: decide after install
    runuser -u postgres -- test -x "$1" 2>/dev/null
}

resolve_pgdata() {
    if [ -n "${WEBMACS_PGDATA:-}" ]; then
        PGDATA="$WEBMACS_PGDATA"
        case "$PGDATA" in /*) ;; *) PGDATA="$PWD/$PGDATA" ;; esac
        pg_can_reach "$(dirname "$PGDATA")" \
            || die "postgres cannot traverse $(dirname "$PGDATA"); choose another WEBMACS_PGDATA"
    elif pg_can_reach "$REPO"; then
        PGDATA="$REPO/.pgdata"
    else
        local h
        h="$(printf '%s' "$REPO" | sha1sum | cut -c1-10)"
        PGDATA="/var/lib/postgresql/webmacs-$h/pgdata"
        log "postgres cannot traverse $REPO; using data dir $PGDATA instead"
    fi
    # Unix socket in the data dir unless the socket path would exceed the ~107-byte
    # sun_path limit; then /tmp.
    if [ $(( ${#PGDATA} + 20 )) -lt 100 ]; then SOCKDIR="$PGDATA"; else SOCKDIR=/tmp; fi
    LOGFILE="$PGDATA/server.log"
}

is_running() {
    [ -f "$PGDATA/PG_VERSION" ] && as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1
}

# psql as the cluster superuser over the unix socket (peer auth).
psql_su() {  # $1 = database, rest = psql args
    local db="$1"; shift
    as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKDIR" -p "$PORT" -d "$db" "$@"
}

cmd="${1:-start}"
case "$cmd" in
    url)
        echo "$URL" >&3
        exit 0
        ;;
    stop)
        resolve_pgdata
        if is_running; then
            log "stopping cluster in $PGDATA"
            as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >&2
        else
            log "cluster in $PGDATA is not running"
        fi
        exit 0
        ;;
    status)
        resolve_pgdata
        if is_running; then log "running ($PGDATA, port $PORT)"; exit 0; fi
        log "not running ($PGDATA)"; trap - EXIT; exit 3
        ;;
    start|"") ;;
    *) die "unknown command '$cmd' (use: start | url | stop | status)" ;;
esac

# Serialise concurrent invocations (several engineers/tests may call this at once).
LOCK=/tmp/webmacs-timescaledb-$PORT.lock
exec 9>>"$LOCK"
flock -w 1800 9 || die "timed out waiting for lock $LOCK"

# ---------------------------------------------------------------- 1. packages
APT_UPDATED=0
apt_update() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        "${SUDO[@]}" apt-get update -qq >&2 || die "apt-get update failed"
        APT_UPDATED=1
    fi
}

PKGS=("postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR" cmake build-essential dpkg-dev)
missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done

EXT_CONTROL=""
ext_control_path() {
    local share="/usr/share/postgresql/$PG_MAJOR"
    if [ -x "$PG_CONFIG" ]; then share="$("$PG_CONFIG" --sharedir)"; fi
    echo "$share/extension/timescaledb.control"
}
EXT_CONTROL="$(ext_control_path)"
NEED_BUILD=0
[ -f "$EXT_CONTROL" ] || NEED_BUILD=1

# Mirror URI + keyring of the Debian archive this machine already uses.
detect_mirror() {
    MIRROR_URI=""; MIRROR_KEY=""
    local f
    # deb822 files: first stanza with Types: deb whose URI is not a -security/-updates
    # style archive (the main archive serves every suite, including trixie).
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        [ "$f" = "$SRC_LIST" ] && continue
        local out
        out="$(awk '
            function flush() {
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && uris != "" && comps ~ /(^|[ \t])main([ \t]|$)/ &&
                    suites !~ /-security/ && uris !~ /security/ && !done) {
                    split(uris, u, /[ \t]+/); print u[1] "\t" key; done = 1
                }
                types = ""; uris = ""; key = ""; suites = ""; comps = ""
            }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]*#/ { next }
            tolower($1) == "types:"      { sub(/^[^:]*:[ \t]*/, ""); types = $0 }
            tolower($1) == "uris:"       { sub(/^[^:]*:[ \t]*/, ""); uris = $0 }
            tolower($1) == "suites:"     { sub(/^[^:]*:[ \t]*/, ""); suites = $0 }
            tolower($1) == "components:" { sub(/^[^:]*:[ \t]*/, ""); comps = $0 }
            tolower($1) == "signed-by:"  { sub(/^[^:]*:[ \t]*/, ""); key = $0 }
            END { flush() }' "$f")"
        if [ -n "$out" ]; then
            MIRROR_URI="${out%%$'\t'*}"; MIRROR_KEY="${out#*$'\t'}"
            return 0
        fi
    done
    # One-line format: "deb [opts] URI suite components..."
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        local line
        line="$(awk '$1 == "deb" && $0 !~ /security/ && / main/ { print; exit }' "$f")"
        [ -n "$line" ] || continue
        local opts="" rest
        rest="${line#deb }"
        if [[ "$rest" =~ ^[[:space:]]*\[([^]]*)\][[:space:]]*(.*)$ ]]; then
            opts="${BASH_REMATCH[1]}"; rest="${BASH_REMATCH[2]}"
        fi
        MIRROR_URI="$(awk '{print $1}' <<<"$rest")"
        if [[ "$opts" =~ signed-by=([^[:space:]]+) ]]; then MIRROR_KEY="${BASH_REMATCH[1]}"; fi
        return 0
    done
    return 1
}

SRC_CHANGED=0
if [ "$NEED_BUILD" -eq 1 ]; then
    detect_mirror || die "could not find the Debian mirror URI in /etc/apt/sources.list{,.d/*}"
    [ -n "$MIRROR_KEY" ] || MIRROR_KEY=/usr/share/keyrings/debian-archive-keyring.gpg
    log "using Debian mirror $MIRROR_URI for trixie deb-src"
    # deb-src ONLY: without a "Types: deb" entry for trixie apt can never install a
    # trixie binary package from this file.
    want="$(printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' \
        "$MIRROR_URI" "$MIRROR_KEY")"
    if [ ! -f "$SRC_LIST" ] || [ "$(cat "$SRC_LIST")" != "$want" ]; then
        printf '%s\n' "$want" | "${SUDO[@]}" tee "$SRC_LIST" >/dev/null
        SRC_CHANGED=1
    fi
fi

if [ "${#missing[@]}" -gt 0 ]; then
    apt_update
    log "apt-get install ${missing[*]}"
    # dpkg ignores -qq; keep its chatter in a log and show the tail only on failure.
    apt_log="$(mktemp /tmp/webmacs-apt-install.XXXXXX.log)"
    if ! "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$apt_log" 2>&1; then
        tail -n 30 "$apt_log" >&2
        die "apt-get install ${missing[*]} failed (full log: $apt_log)"
    fi
    rm -f "$apt_log"
    EXT_CONTROL="$(ext_control_path)"
fi
[ -x "$PG_BIN/postgres" ] || die "$PG_BIN/postgres not found after installing postgresql-$PG_MAJOR"

# ---------------------------------------------------------------- 2. TimescaleDB
if [ ! -f "$EXT_CONTROL" ]; then
    [ -x "$PG_CONFIG" ] || die "$PG_CONFIG missing (postgresql-server-dev-$PG_MAJOR not installed?)"
    # apt must know the trixie Sources index (new file, or lists cleaned since).
    if [ "$SRC_CHANGED" -eq 1 ] || ! ls /var/lib/apt/lists/*_dists_trixie_main_source_Sources* >/dev/null 2>&1; then
        APT_UPDATED=0
        apt_update
    fi
    log "building TimescaleDB (Apache-2 edition) from Debian trixie source in $BUILD_DIR"
    rm -rf "$BUILD_DIR"
    mkdir -p "$BUILD_DIR"
    # _apt must be able to write the download dir, or apt warns about unsandboxed download.
    chmod 0777 "$BUILD_DIR" 2>/dev/null || true
    ( cd "$BUILD_DIR" && apt-get source -qq timescaledb/trixie >&2 ) \
        || die "apt-get source timescaledb/trixie failed (is 'trixie main' deb-src reachable via $SRC_LIST?)"
    SRC_DIR="$(find "$BUILD_DIR" -mindepth 1 -maxdepth 1 -type d -name 'timescaledb-*' | head -n1)"
    { [ -n "$SRC_DIR" ] && [ -f "$SRC_DIR/CMakeLists.txt" ]; } || die "unpacked timescaledb source not found in $BUILD_DIR"
    log "source: $(basename "$SRC_DIR") (version $(awk -F= '/^version/ {gsub(/ /,"",$2); print $2}' "$SRC_DIR/version.config" 2>/dev/null))"
    cmake_opts=(
        -DAPACHE_ONLY=ON              # Apache-2 edition only (no TSL code)
        -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF
        -DPG_CONFIG="$PG_CONFIG"
        -DCMAKE_BUILD_TYPE=Release
        -DWARNINGS_AS_ERRORS=OFF
        -DGENERATE_DOWNGRADE_SCRIPT=OFF
        -DLINTER=OFF -DUSE_DEFAULT_VISIBILITY=OFF
        -DSEND_TELEMETRY_DEFAULT=OFF  # telemetry also set off in the cluster config
    )
    mkdir -p "$SRC_DIR/build"
    ( cd "$SRC_DIR/build" && cmake .. "${cmake_opts[@]}" >&2 ) || die "cmake configure of TimescaleDB failed"
    ( cd "$SRC_DIR/build" && make -s -j"$(nproc)" >&2 ) || die "TimescaleDB build failed"
    ( cd "$SRC_DIR/build" && "${SUDO[@]}" make -s install >/dev/null ) || die "TimescaleDB make install failed"
    [ -f "$EXT_CONTROL" ] || die "make install did not produce $EXT_CONTROL"
    # The trixie deb-src entry was only needed for `apt-get source`; remove it so other
    # `apt-get update` runs don't keep fetching trixie's Sources index.
    "${SUDO[@]}" rm -f "$SRC_LIST"
    log "TimescaleDB installed ($EXT_CONTROL)"
fi

# ---------------------------------------------------------------- 3. cluster
resolve_pgdata

if [ ! -f "$PGDATA/PG_VERSION" ]; then
    log "initialising cluster in $PGDATA"
    mkdir -p "$PGDATA"
    if [ "$IS_ROOT" -eq 1 ]; then chown postgres:postgres "$PGDATA"; fi
    chmod 0700 "$PGDATA"
    pwfile="$(mktemp)"; chmod 0644 "$pwfile"; echo postgres >"$pwfile"
    # peer auth on the unix socket (superuser steps below), scram on TCP (the app).
    as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres --pwfile="$pwfile" \
        --auth-local=peer --auth-host=scram-sha-256 \
        -E UTF8 --locale=C.UTF-8 >&2 || { rm -f "$pwfile"; die "initdb failed"; }
    rm -f "$pwfile"
else
    [ "$(stat -c %U "$PGDATA")" = "$(if [ "$IS_ROOT" -eq 1 ]; then echo postgres; else id -un; fi)" ] \
        || die "$PGDATA exists but is owned by $(stat -c %U "$PGDATA"); remove it or fix ownership"
    grep -q "^$PG_MAJOR\$" "$PGDATA/PG_VERSION" \
        || die "$PGDATA holds a PostgreSQL $(cat "$PGDATA/PG_VERSION") cluster, expected $PG_MAJOR"
fi

# Our settings live in webmacs.conf, included from postgresql.conf (rewritten every run,
# so edits here take effect; a running server is restarted when it changes).
conf_new="$(cat <<EOF
# Managed by scripts/timescaledb.sh — edits are overwritten.
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCKDIR'
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
# sized for a 2-core / 24 GB machine shared with the app and tests
max_connections = 200
shared_buffers = 512MB
effective_cache_size = 4GB
work_mem = 16MB
maintenance_work_mem = 256MB
max_wal_size = 2GB
min_wal_size = 256MB
checkpoint_completion_target = 0.9
wal_buffers = 16MB
random_page_cost = 1.1
effective_io_concurrency = 100
max_worker_processes = 16
max_parallel_workers = 2
max_parallel_workers_per_gather = 1
max_parallel_maintenance_workers = 1
timescaledb.max_background_workers = 8
# durability left on (fsync, synchronous_commit, full_page_writes: defaults)
log_timezone = 'UTC'
timezone = 'UTC'
log_min_duration_statement = -1
EOF
)"
conf_file="$PGDATA/webmacs.conf"
CONF_CHANGED=0
if [ ! -f "$conf_file" ] || [ "$(cat "$conf_file")" != "$conf_new" ]; then
    printf '%s\n' "$conf_new" | as_pg tee "$conf_file" >/dev/null
    CONF_CHANGED=1
fi
if ! grep -q "^include_if_exists = 'webmacs.conf'" "$PGDATA/postgresql.conf"; then
    printf "\ninclude_if_exists = 'webmacs.conf'\n" | as_pg tee -a "$PGDATA/postgresql.conf" >/dev/null
fi

# ---------------------------------------------------------------- 4. start + objects
if is_running; then
    if [ "$CONF_CHANGED" -eq 1 ]; then
        log "configuration changed; restarting"
        as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$LOGFILE" -m fast -w -t 120 restart >&2 3>&- 9>&- \
            || { tail -n 30 "$LOGFILE" >&2 || true; die "restart failed (log: $LOGFILE)"; }
    fi
else
    if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" 2>/dev/null; then
        die "something else is already listening on 127.0.0.1:$PORT (another webmacs checkout's cluster?); stop it or set WEBMACS_PGPORT"
    fi
    log "starting cluster ($PGDATA, port $PORT, log $LOGFILE)"
    # 3>&- 9>&-: the postmaster must not inherit our stdout (a `$(...)` caller would
    # wait for EOF forever) nor the lock fd (the lock would be held while it runs).
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$LOGFILE" -w -t 120 start >&2 3>&- 9>&- \
        || { tail -n 30 "$LOGFILE" >&2 || true; die "pg_ctl start failed (log: $LOGFILE)"; }
fi

for _ in $(seq 1 60); do
    "$PG_BIN/pg_isready" -q -h "$SOCKDIR" -p "$PORT" && break
    sleep 1
done
"$PG_BIN/pg_isready" -q -h "$SOCKDIR" -p "$PORT" || die "server did not become ready (log: $LOGFILE)"

role_exists="$(psql_su postgres -At -c "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'")"
if [ "$role_exists" != 1 ]; then
    log "creating role $DB_USER"
    psql_su postgres -c "CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASS'"
fi
for db in webmacs webmacs_test; do
    if [ "$(psql_su postgres -At -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
        log "creating database $db"
        psql_su postgres -c "CREATE DATABASE $db OWNER $DB_USER"
    fi
    # Superuser creates the extension so the app role needs no superuser rights.
    psql_su "$db" -c "SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS timescaledb"
done

echo "$URL" >&3
