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
MODELS      := $(DEPS)/models

# cgo finds the TFLite headers (the package's and our own two) and the library;
# the rpath lets test binaries and bin/ run in place without LD_LIBRARY_PATH.
export CGO_ENABLED := 1
export CGO_CFLAGS  := -O2 -I$(ROOT)/agent/runtime/include -I$(DEPS)/tflite/include
export CGO_LDFLAGS := -L$(TFLITE_LIB) -Wl,-rpath,$(TFLITE_LIB)
export OUTPOST_MODELS := $(MODELS)

GO        ?= go
GOFLAGS_TEST ?=
TEST_TIMEOUT ?= 20m
BENCHTIME ?= 1x
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/outpost-edge/outpost/agent/version.Version=$(VERSION)

.PHONY: all setup build test test-short vet bench run fuzz clean env

all: build

# setup: Debian packages the tests use, the TFLite runtime and the test models.
setup:
	@$(ROOT)/scripts/setup.sh

build: setup
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/...

vet: setup
	$(GO) vet ./...
	CGO_ENABLED=0 $(GO) vet $$(CGO_ENABLED=0 $(GO) list ./... 2>/dev/null | grep -v /agent/runtime)

test: setup
	$(GO) test -race -timeout $(TEST_TIMEOUT) $(GOFLAGS_TEST) ./...

# bench prints the comparable figures: ratios measured back to back in one run.
bench: setup
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) -timeout 30m ./...

run: build
	bin/outpost-agent inspect $(MODELS)/face_detection_short_range.tflite

# env prints the cgo settings for use outside make: eval "$$(make -s env)"
env:
	@echo 'export CGO_ENABLED=1'
	@echo 'export CGO_CFLAGS="$(CGO_CFLAGS)"'
	@echo 'export CGO_LDFLAGS="$(CGO_LDFLAGS)"'
	@echo 'export OUTPOST_MODELS="$(MODELS)"'

clean:
	rm -rf bin dist
