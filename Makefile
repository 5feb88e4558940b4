# Tern developer tasks. `make` alone lists them.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

CARGO ?= cargo
# Extra arguments for tern-bench, e.g. make bench BENCH_ARGS='--tasks 100000 --concurrency 256'
BENCH_ARGS ?=

.PHONY: help tools build run test api-fuzz bench bench-scaling deploy-check fmt lint clean distclean

help: ## List the targets
	@echo "Tern developer tasks:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN { FS = ":.*## " } { printf "  make %-10s %s\n", $$1, $$2 }'
	@echo
	@echo "Variables: BENCH_ARGS='...' (tern-bench options), CARGO_TARGET_DIR, TERN_SKIP_BUILD=1 (run/bench),"
	@echo "           TERN_WORKERS=N (delivery-worker processes for run/bench)"

tools: ## Install the pinned nats-server into .tools/ if none suitable is on PATH
	@scripts/nats-server.sh

build: ## Build every binary (release, as `make run` uses)
	$(CARGO) build --release --bins

run: ## Start NATS + all services + a webhook receiver; print a curl; Ctrl-C stops
	@scripts/run.sh

test: ## Run every test (unit, integration against real nats-server, doc tests, API fuzzing)
	@TERN_NATS_SERVER="$$(scripts/nats-server.sh)"; \
	export TERN_NATS_SERVER; \
	echo "TERN_NATS_SERVER=$$TERN_NATS_SERVER"; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast --no-tests=warn; \
		$(CARGO) test --workspace --doc; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi; \
	scripts/schemathesis.sh

api-fuzz: ## Fuzz the public and admin APIs and the callback resolver with schemathesis (part of make test)
	@TERN_NATS_SERVER="$$(scripts/nats-server.sh)" scripts/schemathesis.sh

bench: ## Run every benchmark (scripts/bench-suite.sh), or tern-bench with BENCH_ARGS
	@if [ -n "$(BENCH_ARGS)" ]; then scripts/bench.sh $(BENCH_ARGS); else scripts/bench-suite.sh; fi

bench-scaling: ## Throughput with 1, 2 and 4 delivery-worker processes on one NATS (BENCH_ARGS apply)
	@scripts/bench-scaling.sh $(BENCH_ARGS)

deploy-check: ## Render, validate and lint the Kubernetes manifests and Dockerfile (offline)
	@deploy/check.sh

fmt: ## Format all Rust code
	$(CARGO) fmt --all

lint: ## Clippy on everything, warnings are errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean: ## Remove build output and local run state (.tern: NATS store, logs)
	$(CARGO) clean
	rm -rf .tern

distclean: clean ## Also remove the installed tools (.tools)
	rm -rf .tools
