# trainsvc: the one front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Use uv from PATH, else the one pip installs as a module (see `bootstrap`).
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PY_SRC := $(wildcard packages/*/src services/*/src clients/*/src)
CARGO_MANIFESTS := $(wildcard packages/*/Cargo.toml)
# Every package: the maturin ones (a Cargo.toml beside the pyproject.toml) and the pure-Python ones.
MEMBERS := $(patsubst %/pyproject.toml,%,$(wildcard packages/*/pyproject.toml services/*/pyproject.toml clients/*/pyproject.toml))
RUST_MEMBERS := $(patsubst %/Cargo.toml,%,$(CARGO_MANIFESTS))
PURE_MEMBERS := $(filter-out $(RUST_MEMBERS),$(MEMBERS))
DASHBOARD_WEB := clients/dashboard/web
DIST_DIR ?= dist
# The engine's wheels: maturin links with zig against glibc 2.17, so the abi3 wheel is
# manylinux2014 on any Linux host (no manylinux container needed).
MATURIN := $(UV) tool run --from 'maturin>=1.7,<2' --with 'ziglang>=0.13' maturin
# pytest runs on two xdist workers, whole files each (a module's servers and clusters
# start once), the modules marked slow(seconds) first, longest first (conftest.py).
# PYTEST_WORKERS=0 runs in one process. The slowest tests are listed after every run,
# so a growing suite shows where its time goes.
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?= -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=30
FUZZ_SECONDS ?= 60

.PHONY: help bootstrap sync browser postgresql run test pytest cargo-test bench fuzz lint fmt typecheck tscheck dist proto

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

bootstrap: ## Install uv if missing (needs only Python and pip)
	@$(UV) --version >/dev/null 2>&1 || command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

sync: bootstrap ## Install every workspace member and the dev tools from uv.lock
	$(UV) sync --locked --all-packages

run: sync ## Run the main job: the service with a demo emergence run and the live dashboard (Ctrl+C stops both)
	@$(UV) run --no-sync trainsvc-dashboard --server 127.0.0.1:50051 --listen 127.0.0.1:5173 & dash=$$!; \
	trap 'kill $$dash 2>/dev/null; wait $$dash 2>/dev/null' EXIT; \
	echo "Live dashboard: http://127.0.0.1:5173/ (open it in a browser)"; \
	$(UV) run --no-sync trainsvc serve --demo

test: sync browser postgresql lint pytest cargo-test ## Lint (with type checks) and run every test suite

# The browser tests drive Debian's Chromium, never a downloaded browser.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

browser: ## Install Debian's Chromium for the browser tests when missing (or say what to run)
	@.ci/ensure-chromium

# The trajectory-store and shared-registry tests start a throwaway PostgreSQL server from
# Debian's binaries (they skip without them, so a box that cannot install them still runs
# the rest).
postgresql: ## Install Debian's PostgreSQL server for the trajectory-store and registry tests when missing
	@.ci/ensure-postgresql || echo "make test: continuing without PostgreSQL; its tests will skip"

pytest: ## Run the Python tests of every member and the cross-package tests
	$(UV) run --no-sync pytest $(PYTEST_ARGS)

cargo-test: ## Run the Rust tests (`make lint` runs rustfmt and clippy)
	@for m in $(CARGO_MANIFESTS); do \
	  echo "cargo test: $$m"; \
	  cargo test --manifest-path $$m --workspace --release || exit 1; \
	done

bench: bootstrap ## Run the benchmarks (tables of ratios against baselines)
	$(UV) sync --locked --all-packages --group bench
	@for b in bench/*.py; do echo "== $$b"; $(UV) run --no-sync python $$b || exit 1; done

fuzz: ## Fuzz the checkpoint reader and the request validators, FUZZ_SECONDS (default 60) each; print tables
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(UV) run --no-sync pytest packages/checkpoint/tests/test_fuzz.py \
	  services/trainsvc/tests/test_fuzz_validators.py -q -s -p no:cacheprovider -k for_a_while

lint: ## Every static check: ruff, ruff format, mypy, the import layers, rustfmt, clippy, the dashboard's TypeScript
	$(UV) run --no-sync ruff check .
	$(UV) run --no-sync ruff format --check .
	$(UV) run --no-sync mypy $(PY_SRC)
	$(UV) run --no-sync python tools/import_graph.py
	@for m in $(CARGO_MANIFESTS); do \
	  echo "cargo fmt --check, clippy -D warnings: $$m"; \
	  cargo fmt --manifest-path $$m --all -- --check && \
	  cargo clippy --manifest-path $$m --workspace --all-targets --release -- -D warnings || exit 1; \
	done
	@$(MAKE) --no-print-directory tscheck

fmt: ## Format the Python code
	$(UV) run --no-sync ruff format .
	$(UV) run --no-sync ruff check --fix .

typecheck: ## mypy --strict on every member's src/ (part of `lint`)
	$(UV) run --no-sync mypy $(PY_SRC)

# CI (.ci/run) installs the page's locked Node dependencies first; without npm this says so and skips.
tscheck: ## The dashboard's TypeScript type check, tsc --noEmit (part of `lint`)
	@if ! command -v npm >/dev/null 2>&1; then \
	  echo "lint: npm not found, so the dashboard's TypeScript was not type-checked (install Node.js >= 20)" >&2; \
	else \
	  [ -d $(DASHBOARD_WEB)/node_modules ] || (cd $(DASHBOARD_WEB) && npm ci --no-audit --no-fund --loglevel=error) || exit 1; \
	  echo "tsc --noEmit: $(DASHBOARD_WEB)"; \
	  cd $(DASHBOARD_WEB) && npm run --silent typecheck; \
	fi

dist: bootstrap ## Every package's wheel and sdist into dist/ (DIST_DIR=...); the engine's wheel is abi3 manylinux2014
	rm -rf $(DIST_DIR) && mkdir -p $(DIST_DIR)
	@for p in $(PURE_MEMBERS); do \
	  $(UV) build --quiet --sdist --wheel --no-create-gitignore --out-dir $(DIST_DIR) $$p || exit 1; \
	done
	@for p in $(RUST_MEMBERS); do \
	  (cd $$p && $(MATURIN) sdist --out $(abspath $(DIST_DIR)) && \
	    $(MATURIN) build --release --zig --compatibility manylinux2014 --target-dir target/dist \
	      --out $(abspath $(DIST_DIR))) || exit 1; \
	done
	@ls $(DIST_DIR)

proto: ## Regenerate the committed gRPC/protobuf bindings (services/trainsvc-api) from proto/
	$(UV) run --no-sync python services/trainsvc-api/scripts/generate_proto.py
