#!/usr/bin/env bash
# The gateway's instructions per /write and per /read, counted by valgrind's callgrind
# (repeatable on a loaded machine, unlike throughput). Starts nats-server, the manager (which
# starts the shard servers) and the gateway under callgrind in a temp dir, /init's workload A1,
# warms up, then counts three phases, each between a zero and a dump of callgrind's counters:
#   idle   IDLE_S seconds without requests (the background rate, subtracted from the others)
#   write  WRITES single-row /write (4 connections)
#   read   READS /read of READ_ROWS keys each (4 connections)
# and prints instructions per request. `callgrind_annotate OUT/callgrind.out.<n>` shows where
# they went (n: 1 idle, 2 write, 3 read).
#
# Usage: scripts/gw-callgrind.sh [OUT_DIR]     (default /tmp/gw-callgrind)
# Environment: SHARDLINE_BIN_DIR (default target/release; build it with
#   `cargo build --release -p gateway -p shard-server -p manager`), NATS_SERVER_BIN,
#   GATEWAY_BIN (default $SHARDLINE_BIN_DIR/gateway), WRITES (2000), READS (5000), READ_ROWS (50), IDLE_S (10).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${SHARDLINE_BIN_DIR:-$ROOT/target/release}"
GW_BIN="${GATEWAY_BIN:-$BIN/gateway}"
NATS_BIN="${NATS_SERVER_BIN:-$ROOT/.tools/bin/nats-server}"
OUT="${1:-/tmp/gw-callgrind}"
WRITES="${WRITES:-2000}"
READS="${READS:-5000}"
READ_ROWS="${READ_ROWS:-50}"
IDLE_S="${IDLE_S:-10}"

for b in "$GW_BIN" "$BIN/manager" "$BIN/shard-server" "$NATS_BIN"; do
    [[ -x "$b" ]] || { echo "missing $b" >&2; exit 1; }
done
mkdir -p "$OUT"
rm -f "$OUT"/callgrind.out*
DIR="$(mktemp -d /tmp/gw-callgrind-run.XXXXXX)"
mkdir -p "$DIR/servers"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NP="$(free_port)"; MP="$(free_port)"; GP="$(free_port)"
NATS_URL="nats://127.0.0.1:$NP"
GW="http://127.0.0.1:$GP"

PIDS=()
cleanup() {
    # The gateway first, then the manager (which stops its shard servers), then nats-server.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "${PIDS[i]}" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "${PIDS[i]}" 2>/dev/null || true
    done
    rm -rf "$DIR"
}
trap cleanup EXIT

"$NATS_BIN" -c "$ROOT/nats/nats-server.conf" -p "$NP" -sd "$DIR/nats" >"$DIR/nats.log" 2>&1 &
PIDS+=($!)
"$BIN/manager" --listen "127.0.0.1:$MP" --nats-url "$NATS_URL" --servers-dir "$DIR/servers" \
    >"$DIR/manager.log" 2>&1 &
PIDS+=($!)
valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
    "$GW_BIN" --listen "127.0.0.1:$GP" --nats-url "$NATS_URL" \
    --manager-url "http://127.0.0.1:$MP" >"$OUT/gateway.log" 2>&1 &
GPID=$!
PIDS+=("$GPID")

# wait_ok WHAT SECONDS URL: until URL answers 2xx.
wait_ok() {
    local deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null --max-time 5 "$3" 2>/dev/null; do
        ((SECONDS < deadline)) || { echo "timed out waiting for $1" >&2; tail -20 "$OUT/gateway.log" >&2; exit 1; }
        sleep 0.5
    done
}
wait_ok "the gateway" 120 "$GW/healthz"
curl -fsS --max-time 300 -H 'Content-Type: application/json' \
    --data @"$ROOT/workloads/a1.init.json" "$GW/init" >/dev/null
wait_ok "readiness" 120 "$GW/readyz"

LOAD="$ROOT/scripts/gw-load.py"
python3 "$LOAD" "$GW" write 200 10000
python3 "$LOAD" "$GW" read 200 "$READ_ROWS"

# phase NAME CMD...: zero the counters, run CMD, dump; prints the phase's wall seconds.
phase() {
    local name=$1
    shift
    callgrind_control -z "$GPID" >/dev/null
    local t0 t1
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    callgrind_control -d "$name" "$GPID" >/dev/null
    echo "$name $(echo "$t1 - $t0" | bc)" >>"$OUT/phases"
}
rm -f "$OUT/phases"
phase idle sleep "$IDLE_S"
phase write python3 "$LOAD" "$GW" write "$WRITES" 0
phase read python3 "$LOAD" "$GW" read "$READS" "$READ_ROWS"

# Instructions of each dump (files numbered in dump order).
ir() { awk '/^summary:/ {print $2}' "$OUT/callgrind.out.$1"; }
read -r _ IDLE_T < <(sed -n 1p "$OUT/phases")
read -r _ W_T < <(sed -n 2p "$OUT/phases")
read -r _ R_T < <(sed -n 3p "$OUT/phases")
python3 - "$(ir 1)" "$IDLE_T" "$(ir 2)" "$W_T" "$WRITES" "$(ir 3)" "$R_T" "$READS" <<'PY'
import sys
idle, idle_t, w, w_t, wn, r, r_t, rn = map(float, sys.argv[1:])
rate = idle / idle_t
print(f"idle:  {idle:,.0f} Ir in {idle_t:.1f} s ({rate:,.0f} Ir/s)")
for name, ir, t, n in (("write", w, w_t, wn), ("read", r, r_t, rn)):
    net = ir - rate * t
    print(f"{name}: {ir:,.0f} Ir in {t:.1f} s for {n:.0f} requests: "
          f"{ir / n:,.0f} Ir/request, {net / n:,.0f} without the idle rate")
PY
