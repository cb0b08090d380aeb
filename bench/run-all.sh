#!/usr/bin/env bash
# make bench: compiles the benchmarks and runs each one in turn. Figures are for this machine only;
# compare the ratios each benchmark prints, measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
npx --no-install tsc -b bench
status=0
for bench in dist/bench/*.bench.js; do
  name=$(basename "$bench" .bench.js)
  if [ -n "${BENCH:-}" ] && [[ "$name" != *"$BENCH"* ]]; then continue; fi
  printf '\n##### %s\n' "$name"
  # The benchmark process (the load generator) gets a larger young generation; the servers it forks run
  # with the default heap, as in production (see bench/support/server-process.ts). Node's HTTP/2
  # client keeps part of every call alive through young-generation collections, so with the
  # default size its own multi-millisecond pauses land in every peer's tail latency.
  node "--max-semi-space-size=${BENCH_CLIENT_SEMI_SPACE_MB:-64}" "$bench" || status=1
done
exit $status
