# Sourced by scripts/test and scripts/bench: put PgBouncer in front of the PostgreSQL that
# scripts/pg.sh started (call pg_start first).
#
#   pgb_install         install Debian's `pgbouncer` package when the binary is missing
#   pgb_start [mode]    start PgBouncer on a free 127.0.0.1 port in front of $PG_PORT,
#                       pool_mode=transaction unless [mode] says otherwise; export PGBOUNCER_URL
#   pgb_stop            stop it and remove its directory (safe to call twice)
#
# PgBouncer refuses to run as root, so when we are root it runs as the `postgres` user (which
# pg_start created). Authentication is `trust` against a generated userlist (the throwaway server
# trusts every local connection too). Config, log and pid file live in a temp dir, printed below.

pgb_find() {
    if command -v pgbouncer >/dev/null 2>&1; then command -v pgbouncer; return 0; fi
    if [ -x /usr/sbin/pgbouncer ]; then echo /usr/sbin/pgbouncer; return 0; fi
    return 1
}

pgb_install() {
    echo "scripts/pgbouncer.sh: pgbouncer not found; installing the pgbouncer package" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq pgbouncer >/dev/null
}

pgb_start() {
    local mode="${1:-transaction}"
    if [ -z "${PG_PORT:-}" ]; then
        echo "scripts/pgbouncer.sh: start PostgreSQL first (source scripts/pg.sh && pg_start)" >&2; return 1
    fi
    PGB_BIN="$(pgb_find)" || { pgb_install; PGB_BIN="$(pgb_find)"; } || {
        echo "scripts/pgbouncer.sh: cannot find or install pgbouncer" >&2; return 1; }
    PGB_DIR="$(mktemp -d /tmp/outbox-pgb.XXXXXX)"
    chmod 755 "$PGB_DIR"
    echo '"postgres" ""' >"$PGB_DIR/userlist.txt"
    for _ in 1 2 3 4 5; do
        PGB_PORT="$(pg_free_port)"
        cat >"$PGB_DIR/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = trust
auth_file = $PGB_DIR/userlist.txt
pool_mode = $mode
max_client_conn = 1000
default_pool_size = 20
max_db_connections = 0
ignore_startup_parameters = extra_float_digits,options
logfile = $PGB_DIR/pgbouncer.log
pidfile = $PGB_DIR/pgbouncer.pid
EOF
        [ "$(id -u)" -eq 0 ] && chown -R postgres "$PGB_DIR"
        pg_as_owner "$PGB_BIN" -d "$PGB_DIR/pgbouncer.ini" >>"$PGB_DIR/start.log" 2>&1 || continue
        # Ready once it accepts TCP connections (it daemonised already; poll with a deadline).
        for _ in $(seq 1 100); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$PGB_PORT") 2>/dev/null; then
                export PGBOUNCER_URL="postgres://postgres@127.0.0.1:$PGB_PORT/postgres"
                export PGB_BIN PGB_DIR PGB_PORT
                echo "scripts/pgbouncer.sh: $("$PGB_BIN" --version | head -1) on 127.0.0.1:$PGB_PORT, pool_mode=$mode, in front of 127.0.0.1:$PG_PORT (log in $PGB_DIR)" >&2
                return 0
            fi
            sleep 0.1
        done
        pgb_kill
    done
    cat "$PGB_DIR"/start.log "$PGB_DIR"/pgbouncer.log >&2 2>/dev/null
    return 1
}

# Stops the PgBouncer this script started (by its pid file), waiting up to 5 s for it to exit.
pgb_kill() {
    local pid
    pid="$(cat "$PGB_DIR/pgbouncer.pid" 2>/dev/null || true)"
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

pgb_stop() {
    if [ -n "${PGB_DIR:-}" ] && [ -d "$PGB_DIR" ]; then
        pgb_kill
        rm -rf "$PGB_DIR"
    fi
    PGB_DIR=""
    unset PGBOUNCER_URL
}
