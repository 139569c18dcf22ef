# Flotilla's entry points. `make run` and `make test` are the two set-up commands of the
# README; `make verify` is the read-only gate (fmt, clippy, tests, layer check).

SHELL := /bin/bash
# Builds share one target dir outside the clone, so RocksDB's C++ (about 15 minutes on
# two cores) is compiled once per machine, not once per checkout.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/flotilla/target
CARGO ?= cargo
FLOTILLA := $(CARGO_TARGET_DIR)/debug/flotilla
# The optimised binary that `make run` and `make bench` use (the release profile).
FLOTILLA_RELEASE := $(CARGO_TARGET_DIR)/release/flotilla
# RocksDB's static library as the test build compiled it (same sources, -O3, NDEBUG):
# the release build links it instead of compiling RocksDB's C++ a second time. Without
# it (a machine that never ran `make build`), the release build compiles its own.
ROCKSDB_BUILT = $(firstword $(wildcard $(CARGO_TARGET_DIR)/debug/build/librocksdb-sys-*/out/librocksdb.a))
NODES ?= 3

# Crates that must never depend on tonic, prost or rocksdb (docs/ARCHITECTURE.md).
CORE_CRATES := flotilla-types flotilla-storage flotilla-partition flotilla-metadata flotilla-raft flotilla-node

.PHONY: run build build-release test verify fmt-check clippy layers fix deps clean-data bench sim sim-ci sim-determinism sim-planted sim-madsim cargo-test fuzz

deps:
	@./.ci/install-deps

# Every build selects the whole workspace with all targets, as `cargo test --workspace`
# does, so that features unify the same way each time and the RocksDB build (whose
# build-time dependencies share features with every proc-macro) is never redone.
build: deps
	$(CARGO) build --workspace --all-targets

## The optimised `flotilla` binary: Flotilla's crates and every dependency at opt-level 3,
## no debug assertions (line tables kept, for profiles).
build-release: deps
	@if [ -n "$(ROCKSDB_BUILT)" ]; then \
	  echo "linking RocksDB from $(dir $(ROCKSDB_BUILT))"; \
	  export ROCKSDB_LIB_DIR="$(dir $(ROCKSDB_BUILT))" ROCKSDB_STATIC=1; \
	fi; \
	$(CARGO) build --release -p flotilla-cli --bin flotilla

## Start a local three-node cluster of the optimised build (data in ./.flotilla, kept
## across restarts).
run: build-release
	$(FLOTILLA_RELEASE) dev --nodes $(NODES)

## Every test: unit, in-process and end-to-end tests, then the simulation suites.
test: deps
	@fail=0; \
	$(MAKE) --no-print-directory cargo-test || fail=1; \
	$(MAKE) --no-print-directory sim-ci || fail=1; \
	$(MAKE) --no-print-directory sim-madsim || fail=1; \
	$(MAKE) --no-print-directory chaos-ci-if-able || fail=1; \
	exit $$fail

cargo-test:
	$(CARGO) test --workspace --no-fail-fast

# ---- Simulation (docs/simulation.md) ----
SIM := $(CARGO_TARGET_DIR)/debug/flotilla-sim
# Seeds per CI run, sized to finish in about ten minutes on two cores.
SIM_CI_SEEDS ?= 300
# A run's profile: controller (four nodes; drain, reassign, node kill; the default) or
# classic (three nodes, the original faults). Regression seeds name their own.
PROFILE ?= controller
# Each planted bug, and the anomalies that must name it. LogReversion and VoteBehindLog
# are openraft's own safety assertions stopping a node (a follower's durable log went
# back; a node's vote is older than its log). They run with the classic profile, and
# ack-before-flush with the controller profile too (PLANTED_CONTROLLER), which runs clean
# of LogReversion without a planted bug since replicas are deleted only once their
# group's leader releases them (docs/simulation.md).
PLANTED := ack-before-flush=LostWrite,UnseenAtEnd,LogReversion forget-vote=VoteBehindLog \
	fetch-past-commit=InconsistentOffsets,AbortedRead,LostWrite double-apply=Duplicate \
	skip-sequence-check=Duplicate stale-group-commit=StaleCommit
PLANTED_CONTROLLER := ack-before-flush=LostWrite,UnseenAtEnd,LogReversion
PLANTED_SEEDS ?= 200
# A controller seed whose schedule draws drain, reassign and node kill.
SIM_DETERMINISM_CONTROLLER_SEED ?= 27

## make sim: the CI sweep; make sim SEEDS=N [START=S] [PROFILE=classic]: a larger one;
## make sim SEED=S [PROFILE=classic] [PLANT=bug]: replay one seed with its full trace.
sim: build
ifdef SEED
	$(SIM) --seed $(SEED) --profile $(PROFILE) $(if $(PLANT),--plant $(PLANT))
else
	$(SIM) --seeds $(or $(SEEDS),$(SIM_CI_SEEDS)) --profile $(PROFILE) $(if $(START),--start $(START)) $(if $(PLANT),--plant $(PLANT))
endif

## What CI runs: the sweep (controller profile, regression seeds included, each with its
## own profile), the determinism check, and the planted bugs, each of which the sweep
## must find.
sim-ci: build
	$(SIM) --seeds $(SIM_CI_SEEDS) --profile controller
	$(MAKE) --no-print-directory sim-determinism sim-planted

## Two classic seeds and one controller seed (drain, reassign and node kill all drawn),
## each run twice: the trace digests must match.
sim-determinism: build
	$(SIM) --check-determinism 7 --profile classic
	$(SIM) --check-determinism 1234 --profile classic
	$(SIM) --check-determinism $(SIM_DETERMINISM_CONTROLLER_SEED) --profile controller

sim-planted: build
	@fail=0; for p in $(PLANTED); do \
	  bug=$${p%%=*}; kinds=$${p#*=}; \
	  $(SIM) --plant $$bug --profile classic --seeds $(PLANTED_SEEDS) --expect-anomaly $$kinds > $(CARGO_TARGET_DIR)/planted-$$bug.log; rc=$$?; \
	  tail -1 $(CARGO_TARGET_DIR)/planted-$$bug.log; [ $$rc = 0 ] || fail=1; \
	done; \
	for p in $(PLANTED_CONTROLLER); do \
	  bug=$${p%%=*}; kinds=$${p#*=}; \
	  $(SIM) --plant $$bug --profile controller --seeds $(PLANTED_SEEDS) --expect-anomaly $$kinds > $(CARGO_TARGET_DIR)/planted-$$bug-controller.log; rc=$$?; \
	  tail -1 $(CARGO_TARGET_DIR)/planted-$$bug-controller.log; [ $$rc = 0 ] || fail=1; \
	done; exit $$fail

## Tier 2: the core under madsim, in its own workspace and target dir.
sim-madsim:
	./sim-tests/madsim/run

## The fuzz targets (crates/fuzz, docs/security.md) with many cases; `make test` runs
## 3,000 of each. CASES=N for another number; FLOTILLA_FUZZ_SEED/CASE replay a failure.
fuzz: deps
	FLOTILLA_FUZZ_CASES=$(or $(CASES),200000) $(CARGO) test --workspace --test targets -- --nocapture

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
bench: build-release
	$(FLOTILLA_RELEASE) bench produce --topic bench --create --partitions 6 --producers 64 --record-size 1024 --duration-secs 20

clean-data:
	rm -rf .flotilla

# ---- Chaos suite (chaos/README.md): real nodes in network namespaces; needs root ----
# The runner is its own workspace with its own target dir; the nodes run $(FLOTILLA).
CHAOS_TARGET_DIR ?= $(HOME)/.cache/flotilla/chaos-target
CHAOS := $(CHAOS_TARGET_DIR)/debug/flotilla-chaos
.PHONY: chaos chaos-ci chaos-ci-if-able chaos-runner

chaos-runner:
	cd chaos && CARGO_TARGET_DIR=$(CHAOS_TARGET_DIR) $(CARGO) build

## make chaos: every scenario (about 21 minutes on two cores); make chaos SCENARIO=name [SEED=s]: one;
## PLANT=lying-fsync: fsync that syncs nothing, which the power-loss scenario must catch.
## Reports go to chaos/report/run-<time>/ (index.html, summary.txt, report.json).
chaos: build chaos-runner
	$(CHAOS) run --bin $(FLOTILLA) --scenario $(or $(SCENARIO),all) $(if $(SEED),--seed $(SEED)) $(if $(PLANT),--plant $(PLANT))

## A short subset for CI (about 3 minutes): kill -9 of a leader, a paused leader, a partitioned leader.
chaos-ci: build chaos-runner
	$(CHAOS) run --bin $(FLOTILLA) --scenario ci $(if $(SEED),--seed $(SEED))

# Part of make test: the CI subset where the machine allows it (root, network
# namespaces, iptables); elsewhere it says why and skips.
chaos-ci-if-able:
	@if [ "$$(id -u)" != 0 ]; then echo "chaos-ci: skipped: the chaos suite needs root (chaos/README.md)"; \
	elif ! ip netns add flch-probe 2>/dev/null; then echo "chaos-ci: skipped: network namespaces are not available here"; \
	else ip netns del flch-probe; $(MAKE) --no-print-directory chaos-ci; fi

# ---- Deployment (deploy/README.md, docs/operations.md) ----
.PHONY: image up down
IMAGE ?= flotilla:latest
# The binary the image packages: the optimised one, built when missing, or any
# existing one given as FLOTILLA_BIN=path.
FLOTILLA_BIN ?= $(CARGO_TARGET_DIR)/release/flotilla
CLUSTER ?= three

## The container image, built from scratch around FLOTILLA_BIN and the libraries it links.
image:
	@if [ ! -x "$(FLOTILLA_BIN)" ]; then \
	  if [ "$(FLOTILLA_BIN)" != "$(CARGO_TARGET_DIR)/release/flotilla" ]; then \
	    echo "make image: FLOTILLA_BIN=$(FLOTILLA_BIN) is not an executable"; exit 1; \
	  fi; \
	  $(MAKE) --no-print-directory build-release; \
	fi
	./deploy/image/build.sh "$(FLOTILLA_BIN)" "$(IMAGE)"

## A compose cluster of the image: three nodes, or CLUSTER=six (three zones).
up:
	FLOTILLA_IMAGE=$(IMAGE) ./deploy/compose/cluster.sh up $(CLUSTER)

## Stop and remove the compose cluster's containers (WIPE=1: and its data volumes).
down:
	./deploy/compose/cluster.sh down $(WIPE)
