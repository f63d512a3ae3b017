#!/usr/bin/env bash
# Run every test and close with one plain totals line ("tests: N passed, N failed").
# The end-to-end tests through containerd run twice: on our test agent, then on kata's own agent
# (KATA_NET_TEST_GUEST=kata: the guest image initrd-kata.img). When something failed, what each
# failed test said (its panic message) is printed again at the end, where a log's tail shows it.
# One test at a time: two VMs booting at once under TCG on 2 cores slow each guest down enough to
# stretch every time limit of the tests; one at a time keeps a run's timing close to a user's.
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --no-fail-fast -- --show-output --test-threads=1 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
echo "== the end-to-end suite again, on kata's agent"
KATA_NET_TEST_GUEST=kata cargo test -p shim --no-fail-fast --test containerd --test kata_network --test cri \
  -- --show-output --test-threads=1 2>&1 | tee -a "$log"
rc3=${PIPESTATUS[0]}
./scripts/ipvlan-tests.sh 2>&1 | tee -a "$log"
rc2=${PIPESTATUS[0]}
if grep -q "^thread '.*' .*panicked at" "$log"; then
  echo "== what the failed tests said"
  grep -a -A2 "^thread '.*' .*panicked at" "$log" | cut -c1-600
fi
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
[ "$rc" -eq 0 ] && [ "$rc2" -eq 0 ] && [ "$rc3" -eq 0 ]
