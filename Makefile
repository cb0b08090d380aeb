# Tandem: the two commands a newcomer needs are `make dev` and `make test`.
SHELL := /bin/bash
NPX := npx --no-install
BUF := $(NPX) buf

## dev: every service in one process on embedded storage (NATS when one answers on localhost:4222,
## else the in-process bus), with a traffic simulator. Ctrl-C stops it gracefully.
dev: build
	node --enable-source-maps dist/dev/main.js

.PHONY: dev test jest lint typecheck build gen check-gen buf-lint breaking bench clean

## test: everything CI checks: lint, typecheck, generated code, contracts, then all jest suites.
test: lint typecheck check-gen buf-lint breaking jest

## jest: unit, in-process gRPC and integration tests (real NATS started by the harness when
## nats-server is installed; MongoDB tests when MONGODB_URI is set).
jest:
	$(NPX) jest --ci $(JEST_ARGS)

lint:
	$(NPX) eslint --max-warnings 0 .
	$(NPX) prettier --check .

typecheck: build

build:
	$(NPX) tsc -b

## gen: regenerate TypeScript stubs and the reflection descriptor sets from proto/ (and the
## health contract grpc-health-check serves, so reflection describes it too).
gen:
	$(BUF) generate
	mkdir -p gen/descriptor
	$(BUF) build proto -o gen/descriptor/tandem.binpb
	$(BUF) build node_modules/grpc-health-check/proto -o gen/descriptor/health.binpb

## check-gen: fail when gen/ is not what `make gen` produces from proto/.
check-gen: gen
	@git add -N gen >/dev/null 2>&1 || true
	@if ! git diff --quiet --exit-code -- gen; then \
		echo "gen/ is stale: run 'make gen' and commit the result" >&2; git diff --stat -- gen >&2; exit 1; fi

buf-lint:
	$(BUF) lint
	$(BUF) format --diff --exit-code proto

## breaking: every commit among the last 30 that changed proto/ must be wire- and source-compatible
## with its parent (FILE rules). A commit whose message says "BREAKING CHANGE" is exempt.
breaking:
	@bash scripts/check-breaking.sh

## bench: every benchmark in bench/ (BENCH=name runs the ones whose name contains it).
bench:
	@bash bench/run-all.sh

clean:
	rm -rf dist coverage
