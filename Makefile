# Outpost: the one entry point for people and CI.
#
#   make run    serve the face detection test model on 127.0.0.1:8480
#   make test   everything CI runs (fetches what it needs first)
#   make bench  the figures we hold ourselves to

SHELL := /bin/bash
ROOT  := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
DEPS  := $(ROOT)/.deps
GOARCH_HOST := $(shell go env GOARCH)
TFLITE_LIB  := $(DEPS)/tflite/linux_$(GOARCH_HOST)
ORT_LIB     := $(DEPS)/onnxruntime/linux_$(GOARCH_HOST)
MODELS      := $(DEPS)/models

# cgo finds the TFLite headers (the package's and our own two) and the library;
# the rpath lets test binaries and bin/ run in place without LD_LIBRARY_PATH.
# ONNX Runtime is opened with dlopen at first use, found through the same
# rpath (its second entry), so nothing links against it.
export CGO_ENABLED := 1
export CGO_CFLAGS  := -O2 -I$(ROOT)/agent/runtime/include -I$(DEPS)/tflite/include
export CGO_LDFLAGS := -L$(TFLITE_LIB) -Wl,-rpath,$(TFLITE_LIB) -Wl,-rpath,$(ORT_LIB)
export OUTPOST_MODELS := $(MODELS)

GO        ?= go
GOFLAGS_TEST ?=
# Test-only hooks, such as the crash points (internal/crashpoint), exist only
# in binaries built with -tags outposttest; release builds never carry them.
TEST_TAGS ?= outposttest
TEST_TIMEOUT ?= 20m
BENCHTIME ?= 1x
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS   := -s -w -X github.com/outpost-edge/outpost/agent/version.Version=$(VERSION) -X github.com/outpost-edge/outpost/internal/buildinfo.Version=$(VERSION) -X github.com/outpost-edge/outpost/internal/buildinfo.Commit=$(COMMIT)

.PHONY: all setup build test vet bench run demo fuzz clean env test-crashloop test-stress

all: build

# setup: Debian packages the tests use, the TFLite runtime and the test models.
setup:
	@$(ROOT)/scripts/setup.sh

# RELEASE_TAGS: grpcnotrace keeps gRPC's request tracing (golang.org/x/net/trace,
# html/template) out of the agent; with it the linker can drop unused methods
# and gRPC costs 1.3 MB instead of 4.4 (docs/API.md). -tags nogrpc leaves gRPC
# out entirely.
RELEASE_TAGS ?= grpcnotrace

build: setup
	$(GO) build -trimpath -tags '$(RELEASE_TAGS)' -ldflags '$(LDFLAGS)' -o bin/ ./cmd/...

# vet: gofmt, go.mod and go.sum tidy, go vet (with and without the test tags, and
# without gRPC), staticcheck (a go.mod tool: no separate install), the
# generated gRPC code up to date, and a CGO_ENABLED=0 pass.
vet: setup
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt -l: these files are not formatted:"; echo "$$out"; exit 1; fi
	$(GO) mod tidy -diff
	$(GO) vet ./...
	$(GO) vet -tags '$(TEST_TAGS)' ./...
	$(GO) tool staticcheck ./...
	$(GO) vet -tags nogrpc ./agent/daemon/ ./cmd/outpost-agent/
	@$(MAKE) -s --no-print-directory proto-check
	@# Everything outside the TFLite binding and its users builds without cgo.
	CGO_ENABLED=0 $(GO) vet $$($(GO) list -f '{{if not (or .CgoFiles (eq .ImportPath "github.com/mattn/go-tflite"))}}{{$$d := .Deps}}{{.ImportPath}} {{join $$d " "}}{{end}}' ./... | grep -v 'mattn/go-tflite\|/agent/runtime' | cut -d' ' -f1)

# TEST_PKGS and BENCH_PKGS narrow make test and make bench (default all).
TEST_PKGS  ?= ./...
BENCH_PKGS ?= ./...

test: setup
	$(GO) test -race -tags '$(TEST_TAGS)' -timeout $(TEST_TIMEOUT) $(GOFLAGS_TEST) $(TEST_PKGS)

# test-gates: the rollout evidence gates 50 times over (-race): the engine's
# gate tests, then the controller's broker-restart (embedded and Mosquitto),
# controller-restart, require-verified and admin drain tests. `make test`
# runs each once.
GATE_TESTS_UNIT := TestGate|TestCanaryNeverEmpty|TestLateJoinerPlacement|TestWaveTimeout|TestRequireVerified
GATE_TESTS_FLEET := TestBrokerRestartHoldsCanary|TestControllerRestartHoldsCanary|TestChunkTransferResumesAfterBrokerRestart|TestRequireVerifiedThroughBroker|TestAdminDrainsPushOnShutdown
.PHONY: test-gates
test-gates: setup
	$(GO) test -race -count=50 -timeout 20m -run '$(GATE_TESTS_UNIT)' ./fleet/rollout/
	$(GO) test -race -count=50 -timeout 120m -run '$(GATE_TESTS_FLEET)' ./fleet/controller/

# test-nats: the clustered broker, heavier: the 3-node NATS cluster tests,
# then the rollout through it with NATS_KILLS node kills (the node the agent
# is on each time, the dead one restarted in between), NATS_COUNT times.
NATS_KILLS ?= 3
NATS_COUNT ?= 3
# test-drain: fleet/controller's TestBacklogDrain with a bigger backlog, 1,000
# devices of 200 records each, through the embedded broker and Mosquitto.
.PHONY: test-drain
test-drain: setup
	OUTPOST_DRAIN_BATCHES=20 $(GO) test -count=1 -timeout 30m -run '^TestBacklogDrain$$' -v ./fleet/controller/

.PHONY: test-nats
test-nats: setup
	CI=true $(GO) test -race -count=1 -timeout 10m -run 'TestNATS' -v ./internal/testbroker/
	CI=true OUTPOST_NATS_KILLS=$(NATS_KILLS) $(GO) test -race -count=$(NATS_COUNT) -timeout 60m -run '^TestFleetRolloutThroughNATSNodeKill$$' -v ./cmd/outpost-agent/

# bench prints the comparable figures: ratios measured back to back in one run.
# The fleet store's telemetry ingest (records/s, target 50k/s embedded) is
# fleet/registry's BenchmarkTelemetryIngest, and BenchmarkAggregateIngest the
# aggregates merged into time buckets against the raw counters-only path
# (merged/raw); bench-store runs only those two.
bench: setup
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) -timeout 30m $(BENCH_PKGS)

# bench-overhead: the agent's own overhead as a user sees it
# (BenchmarkOverheadBinary: the real binary, a floor server process, a thin
# server process (the floor plus a bare invoke) and a bare C API invoke,
# interleaved; (agent - bare) / floor, (thin - bare) / floor and
# (agent - thin) / floor, default workers and workers 1), requests/s of the
# real binary with 1 and 2 workers (BenchmarkThroughputBinary) and the
# in-process BenchmarkPredictOverhead, and where the agent's time beyond the
# thin server goes (BenchmarkOverheadPhases: both built with the phasetrace
# tag, the median of each phase of a request in each process); make bench
# runs them too. Each run is bounded (400 rounds or 60 s; 1,000 pairs or 60 s).
.PHONY: bench-overhead
bench-overhead: setup
	$(GO) test -run '^$$' -bench 'OverheadBinary|OverheadPhases|ThroughputBinary|PredictOverhead' -benchtime $(BENCHTIME) -count 3 -timeout 30m ./agent/api/

# bench-batch: batch throughput against the bare pool on the same model
# (BenchmarkBatchVsPool in process, BenchmarkBatchBinary through the real
# binary: ratios batch/pool and batch/pool-cpu) and the cost
# of the two output encodings; make bench runs them too.
.PHONY: bench-batch
bench-batch: setup
	$(GO) test -run '^$$' -bench 'BatchVsPool|BatchBinary|EncodeOutputs' -benchmem -benchtime $(BENCHTIME) -timeout 30m ./agent/batch/

# bench-features: the device's per-request feature histograms (models with a
# reference profile) against face_detection_short_range's invoke, measured
# in interleaved pairs: feature/invoke-% (goal at most 2). make bench runs it too.
.PHONY: bench-features
bench-features: setup
	$(GO) test -run '^$$' -bench FeatureCostVsInvoke -benchtime 1x -count 3 -timeout 10m ./agent/daemon/

# bench-engine: controller CPU per device update of the rollout engine at
# 1,000, 3,000 and 10,000 devices (embedded store, simulated acks): the
# cpu-ns/device figures should stay about flat. make bench runs it too.
.PHONY: bench-engine
bench-engine: setup
	$(GO) test -run '^$$' -bench Engine -benchtime 1x -timeout 30m ./fleet/rollout/

# bench-shadow: what mirroring 10% of the traffic to a candidate in shadow
# costs the serving version's clients (BenchmarkShadowBinary: the real
# binary, face_detection_short_range, a test fleet putting the same model on
# trial and aborting it, blocks with no trial and with the shadow
# interleaved; p50 and p99 per arm and shadow/none, 1 and 2 clients).
# make bench runs a short version (3 pairs, one client, about 20 s).
.PHONY: bench-shadow
bench-shadow: setup
	OUTPOST_BENCH_SHADOW=full $(GO) test -run '^$$' -bench ShadowBinary -benchtime 1x -count 3 -timeout 30m ./cmd/outpost-agent/

.PHONY: bench-store
bench-store: setup
	$(GO) test -run '^$$' -bench 'TelemetryIngest|AggregateIngest' -benchtime 3x -timeout 30m ./fleet/registry/

# bench-metrics: issue #12's query figure, a 24-hour metrics query over
# 1,000 devices within 200 ms on the embedded store (BenchmarkMetricsQuery:
# fleet-wide and one device, steps 1h and 1m; ms/query and cpu-ms/query,
# after seeding 1.44 million minute buckets). make bench runs it too.
.PHONY: bench-metrics
bench-metrics: setup
	$(GO) test -run '^$$' -bench MetricsQuery -benchtime 10x -timeout 30m -v ./fleet/registry/

# scale: issue 11's scale run, not in make test: a rollout of a small model
# in waves (1, 10, 50, 100 %) to SCALE_DEVICES simulated devices (each its own
# MQTT client id and session, all in the test process) through the real
# controller binary, three topologies in turn: 2 replicas on PostgreSQL
# through Mosquitto, the leader SIGKILLed at half way; the same through a
# 3-node NATS cluster, the devices on clean sessions; one controller with the
# embedded store and broker. Prints the figures of docs/SCALE.md. Loopback
# only; each rollout is bounded by SCALE_LIMIT, the whole run by the go test
# timeout. SCALE_MODEL_BYTES sizes the model (default 64 KiB): the
# controller's memory should not follow it.
SCALE_DEVICES     ?= 10000
SCALE_TOPOLOGIES  ?= mosquitto,nats,embedded
SCALE_LIMIT       ?= 20m
SCALE_MODEL_BYTES ?= 65536
.PHONY: scale
scale: setup
	CI=true OUTPOST_SCALE_DEVICES=$(SCALE_DEVICES) OUTPOST_SCALE_TOPOLOGIES=$(SCALE_TOPOLOGIES) OUTPOST_SCALE_LIMIT=$(SCALE_LIMIT) \
	  OUTPOST_SCALE_MODEL_BYTES=$(SCALE_MODEL_BYTES) \
	  $(GO) test -count=1 -timeout 120m -run '^TestScale$$' -v ./cmd/outpost-fleet/

# test-crashloop: the long crash loops, CRASH_LOOPS iterations each: the
# telemetry queue and uplink SIGKILLed amid appends and drains (millions of
# records through a real Mosquitto), again with a 1 MB queue bound so the
# kills land amid evictions, and every crash point of the updater.
CRASH_LOOPS ?= 100
test-crashloop: setup
	OUTPOST_CRASH_LOOPS=$(CRASH_LOOPS) $(GO) test -tags '$(TEST_TAGS)' -count 1 -timeout 60m -run '^TestCrashLoop$$' -v ./agent/telemetry/
	OUTPOST_CRASH_LOOPS=$(CRASH_LOOPS) OUTPOST_CRASH_MAX_BYTES=1000000 $(GO) test -tags '$(TEST_TAGS)' -count 1 -timeout 60m -run '^TestCrashLoop$$' -v ./agent/telemetry/
	OUTPOST_CRASH_LOOPS=$(CRASH_LOOPS) $(GO) test -tags '$(TEST_TAGS)' -count 1 -race -timeout 120m -run '^TestCrash$$' ./agent/updater/

# test-stress: make test STRESS_RUNS times in a row while make bench loops
# beside it; stops at the first failure and keeps that run's log in
# STRESS_DIR (it says which file). STRESS_TEST and STRESS_BENCH name the
# targets, e.g. make test-stress STRESS_RUNS=1 TEST_PKGS=./protocol/.
# Every run passes -count=1: a cached test result proves nothing here.
STRESS_RUNS  ?= 10
STRESS_TEST  ?= test
STRESS_BENCH ?= bench
STRESS_DIR   ?= $(ROOT)/stress-logs
test-stress: setup
	@GOFLAGS_TEST='-count=1 $(GOFLAGS_TEST)' MAKE='$(MAKE)' $(ROOT)/scripts/stress.sh $(STRESS_RUNS) $(STRESS_TEST) $(STRESS_BENCH) $(STRESS_DIR)

# demo: a fleet controller and one agent on this machine; a signed model is
# pushed, rolled out and asked for a prediction, then everything stops.
demo: build
	@$(ROOT)/scripts/demo.sh $(ROOT)/bin $(MODELS)/face_detection_short_range.tflite

# run serves the face detection test model on 127.0.0.1:8480 (Ctrl-C stops).
run: build
	bin/outpost-agent inspect $(MODELS)/face_detection_short_range.tflite
	bin/outpost-agent serve --model $(MODELS)/face_detection_short_range.tflite --name face

# fuzz runs every fuzz target for FUZZTIME each (the seeds run in make test).
FUZZTIME ?= 20s
fuzz: setup
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

# proto regenerates the gRPC code (agent/grpcapi/inferencepb) from its
# .proto with Debian's protoc and the protoc-gen-go(-grpc) pinned as go.mod
# tools; proto-check fails when the committed code is not what proto makes.
PROTO_DIR := agent/grpcapi/inferencepb
PROTO_SRC := $(PROTO_DIR)/grpc_predict_v2.proto
.PHONY: proto proto-check
proto:
	@$(MAKE) -s --no-print-directory proto-gen PROTO_OUT=$(ROOT)/$(PROTO_DIR)
proto-check:
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	  $(MAKE) -s --no-print-directory proto-gen PROTO_OUT=$$tmp && \
	  for f in $$tmp/*.go; do \
	    diff -u $(ROOT)/$(PROTO_DIR)/$$(basename $$f) $$f || { echo "proto-check: $(PROTO_DIR) is stale: run make proto"; exit 1; }; \
	  done && echo "proto-check: $(PROTO_DIR) is up to date"
.PHONY: proto-gen
proto-gen:
	@command -v protoc >/dev/null || { echo "proto: protoc is missing (make setup installs protobuf-compiler)"; exit 1; }
	protoc -I $(ROOT)/$(PROTO_DIR) \
	  --plugin=protoc-gen-go=$$($(GO) tool -n protoc-gen-go) \
	  --plugin=protoc-gen-go-grpc=$$($(GO) tool -n protoc-gen-go-grpc) \
	  --go_out=$(PROTO_OUT) --go_opt=paths=source_relative \
	  --go-grpc_out=$(PROTO_OUT) --go-grpc_opt=paths=source_relative \
	  $(ROOT)/$(PROTO_SRC)

# env prints the cgo settings for use outside make: eval "$$(make -s env)"
env:
	@echo 'export CGO_ENABLED=1'
	@echo 'export CGO_CFLAGS="$(CGO_CFLAGS)"'
	@echo 'export CGO_LDFLAGS="$(CGO_LDFLAGS)"'
	@echo 'export OUTPOST_MODELS="$(MODELS)"'

clean:
	rm -rf bin dist

# --- cross builds, emulated tests, packages and footprint (cross/README.md).
# None of these run in `make test`; setup-cross installs the aarch64 toolchain
# and qemu-user-static on first use.
.PHONY: setup-cross cross-arm64 cross-amd64 test-arm64 release-check unit-check footprint

setup-cross:
	@$(ROOT)/cross/setup.sh

# cross-arm64: outpost-agent (cgo) and outpost-fleet for linux/arm64 into
# bin/linux_arm64/, rpath /usr/lib/outpost then the binary's directory.
cross-arm64: setup-cross
	VERSION=$(VERSION) $(ROOT)/cross/build.sh arm64

# test-arm64: runtime and API tests built for arm64, run under qemu with the
# real models; arm64 outputs are compared with an amd64 run made here.
test-arm64: setup-cross
	$(ROOT)/cross/test-arm64.sh

# release-check: goreleaser check, then a snapshot build of the binaries,
# tarballs, .deb and .rpm for amd64 and arm64 into dist/ (nothing published);
# none of the binaries may carry the crash-point test hook, and every agent
# package ships both runtime libraries (TFLite and ONNX Runtime).
release-check: setup-cross unit-check
	$(ROOT)/cross/release.sh check
	$(ROOT)/cross/release.sh release --snapshot --clean --parallelism 1
	$(ROOT)/cross/no-crashpoints.sh dist
	$(ROOT)/cross/package-contents.sh dist

# unit-check: systemd-analyze verify on the unit, where systemd is installed.
unit-check: build
	@$(ROOT)/packaging/verify-unit.sh bin/outpost-agent

# footprint: binary size, start-to-ready, idle and serving RSS of the agent.
footprint: build
	$(GO) run ./scripts/footprint -agent bin/outpost-agent -model $(MODELS)/face_detection_short_range.tflite

# cross-amd64: the release-style amd64 build (rpath /usr/lib/outpost) into
# bin/linux_amd64/, for scripts/install.sh on x86-64 devices.
cross-amd64: setup
	VERSION=$(VERSION) $(ROOT)/cross/build.sh amd64
