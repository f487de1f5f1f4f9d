# Sourced by scripts/test and scripts/bench: start a throwaway PostgreSQL server.
#
#   pg_start            initdb in a temp dir, start on a free 127.0.0.1 port, export DATABASE_URL
#   pg_stop             stop the server and remove its directory (safe to call twice)
#
# The server refuses to run as root, so when we are root it runs as the `postgres` user.
# When the server binaries are missing (a fresh Debian machine) the `postgresql` package is installed.

pg_find_bindir() {
    local dir
    if command -v pg_config >/dev/null 2>&1; then
        dir="$(pg_config --bindir 2>/dev/null || true)"
        if [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
    done
    if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return 0; fi
    return 1
}

pg_install() {
    echo "scripts/pg.sh: PostgreSQL server binaries not found; installing the postgresql package" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
}

pg_free_port() {
    local port
    for _ in $(seq 1 50); do
        port=$(( 20000 + RANDOM % 30000 ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return 0; fi
    done
    return 1
}

pg_as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# tests/tests/localized_errors.rs runs sessions under lc_messages=de_DE.UTF-8 (the server's German
# messages, installed with the postgresql package) to show that error classification does not read
# English text. The server can only switch to a locale the system has: generate it when missing.
pg_locales() {
    locale -a 2>/dev/null | grep -qi '^de_DE\.utf-\?8$' && return 0
    if [ "$(id -u)" -eq 0 ] && command -v localedef >/dev/null 2>&1; then
        localedef -i de_DE -f UTF-8 de_DE.UTF-8 >/dev/null 2>&1 ||
            echo "scripts/pg.sh: could not generate the de_DE.UTF-8 locale (localized_errors will fail)" >&2
    else
        echo "scripts/pg.sh: no de_DE.UTF-8 locale (localized_errors will fail): run localedef -i de_DE -f UTF-8 de_DE.UTF-8 as root" >&2
    fi
}

pg_start() {
    PG_BINDIR="$(pg_find_bindir)" || { pg_install; PG_BINDIR="$(pg_find_bindir)"; } || {
        echo "scripts/pg.sh: cannot find or install PostgreSQL" >&2; return 1; }
    pg_locales
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
    PG_DIR="$(mktemp -d /tmp/outbox-pg.XXXXXX)"
    chmod 755 "$PG_DIR"
    [ "$(id -u)" -eq 0 ] && chown postgres "$PG_DIR"
    pg_as_owner "$PG_BINDIR/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --no-sync >"$PG_DIR/initdb.log" 2>&1 || {
        cat "$PG_DIR/initdb.log" >&2; return 1; }
    local fsync="${PG_FSYNC:-off}"
    for _ in 1 2 3 4 5; do
        PG_PORT="$(pg_free_port)"
        if pg_as_owner "$PG_BINDIR/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 start \
            -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=$fsync -c shared_buffers=256MB -c max_wal_size=4GB" >/dev/null; then
            export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
            export PG_BINDIR PG_DIR PG_PORT
            echo "scripts/pg.sh: PostgreSQL $("$PG_BINDIR/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT (fsync=$fsync, data in $PG_DIR)" >&2
            return 0
        fi
    done
    cat "$PG_DIR/server.log" >&2
    return 1
}

pg_stop() {
    if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR" ]; then
        pg_as_owner "$PG_BINDIR/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
        rm -rf "$PG_DIR"
    fi
    PG_DIR=""
}
