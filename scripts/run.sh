#!/usr/bin/env bash
# `make run`: build release binaries, start nats-server, the manager and the gateway on
# this machine, with all state under ./data (kept between runs), and wait. Ctrl-C (or
# `make stop` from another terminal) stops everything in order.
#
# Environment:
#   SHARDLINE_NATS_PORT     nats-server client port            (default 4222)
#   SHARDLINE_MANAGER_PORT  manager admin port on 127.0.0.1    (default 5001)
#   SHARDLINE_GATEWAY_PORT  gateway port on 0.0.0.0             (default 5000)
#   SHARDLINE_NATS_CONF     nats-server config file             (default nats/nats-server.conf;
#                           nats/durable.conf fsyncs every write)
#   SHARDLINE_NATS_USER, SHARDLINE_NATS_PASSWORD   nats-server requires this user and password
#   SHARDLINE_NATS_TOKEN    nats-server requires this token (instead of a user and password)
#                           (default: no credentials; the manager, the gateway and the shard
#                           servers read the same variables)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

NATS_PORT="${SHARDLINE_NATS_PORT:-4222}"
MANAGER_PORT="${SHARDLINE_MANAGER_PORT:-5001}"
GATEWAY_PORT="${SHARDLINE_GATEWAY_PORT:-5000}"
NATS_CONF="${SHARDLINE_NATS_CONF:-nats/nats-server.conf}"
export SHARDLINE_RUN_DIR="$ROOT/data" # read by stop.sh
DATA="$SHARDLINE_RUN_DIR"
LOGS="$DATA/logs"
RUN="$DATA/run"
NATS_URL="nats://127.0.0.1:$NATS_PORT"
MANAGER_URL="http://127.0.0.1:$MANAGER_PORT"
GATEWAY_URL="http://127.0.0.1:$GATEWAY_PORT"

say() { echo "run: $*"; }

# NATS credentials: the same combinations the binaries accept (they check them again).
NATS_AUTH_ARGS=()
NATS_AUTH="none"
if [[ -n "${SHARDLINE_NATS_TOKEN:-}" ]]; then
    if [[ -n "${SHARDLINE_NATS_USER:-}" ]]; then
        say "both SHARDLINE_NATS_USER and SHARDLINE_NATS_TOKEN are set; use either a user and password or a token" >&2
        exit 1
    fi
    NATS_AUTH_ARGS=(--auth "$SHARDLINE_NATS_TOKEN")
    NATS_AUTH="token"
elif [[ -n "${SHARDLINE_NATS_USER:-}" ]]; then
    if [[ -z "${SHARDLINE_NATS_PASSWORD:-}" ]]; then
        say "SHARDLINE_NATS_USER is set without SHARDLINE_NATS_PASSWORD" >&2
        exit 1
    fi
    NATS_AUTH_ARGS=(--user "$SHARDLINE_NATS_USER" --pass "$SHARDLINE_NATS_PASSWORD")
    NATS_AUTH="user $SHARDLINE_NATS_USER"
elif [[ -n "${SHARDLINE_NATS_PASSWORD:-}" ]]; then
    say "SHARDLINE_NATS_PASSWORD is set without SHARDLINE_NATS_USER" >&2
    exit 1
fi

# http_ok URL: true if GET URL answers 2xx.
http_ok() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
    else
        python3 - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2).read()
PY
    fi
}

# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

# tcp_open PORT: something accepts connections on 127.0.0.1:PORT.
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Refuse to start twice on the same ./data.
for name in nats manager gateway; do
    pidfile="$RUN/$name.pid"
    if [[ -f "$pidfile" ]]; then
        pid="$(tr -d '[:space:]' <"$pidfile")"
        if alive "$pid"; then
            say "shardline is already running ($name pid $pid); stop it with \`make stop\`" >&2
            exit 1
        fi
        rm -f "$pidfile"
    fi
done

say "building release binaries"
cargo build --release
bash "$ROOT/scripts/install-nats.sh"

for port in "$NATS_PORT" "$MANAGER_PORT" "$GATEWAY_PORT"; do
    if tcp_open "$port"; then
        say "port $port is already in use; set SHARDLINE_NATS_PORT / SHARDLINE_MANAGER_PORT / SHARDLINE_GATEWAY_PORT" >&2
        exit 1
    fi
done

mkdir -p "$DATA/nats" "$DATA/servers" "$LOGS" "$RUN"

stopping=0
cleanup() {
    local rc=$?
    [[ $stopping == 1 ]] && return
    stopping=1
    trap '' INT TERM
    echo
    say "stopping"
    bash "$ROOT/scripts/stop.sh" || true
    say "stopped; data kept in ${DATA#"$ROOT"/}/"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

# start NAME LOG CMD...: start CMD in its own session (so a terminal Ctrl-C reaches only
# this script, which then stops things in order), logging stdout+stderr to LOG.
start() {
    local name="$1" log="$2" shown=() arg hide=0
    shift 2
    # The log shows the command line without the NATS password or token.
    for arg in "$@"; do
        if ((hide)); then shown+=("<redacted>"); else shown+=("$arg"); fi
        [[ "$arg" == --pass || "$arg" == --auth ]] && hide=1 || hide=0
    done
    echo "=== $(date '+%F %T') starting: ${shown[*]}" >>"$log"
    if command -v setsid >/dev/null 2>&1; then
        setsid "$@" >>"$log" 2>&1 </dev/null &
    else
        "$@" >>"$log" 2>&1 </dev/null &
    fi
    echo "$!" >"$RUN/$name.pid"
    say "started $name (pid $!), log ${log#"$ROOT"/}"
}

# wait_for WHAT TIMEOUT NAME TEST...: poll TEST until it succeeds; fail if process NAME
# dies or TIMEOUT seconds pass.
wait_for() {
    local what="$1" timeout="$2" name="$3" deadline pid
    shift 3
    deadline=$((SECONDS + timeout))
    pid="$(cat "$RUN/$name.pid")"
    until "$@"; do
        if ! alive "$pid"; then
            say "$name exited while waiting for $what; last lines of $LOGS/$name.log:" >&2
            tail -n 30 "$LOGS/$name.log" >&2 || true
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            say "timed out after ${timeout}s waiting for $what; see $LOGS/$name.log" >&2
            exit 1
        fi
        sleep 0.2
    done
}

start nats "$LOGS/nats.log" "$ROOT/.tools/bin/nats-server" \
    -c "$ROOT/$NATS_CONF" -p "$NATS_PORT" -sd "$DATA/nats" ${NATS_AUTH_ARGS[@]+"${NATS_AUTH_ARGS[@]}"}
wait_for "nats-server on port $NATS_PORT" 30 nats tcp_open "$NATS_PORT"

start manager "$LOGS/manager.log" "$ROOT/target/release/manager" \
    --listen "127.0.0.1:$MANAGER_PORT" --nats-url "$NATS_URL" --servers-dir "$DATA/servers"
wait_for "manager $MANAGER_URL/healthz" 60 manager http_ok "$MANAGER_URL/healthz"

start gateway "$LOGS/gateway.log" "$ROOT/target/release/gateway" \
    --listen "0.0.0.0:$GATEWAY_PORT" --nats-url "$NATS_URL" --manager-url "$MANAGER_URL"
wait_for "gateway $GATEWAY_URL/healthz" 60 gateway http_ok "$GATEWAY_URL/healthz"

cat <<INFO

shardline is running
  gateway (public API)  $GATEWAY_URL        e.g. curl $GATEWAY_URL/status
  manager (admin)       $MANAGER_URL
  nats                  $NATS_URL  (config $NATS_CONF, credentials: $NATS_AUTH)
  data                  ${DATA#"$ROOT"/}/  (nats/ = JetStream store, servers/<name>/ = shard servers; kept between runs)
  logs                  ${LOGS#"$ROOT"/}/  (nats.log, manager.log, gateway.log)
Stop with Ctrl-C here, or \`make stop\` from another terminal.

INFO

# Wait; exit (and clean up) if a component goes away, e.g. because of `make stop`.
while true; do
    for name in nats manager gateway; do
        pidfile="$RUN/$name.pid"
        if [[ ! -f "$pidfile" ]]; then
            say "stopped from elsewhere"
            exit 0
        fi
        if ! alive "$(cat "$pidfile")"; then
            say "$name exited unexpectedly; last lines of $LOGS/$name.log:" >&2
            tail -n 30 "$LOGS/$name.log" >&2 || true
            exit 1
        fi
    done
    sleep 1 &
    wait $! || true
done
