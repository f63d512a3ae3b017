#!/usr/bin/env bash
# Run every test and close with one plain totals line ("tests: N passed, N failed").
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --no-fail-fast -- --show-output 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
./scripts/ipvlan-tests.sh 2>&1 | tee -a "$log"
rc2=${PIPESTATUS[0]}
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
[ "$rc" -eq 0 ] && [ "$rc2" -eq 0 ]
