# shardline — see README.md. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

NATS_SERVER_BIN := $(CURDIR)/.tools/bin/nats-server
VENV := $(CURDIR)/.venv

.PHONY: help run stop build test lint clean nats venv chromium nemesis

help: ## list the targets
	@grep -hE '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) | \
	    awk 'BEGIN {FS = ":.*## "}; {printf "  make %-8s %s\n", $$1, $$2}'

run: ## build (release) and run nats + manager + gateway on :5000 (restarted if they crash), state in ./data; Ctrl-C stops
	bash scripts/run.sh

stop: ## stop a `make run` started from another terminal (its runner first, then any stray process)
	bash scripts/stop.sh

build: ## cargo build --workspace (debug)
	cargo build --workspace

nats: ## install the pinned nats-server into ./.tools/bin
	bash scripts/install-nats.sh

venv: $(VENV)/.installed ## python venv in ./.venv with the pinned schemathesis and nats-py

# Re-installed when the pins change; the stamp file makes it a no-op otherwise.
$(VENV)/.installed: tests/python/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
	touch $@

# Debian's chromium, for the dashboard's browser test (testkit/tests/dashboard.rs).
chromium: ## install Debian's chromium (headless browser test of /ui) if it is missing
	@if ! command -v chromium >/dev/null 2>&1; then \
	    sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    echo "installing chromium (apt-get) for the dashboard's browser test"; \
	    $$sudo apt-get update && $$sudo apt-get install -y chromium; \
	fi

test: nats venv chromium ## install nats-server, the python tools and chromium, build the debug binaries, run every test
	cargo build --workspace --bins
	@if docker info >/dev/null 2>&1; then \
	    echo "Docker engine reachable: building the images for the Docker end-to-end tests"; \
	    $(MAKE) --no-print-directory images; \
	else \
	    echo "Docker end-to-end tests: SKIPPED (no Docker engine reachable)"; \
	fi
	@if cargo nextest --version >/dev/null 2>&1; then \
	    echo "NATS_SERVER_BIN=$(NATS_SERVER_BIN) cargo nextest run --workspace --no-fail-fast"; \
	    NATS_SERVER_BIN="$(NATS_SERVER_BIN)" cargo nextest run --workspace --no-fail-fast; \
	else \
	    echo "cargo-nextest not found; using cargo test"; \
	    NATS_SERVER_BIN="$(NATS_SERVER_BIN)" cargo test --workspace --no-fail-fast; \
	fi

# Every nemesis scenario (testkit/tests/nemesis.rs), ignored ones included, each fault held
# SHARDLINE_NEMESIS_SECS seconds (default 20 here; `make test` runs them with 3). Bounded:
# 10 scenarios of at most ~2 min each.
NEMESIS_SECS ?= 20
nemesis: ## the nemesis suite (Docker): faults under load, histories checked for linearizability
	@if docker info >/dev/null 2>&1; then \
	    $(MAKE) --no-print-directory images && \
	    SHARDLINE_NEMESIS_SECS=$(NEMESIS_SECS) timeout 1200 cargo test -p testkit --test nemesis -- \
	        --include-ignored --nocapture --test-threads 1; \
	else echo "nemesis: SKIPPED: no Docker engine reachable (docker info failed)"; fi

lint: ## cargo fmt --check and clippy with warnings as errors
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

clean: docker-clean ## remove ./data (run state), cargo build output and everything Docker-side the project made
	rm -rf ./data
	cargo clean

include docker/docker.mk
include bench/bench.mk
