# The benchmark (bench/, crate shardline-bench). Included from the top-level Makefile.
#
#   make bench           release build, install nats-server, A1/A2/A3 (5 interleaved rounds, medians) + sweeps on A1
#   make bench-durable   the same configurations with --durable (fsync everywhere)
#   make bench-smoke     a tiny run (300 writes, 300 reads, A1) on the debug binaries; part of `make test`
#   make bench-peers     PostgreSQL (primary + 2 quorum-synchronous standbys, pgbench) beside A1,
#                        default and durable mode, 3 alternating rounds; side-by-side table + ratios
#
# Extra flags: make bench BENCH_ARGS="--configs a1 --clients 50"   (see: shardline-bench --help)

BENCH_ARGS ?=
BENCH_OUT ?= bench/results

.PHONY: bench bench-durable bench-smoke bench-build bench-peers

bench-build: nats
	cargo build --release --workspace --bins

bench: bench-build ## release build + the full benchmark (A1/A2/A3, sweeps); results in bench/results
	target/release/shardline-bench --sweeps --rounds 5 --out $(BENCH_OUT) $(BENCH_ARGS)

bench-durable: bench-build ## the benchmark in durable mode (fsync in JetStream and SQLite)
	target/release/shardline-bench --durable --rounds 5 --out $(BENCH_OUT) $(BENCH_ARGS)

# Installs Debian's postgresql package if its binaries are missing (scripts/install-postgres.sh);
# the servers run in a temp dir on free loopback ports and are removed after. Not part of
# `make test`. Bounded: 3 rounds of 2 PostgreSQL runs (~12 s each) and 2 A1 runs.
PEERS_ROUNDS ?= 3
bench-peers: bench-build ## PostgreSQL with quorum standbys beside shardline A1 (default + durable), side by side; results in bench/results/peers
	pg_bin="$$(bash scripts/install-postgres.sh | tail -n 1)"; \
	timeout 900 target/release/shardline-bench --peers --pg-bin "$$pg_bin" --rounds $(PEERS_ROUNDS) \
	    --out $(BENCH_OUT)/peers $(BENCH_ARGS)

bench-smoke: nats ## tiny benchmark run (a few hundred requests) so the bench never rots
	cargo build --workspace --bins
	target/debug/shardline-bench --smoke --bin-dir target/debug --out target/bench-smoke $(BENCH_ARGS)

# `make test` also runs the smoke benchmark.
test: bench-smoke
