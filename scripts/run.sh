#!/usr/bin/env bash
# `make run`: build release binaries, start nats-server, the manager and the gateway on
# this machine, with all state under ./data (kept between runs), and keep them up: a manager,
# gateway or nats-server that dies is restarted with back-off (logged with its exit status)
# while the rest, shard servers included, keeps running; the data path does not need the
# manager. Ctrl-C, SIGTERM or `make stop` from another terminal stops everything in order.
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
#   SHARDLINE_RUN_DIR       state: nats/, servers/, logs/, run/ (pid files)   (default ./data)
#   SHARDLINE_BIN_DIR       take manager, gateway and shard-server from this directory and
#                           build nothing (default: `cargo build --release`, target/release)
#   NATS_SERVER_BIN         the nats-server binary (default: scripts/install-nats.sh installs
#                           the pinned one into .tools/bin)
#   SHARDLINE_RESTART_BACKOFF_MS      first restart delay of a component   (default 500)
#   SHARDLINE_RESTART_BACKOFF_MAX_MS  the delay doubles up to this         (default 10000)
#   SHARDLINE_RESTART_RESET_MS        a component up this long is back to the first delay
#                                     when it dies                         (default 30000)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

NATS_PORT="${SHARDLINE_NATS_PORT:-4222}"
MANAGER_PORT="${SHARDLINE_MANAGER_PORT:-5001}"
GATEWAY_PORT="${SHARDLINE_GATEWAY_PORT:-5000}"
NATS_CONF="${SHARDLINE_NATS_CONF:-nats/nats-server.conf}"
[[ "$NATS_CONF" == /* ]] || NATS_CONF="$ROOT/$NATS_CONF"
export SHARDLINE_RUN_DIR="${SHARDLINE_RUN_DIR:-$ROOT/data}" # read by stop.sh
DATA="$SHARDLINE_RUN_DIR"
LOGS="$DATA/logs"
RUN="$DATA/run"
NATS_URL="nats://127.0.0.1:$NATS_PORT"
MANAGER_URL="http://127.0.0.1:$MANAGER_PORT"
GATEWAY_URL="http://127.0.0.1:$GATEWAY_PORT"
BACKOFF_MIN_MS="${SHARDLINE_RESTART_BACKOFF_MS:-500}"
BACKOFF_MAX_MS="${SHARDLINE_RESTART_BACKOFF_MAX_MS:-10000}"
BACKOFF_RESET_MS="${SHARDLINE_RESTART_RESET_MS:-30000}"

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

for var in BACKOFF_MIN_MS BACKOFF_MAX_MS BACKOFF_RESET_MS; do
    if ! [[ "${!var}" =~ ^[0-9]+$ ]] || ((${!var} == 0)); then
        say "$var must be a positive number of milliseconds, not '${!var}'" >&2
        exit 1
    fi
done

# Refuse to start twice on the same run dir.
for name in runner nats manager gateway; do
    pidfile="$RUN/$name.pid"
    if [[ -f "$pidfile" ]]; then
        pid="$(tr -d '[:space:]' <"$pidfile")"
        if alive "$pid" && { [[ $name != runner ]] || is_prog "$pid" run.sh; }; then
            say "shardline is already running ($name pid $pid); stop it with \`make stop\`" >&2
            exit 1
        fi
        rm -f "$pidfile"
    fi
done

if [[ -n "${SHARDLINE_BIN_DIR:-}" ]]; then
    BIN_DIR="$SHARDLINE_BIN_DIR"
    for bin in manager gateway shard-server; do
        if [[ ! -x "$BIN_DIR/$bin" ]]; then
            say "SHARDLINE_BIN_DIR=$BIN_DIR has no executable $bin" >&2
            exit 1
        fi
    done
    say "using the binaries in $BIN_DIR (SHARDLINE_BIN_DIR; not building)"
else
    say "building release binaries"
    cargo build --release
    BIN_DIR="$ROOT/target/release"
fi
if [[ -n "${NATS_SERVER_BIN:-}" ]]; then
    NATS_BIN="$NATS_SERVER_BIN"
    if [[ ! -x "$NATS_BIN" ]]; then
        say "NATS_SERVER_BIN=$NATS_BIN is not an executable" >&2
        exit 1
    fi
else
    bash "$ROOT/scripts/install-nats.sh"
    NATS_BIN="$ROOT/.tools/bin/nats-server"
fi

for port in "$NATS_PORT" "$MANAGER_PORT" "$GATEWAY_PORT"; do
    if tcp_open "$port"; then
        say "port $port is already in use; set SHARDLINE_NATS_PORT / SHARDLINE_MANAGER_PORT / SHARDLINE_GATEWAY_PORT" >&2
        exit 1
    fi
done

mkdir -p "$DATA/nats" "$DATA/servers" "$LOGS" "$RUN"
echo "$$" >"$RUN/runner.pid"

stopping=0
cleanup() {
    local rc=$?
    [[ $stopping == 1 ]] && return
    stopping=1
    trap '' INT TERM
    echo
    say "stopping"
    # stop.sh must not signal this runner: it is the one stopping.
    if [[ "$(cat "$RUN/runner.pid" 2>/dev/null)" == "$$" ]]; then
        rm -f "$RUN/runner.pid"
    fi
    bash "$ROOT/scripts/stop.sh" || true
    say "stopped; data kept in ${DATA#"$ROOT"/}/"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

# start NAME LOG CMD...: start CMD in its own session (so a terminal Ctrl-C reaches only
# this script, which then stops things in order), logging stdout+stderr to LOG.
start() {
    local name="$1" log="$2" shown=() arg hide=0 stop_asked=0
    shift 2
    # The log shows the command line without the NATS password or token.
    for arg in "$@"; do
        if ((hide)); then shown+=("<redacted>"); else shown+=("$arg"); fi
        [[ "$arg" == --pass || "$arg" == --auth ]] && hide=1 || hide=0
    done
    echo "=== $(date '+%F %T') starting: ${shown[*]}" >>"$log"
    # A stop asked for between the fork and the pid file would leave this process unknown to
    # stop.sh: hold it until the pid file is written.
    trap 'stop_asked=1' INT TERM
    if command -v setsid >/dev/null 2>&1; then
        setsid "$@" >>"$log" 2>&1 </dev/null &
    else
        "$@" >>"$log" 2>&1 </dev/null &
    fi
    echo "$!" >"$RUN/$name.pid"
    trap 'exit 0' INT TERM
    if ((stop_asked)); then exit 0; fi
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

# launch NAME: start component NAME (nats, manager or gateway).
launch() {
    case "$1" in
    nats)
        start nats "$LOGS/nats.log" "$NATS_BIN" -c "$NATS_CONF" -p "$NATS_PORT" \
            -sd "$DATA/nats" ${NATS_AUTH_ARGS[@]+"${NATS_AUTH_ARGS[@]}"}
        ;;
    manager)
        start manager "$LOGS/manager.log" "$BIN_DIR/manager" \
            --listen "127.0.0.1:$MANAGER_PORT" --nats-url "$NATS_URL" --servers-dir "$DATA/servers"
        ;;
    gateway)
        start gateway "$LOGS/gateway.log" "$BIN_DIR/gateway" \
            --listen "0.0.0.0:$GATEWAY_PORT" --nats-url "$NATS_URL" --manager-url "$MANAGER_URL"
        ;;
    esac
}

# healthy NAME: component NAME answers (nats: its port; the others: GET /healthz).
healthy() {
    case "$1" in
    nats) tcp_open "$NATS_PORT" ;;
    manager) http_ok "$MANAGER_URL/healthz" ;;
    gateway) http_ok "$GATEWAY_URL/healthz" ;;
    esac
}

# now_ms: sets NOW to the wall clock in milliseconds (whole seconds without EPOCHREALTIME).
now_ms() {
    if [[ -n "${EPOCHREALTIME:-}" ]]; then
        local t="${EPOCHREALTIME/[.,]/}"
        NOW=$((10#${t:0:${#t}-3}))
    else
        NOW=$(($(date +%s) * 1000))
    fi
}

# describe_status STATUS: what an exit status from `wait` means.
describe_status() {
    local st="$1" sig
    if ((st > 128 && st < 160)); then
        sig="$(kill -l $((st - 128)) 2>/dev/null || echo '?')"
        echo "killed by signal $((st - 128)) (SIG${sig#SIG})"
    else
        echo "exit status $st"
    fi
}

launch nats
wait_for "nats-server on port $NATS_PORT" 30 nats tcp_open "$NATS_PORT"
launch manager
wait_for "manager $MANAGER_URL/healthz" 60 manager healthy manager
launch gateway
wait_for "gateway $GATEWAY_URL/healthz" 60 gateway healthy gateway

cat <<INFO

shardline is running
  gateway (public API)  $GATEWAY_URL        e.g. curl $GATEWAY_URL/status
  manager (admin)       $MANAGER_URL
  nats                  $NATS_URL  (config ${NATS_CONF#"$ROOT"/}, credentials: $NATS_AUTH)
  data                  ${DATA#"$ROOT"/}/  (nats/ = JetStream store, servers/<name>/ = shard servers; kept between runs)
  logs                  ${LOGS#"$ROOT"/}/  (nats.log, manager.log, gateway.log)
A manager, gateway or nats-server that dies is restarted here (back-off ${BACKOFF_MIN_MS} ms doubling
to ${BACKOFF_MAX_MS} ms); the shard servers keep running meanwhile.
Stop with Ctrl-C here, or \`make stop\` from another terminal.

INFO

# Supervise. Per component (variables named <field>_<component>): state up|down, the time it
# was started, the delay before its next restart, when that restart is due, and whether a
# restarted one has answered yet.
COMPONENTS=(nats manager gateway)
now_ms
for name in "${COMPONENTS[@]}"; do
    printf -v "state_$name" up
    printf -v "started_$name" %s "$NOW"
    printf -v "backoff_$name" %s "$BACKOFF_MIN_MS"
    printf -v "due_$name" 0
    printf -v "checking_$name" 0
    printf -v "restarts_$name" 0
done

# supervise NAME: one look at component NAME; restarts it when it died and its delay passed.
supervise() {
    local name="$1" pidfile="$RUN/$1.pid" pid st up_ms delay
    local state_var="state_$name" started_var="started_$name" backoff_var="backoff_$name"
    local due_var="due_$name" checking_var="checking_$name" restarts_var="restarts_$name"
    # Pid files go when an older stop.sh, or one that could not reach this runner, stopped
    # things behind its back: do not fight it.
    if ! pid="$(tr -d '[:space:]' <"$pidfile" 2>/dev/null)"; then
        say "stopped from elsewhere"
        exit 0
    fi
    now_ms
    if [[ ${!state_var} == up ]]; then
        if alive "$pid"; then
            if ((${!checking_var})) && healthy "$name"; then
                printf -v "$checking_var" 0
                say "$name (pid $pid) is up again"
            fi
            return 0
        fi
        st=0
        wait "$pid" 2>/dev/null || st=$?
        up_ms=$((NOW - ${!started_var}))
        # One that stayed up long enough crashed for a new reason: start over quickly.
        if ((up_ms >= BACKOFF_RESET_MS)); then
            printf -v "$backoff_var" %s "$BACKOFF_MIN_MS"
        fi
        delay=${!backoff_var}
        printf -v "$due_var" %s $((NOW + delay))
        printf -v "$backoff_var" %s $((delay * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : delay * 2))
        printf -v "$state_var" down
        printf -v "$restarts_var" %s $((${!restarts_var} + 1))
        say "$name (pid $pid) exited ($(describe_status "$st")) after $((up_ms / 1000)).$(printf %03d $((up_ms % 1000)))s up; restart ${!restarts_var} in ${delay} ms; last lines of ${LOGS#"$ROOT"/}/$name.log:" >&2
        # The end of this run's part of the log (it is appended to across restarts).
        awk '/^=== .* starting: /{n=0} {line[n++]=$0} END{for (i = (n > 15 ? n - 15 : 0); i < n; i++) print "    " line[i]}' \
            "$LOGS/$name.log" >&2 || true
    elif ((NOW >= ${!due_var})); then
        say "restarting $name"
        launch "$name"
        now_ms
        printf -v "$started_var" %s "$NOW"
        printf -v "$checking_var" 1
        printf -v "$state_var" up
    fi
}

while true; do
    for name in "${COMPONENTS[@]}"; do
        supervise "$name"
    done
    sleep 0.2 &
    wait $! || true
done
