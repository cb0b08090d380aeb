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
  node "$bench" || status=1
done
exit $status
