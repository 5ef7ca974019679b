# The benchmark (bench/, crate shardline-bench). Included from the top-level Makefile.
#
#   make bench           release build, install nats-server, A1/A2/A3 (5 interleaved rounds, medians) + sweeps on A1
#   make bench-durable   the same configurations with --durable (fsync everywhere)
#   make bench-smoke     a tiny run (300 writes, 300 reads, A1) on the debug binaries; part of `make test`
#   make soak            release build + the soak (SOAK_SECS seconds, default 600): updates over a fixed key
#                        set with a kill and a re-seed; stream/SQLite/RSS over time in bench/results/soak
#                        (a 60 s version runs in `make test`: testkit/tests/soak.rs)
#
# Extra flags: make bench BENCH_ARGS="--configs a1 --clients 50"   (see: shardline-bench --help)

BENCH_ARGS ?=
BENCH_OUT ?= bench/results

.PHONY: bench bench-durable bench-smoke bench-build soak

bench-build: nats
	cargo build --release --workspace --bins

bench: bench-build ## release build + the full benchmark (A1/A2/A3, sweeps); results in bench/results
	target/release/shardline-bench --sweeps --rounds 5 --out $(BENCH_OUT) $(BENCH_ARGS)

bench-durable: bench-build ## the benchmark in durable mode (fsync in JetStream and SQLite)
	target/release/shardline-bench --durable --rounds 5 --out $(BENCH_OUT) $(BENCH_ARGS)

bench-smoke: nats ## tiny benchmark run (a few hundred requests) so the bench never rots
	cargo build --workspace --bins
	target/debug/shardline-bench --smoke --bin-dir target/debug --out target/bench-smoke $(BENCH_ARGS)

# Bounded: the load runs SOAK_SECS (default 600 s), then the checks; `timeout` caps the whole
# run at 15 minutes.
SOAK_SECS ?= 600
soak: bench-build ## release build + the soak (SOAK_SECS=600): disk and memory must plateau while the WAL is trimmed
	SOAK_SECS=$(SOAK_SECS) timeout 900 target/release/shardline-bench --soak --out $(BENCH_OUT)/soak $(BENCH_ARGS)

# `make test` also runs the smoke benchmark.
test: bench-smoke
