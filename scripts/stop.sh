#!/usr/bin/env bash
# Stop a shardline started by scripts/run.sh (`make run`), from any terminal. The runner
# restarts a manager or gateway that dies, so it is asked to stop first (SIGTERM; it then runs
# this script itself, without its pid file). What is left is stopped in order: gateway, then
# manager (SIGTERM: it stops its shard servers), then nats-server, then any shard-server left
# behind (pid files under $SHARDLINE_RUN_DIR/servers/*/server.pid).
# Safe to run when nothing is running. Pids are checked against the expected program name,
# so a stale pid file never kills an unrelated process.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${SHARDLINE_RUN_DIR:-$ROOT/data}"
RUN="$DATA/run"

# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

# stop_pid PID NAME GRACE_SECONDS: SIGTERM, wait up to GRACE, then SIGKILL.
stop_pid() {
    local pid="$1" name="$2" grace="$3" i
    alive "$pid" || return 0
    if ! is_prog "$pid" "$name"; then
        echo "pid $pid is not $name (stale pid file?); leaving it alone" >&2
        return 0
    fi
    echo "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true # in case it was SIGSTOPped
    for ((i = 0; i < grace * 10; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    echo "  $name did not exit within ${grace}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
}

# stop_named NAME PROGRAM GRACE: stop the process in $RUN/NAME.pid, remove the file.
stop_named() {
    local name="$1" prog="$2" grace="$3" pidfile="$RUN/$1.pid" pid
    [[ -f "$pidfile" ]] || return 0
    pid="$(tr -d '[:space:]' <"$pidfile")"
    stop_pid "$pid" "$prog" "$grace"
    rm -f "$pidfile"
}

# The runner's own stop takes at most the sum of the graces below plus the servers'.
RUNNER_GRACE=120
runner_pidfile="$RUN/runner.pid"
if [[ -f "$runner_pidfile" ]]; then
    pid="$(tr -d '[:space:]' <"$runner_pidfile")"
    if alive "$pid" && is_prog "$pid" run.sh; then
        echo "stopping the runner (pid $pid); it stops the rest"
        kill -TERM "$pid" 2>/dev/null || true
        kill -CONT "$pid" 2>/dev/null || true
        for ((i = 0; i < RUNNER_GRACE * 10; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            # Killed first, so that it cannot restart what is stopped below.
            echo "  the runner did not stop within ${RUNNER_GRACE}s; killing it and stopping the rest here"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$runner_pidfile"
fi

stop_named gateway gateway 10
stop_named manager manager 30
stop_named nats nats-server 15

shopt -s nullglob
for pidfile in "$DATA"/servers/*/server.pid; do
    pid="$(tr -d '[:space:]' <"$pidfile")"
    server="$(basename "$(dirname "$pidfile")")"
    stop_pid "$pid" shard-server 5 || true
    if alive "$pid" && is_prog "$pid" shard-server; then
        echo "  $server (pid $pid) is still running" >&2
    fi
done
