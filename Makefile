# pageman-harness: `make run` runs the main job, `make test` runs every test.
# Build products outside bin/ and results/ live in the cache directory:
# ${XDG_CACHE_HOME:-$HOME/.cache}/pageman-harness.

GO       ?= go
BIN      := bin/pageman-harness
ARGS     ?=
SUBJECT  ?= pageman
# The end-to-end test boots a kernel that may need a cold build (~15 min on
# 2 cores); the whole suite stays inside CI's 90 minutes.
TEST_TIMEOUT ?= 80m
FUZZ_TIME    ?= 20s

.PHONY: all build run test deps vet unit clean mutants bench

all: build

build:
	$(GO) build -o $(BIN) ./harness/cmd/pageman-harness

deps: build
	$(BIN) deps

run: deps
	$(BIN) run --subject $(SUBJECT) $(ARGS)

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

# Fast tests only: parsers, model, scenario files; no VM.
unit:
	$(GO) test -short ./...

# Unit, property and end-to-end tests, then a short fuzzing of the model.
test: deps vet
	$(GO) test -timeout $(TEST_TIMEOUT) ./...
	$(GO) test -run XXX -fuzz FuzzSequences -fuzztime $(FUZZ_TIME) ./reference

clean:
	rm -rf bin results

# Every deliberately wrong Pageman in guest/mutants against all scenarios;
# ends with "mutants caught: X/Y". Kernel mutants each build a kernel once
# (ccache keeps that to a couple of minutes).
mutants: deps
	$(BIN) mutants $(ARGS)

# The cost of allocations and frees in the guest: unpatched kernel, and the
# Pageman kernel without and with the module (bench/*.scn).
bench: deps
	$(BIN) bench $(ARGS)
