#!/usr/bin/env bash
# Run every test and close with one plain totals line ("tests: N passed, N failed, N skipped").
# The end-to-end tests through containerd run on our guest agent; when KATA_AGENT names a
# kata-agent binary (`make guest-image` then built initrd-kata.img and rootfs-kata.img with it),
# they run a second time on kata's agent (KATA_NET_TEST_GUEST=kata), with kata_agent.rs, which
# only kata's agent can answer. Without KATA_AGENT that pass is not run: it says so, and its tests
# are counted as skipped, never as passed. When something failed, what each failed test said
# (its panic message) is printed again at the end, where a log's tail shows it.
# One test at a time: two VMs booting at once under TCG on 2 cores slow each guest down enough to
# stretch every time limit of the tests; one at a time keeps a run's timing close to a user's.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
kata_targets=(--test containerd --test kata_network --test cri --test guest_image --test kata_agent)
cargo test --workspace --no-fail-fast -- --show-output --test-threads=1 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
rc3=0
if [ -n "${KATA_AGENT:-}" ]; then
  [ -f "$root/target/guest-image/initrd-kata.img" ] || {
    echo "run-tests: KATA_AGENT is set but target/guest-image/initrd-kata.img is missing (run make guest-image with it)" >&2
    exit 1; }
  echo "== the end-to-end suite again, on kata's agent ($KATA_AGENT)"
  KATA_NET_TEST_GUEST=kata cargo test -p shim --no-fail-fast "${kata_targets[@]}" \
    -- --show-output --test-threads=1 --include-ignored 2>&1 | tee -a "$log"
  rc3=${PIPESTATUS[0]}
else
  n=$(cargo test -q -p shim "${kata_targets[@]}" -- --list --include-ignored 2>/dev/null | grep -c ': test$')
  echo "== the kata pass: NOT RUN (KATA_AGENT=<path to a kata-agent binary> not given): $n tests skipped"
  echo "kata pass not run: $n skipped" >> "$log"
fi
# The end-to-end paths (ctr, CRI, containerd 2.3's bootstrap, the churn) again on containerd 2.1, unpacked
# by install-deps beside the system's 1.6 (tests::containerd::CONTAINERD_BIN_ENV).
c2=/var/lib/kata-net-test/containerd-2.1/usr/bin
if [ ! -x "$c2/containerd" ]; then
  echo "run-tests: $c2/containerd is missing (scripts/install-deps.sh unpacks Debian's containerd 2.1 there)" >&2
  exit 1
fi
echo "== the end-to-end suite again, on containerd 2.1 ($("$c2/containerd" --version))"
KATA_NET_TEST_CONTAINERD_BIN=$c2 cargo test -p shim --no-fail-fast --test containerd --test cri --test bootstrap --test churn \
  -- --show-output --test-threads=1 2>&1 | tee -a "$log"
rc4=${PIPESTATUS[0]}
./scripts/ipvlan-tests.sh 2>&1 | tee -a "$log"
rc2=${PIPESTATUS[0]}
if grep -q "^thread '.*' .*panicked at" "$log"; then
  echo "== what the failed tests said"
  grep -a -A2 "^thread '.*' .*panicked at" "$log" | cut -c1-600
fi
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     /^kata pass not run: [0-9]+ skipped$/ { i += $5 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
[ "$rc" -eq 0 ] && [ "$rc2" -eq 0 ] && [ "$rc3" -eq 0 ] && [ "$rc4" -eq 0 ]
