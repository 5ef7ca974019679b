# shardline on Docker — included from the main Makefile (`include docker/docker.mk`).
#
#   make images        release binaries + the four FROM-scratch images (no registry needed)
#   make up            compose up: nats, manager (Docker runtime), gateway on :5000
#   make up-cluster    the same with a 3-node NATS cluster, WAL streams replicated 3 times
#   make down          stop and remove the containers (manager-made servers too); keep volumes
#   make all           binaries + images + `make up`
#   make docker-clean  remove every container, network, volume and image this project made
#   make docker-test   the Docker end-to-end tests (testkit/tests/docker.rs)
#
# Everything the project creates is labelled io.shardline.project=<project> (images:
# io.shardline.image=<component>); docker-clean removes exactly those objects.

DOCKER_PROJECT ?= shardline
COMPOSE ?= $(shell docker-compose version >/dev/null 2>&1 && echo docker-compose || echo docker compose)
COMPOSE_RUN = SHARDLINE_PROJECT=$(DOCKER_PROJECT) $(COMPOSE) -p $(DOCKER_PROJECT) -f $(CURDIR)/docker-compose.yml
# The cluster profile: nats-2 and nats-3 join nats; streams get 3 replicas.
CLUSTER_ENV = SHARDLINE_STREAM_REPLICAS=3 \
    SHARDLINE_NATS_CLUSTER_ARGS="--cluster_name shardline --cluster nats://0.0.0.0:6222 --routes nats://nats-1:6222,nats://nats-2:6222,nats://nats-3:6222"
DOCKER_LABEL = io.shardline.project=$(DOCKER_PROJECT)
GATEWAY_PORT ?= 5000

.PHONY: all images up up-cluster down docker-clean docker-test docker-wait

all: images up ## build binaries and images, bring the compose cluster up (gateway on :5000)

images: ## cargo build --release + FROM-scratch images for nats, shard-server, manager, gateway
	cargo build --release --bins
	bash scripts/install-nats.sh
	bash docker/build-images.sh

up: ## docker-compose up (nats, manager with the Docker runtime, gateway on :5000)
	$(COMPOSE_RUN) up -d
	@$(MAKE) --no-print-directory docker-wait

up-cluster: ## like `up`, with a 3-node NATS cluster (profile `cluster`, WAL replicated 3x)
	$(CLUSTER_ENV) $(COMPOSE_RUN) --profile cluster up -d
	@$(MAKE) --no-print-directory docker-wait

docker-wait:
	@for i in $$(seq 1 60); do \
	    if curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:$(GATEWAY_PORT)/healthz 2>/dev/null; then \
	        echo "shardline is up: gateway http://127.0.0.1:$(GATEWAY_PORT)  (docker ps; make down to stop)"; exit 0; \
	    fi; sleep 1; \
	done; echo "gateway not healthy after 60s; see: $(COMPOSE_RUN) logs" >&2; exit 1

down: ## stop and remove the compose services and the manager-made server containers (volumes kept)
	-$(COMPOSE_RUN) --profile cluster stop -t 5 manager
	-ids="$$(docker ps -aq --filter label=$(DOCKER_LABEL) --filter label=io.shardline.role=shard-server)"; \
	    [ -z "$$ids" ] || docker rm -f $$ids >/dev/null
	$(COMPOSE_RUN) --profile cluster down --remove-orphans -t 5

docker-clean: ## remove every container, network, volume and image the project created
	@if docker info >/dev/null 2>&1; then \
	    $(COMPOSE_RUN) --profile cluster down --volumes --remove-orphans -t 2 >/dev/null 2>&1 || true; \
	    ids="$$(docker ps -aq --filter label=io.shardline.project)"; \
	    [ -z "$$ids" ] || docker rm -f -v $$ids >/dev/null; \
	    ids="$$(docker volume ls -q --filter label=io.shardline.project)"; \
	    [ -z "$$ids" ] || docker volume rm -f $$ids >/dev/null; \
	    ids="$$(docker network ls -q --filter label=io.shardline.project)"; \
	    [ -z "$$ids" ] || docker network rm $$ids >/dev/null; \
	    ids="$$(docker images -q --filter label=io.shardline.image | sort -u)"; \
	    [ -z "$$ids" ] || docker rmi -f $$ids >/dev/null; \
	    echo "docker-clean: removed shardline's containers, volumes, networks and images"; \
	else echo "docker-clean: no Docker engine reachable; nothing to do"; fi
	rm -rf target/docker

docker-test: ## Docker end-to-end tests (builds the images first; skipped without a Docker engine)
	@if docker info >/dev/null 2>&1; then \
	    $(MAKE) --no-print-directory images && \
	    cargo test -p testkit --test docker -- --nocapture --test-threads 1; \
	else echo "docker-test: SKIPPED: no Docker engine reachable (docker info failed)"; fi
