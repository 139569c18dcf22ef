# Flotilla's entry points. `make run` and `make test` are the two set-up commands of the
# README; `make verify` is the read-only gate (fmt, clippy, tests, layer check).

SHELL := /bin/bash
# Builds share one target dir outside the clone, so RocksDB's C++ (about 15 minutes on
# two cores) is compiled once per machine, not once per checkout.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/flotilla/target
CARGO ?= cargo
FLOTILLA := $(CARGO_TARGET_DIR)/debug/flotilla
NODES ?= 3

# Crates that must never depend on tonic, prost or rocksdb (docs/ARCHITECTURE.md).
CORE_CRATES := flotilla-types flotilla-storage flotilla-partition flotilla-metadata flotilla-raft flotilla-node

.PHONY: run build test verify fmt-check clippy layers fix deps clean-data bench

deps:
	@./.ci/install-deps

# Every build selects the whole workspace with all targets, as `cargo test --workspace`
# does, so that features unify the same way each time and the RocksDB build (whose
# build-time dependencies share features with every proc-macro) is never redone.
build: deps
	$(CARGO) build --workspace --all-targets

## Start a local three-node cluster (data in ./.flotilla, kept across restarts).
run: build
	$(FLOTILLA) dev --nodes $(NODES)

## Every test.
test: deps
	$(CARGO) test --workspace --no-fail-fast

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## The architecture invariants that cargo can check.
layers:
	@fail=0; \
	for c in $(CORE_CRATES); do \
	  if $(CARGO) tree -p $$c -e normal --prefix none 2>/dev/null | grep -Eq '^(tonic|prost|rocksdb|librocksdb-sys) '; then \
	    echo "layer check: $$c depends on tonic, prost or rocksdb:"; \
	    $(CARGO) tree -p $$c -e normal -i tonic 2>/dev/null | head -5; \
	    $(CARGO) tree -p $$c -e normal -i rocksdb 2>/dev/null | head -5; \
	    fail=1; \
	  fi; \
	done; \
	if $(CARGO) tree -p flotilla-client -e normal --prefix none --depth 1 | grep -E '^flotilla-' | grep -Ev '^flotilla-(client|proto|types) '; then \
	  echo "layer check: flotilla-client may depend on flotilla-proto and flotilla-types only"; fail=1; \
	fi; \
	if [ $$fail = 0 ]; then echo "layer check: ok"; fi; \
	exit $$fail

verify: deps fmt-check clippy layers test

fix:
	$(CARGO) fmt --all
	$(CARGO) clippy --workspace --all-targets --fix --allow-dirty --allow-staged -- -D warnings

## The produce benchmark against a running cluster (make run in another terminal).
bench: build
	$(FLOTILLA) bench produce --topic bench --create --partitions 6 --producers 64 --record-size 1024 --duration-secs 20

clean-data:
	rm -rf .flotilla
