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

.PHONY: all build run test deps vet unit clean

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

test: deps vet
	$(GO) test -timeout $(TEST_TIMEOUT) ./...

clean:
	rm -rf bin results
