#!/usr/bin/env bash
# Runs every check: formatting, lint, type check, then the whole test suite (unit and integration,
# with real agent processes on loopback). Run scripts/setup.sh first.
set -uo pipefail
cd "$(dirname "$0")/.."
deno=.tools/node_modules/.bin/deno
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

"$deno" fmt --check && "$deno" lint &&
  "$deno" check main.ts 'src/**/*.ts' 'ffi/**/*.ts' 'tests/**/*.ts' 'bench/**/*.ts' || exit 1

NO_COLOR=1 "$deno" test --allow-all tests/ 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# Deno's summary reads "ok | 57 passed (12 steps) | 0 failed"; restate it in the plain form CI reads.
summary=$(grep -E '^(ok|FAILED) \| [0-9]+ passed' "$log" | tail -1)
passed=$(sed -E 's/.*\| ([0-9]+) passed.*/\1/' <<<"$summary")
failed=$(sed -E 's/.*\| ([0-9]+) failed.*/\1/' <<<"$summary")
echo "${passed:-0} passed, ${failed:-0} failed"
exit "$status"
