#!/usr/bin/env bash
# Run the ipvlan tests where the kernel has ipvlan; say so plainly where it does not.
# They are #[ignore]d in the normal run, so here they count as "ignored", never as passed.
set -euo pipefail
ns="knt-ipvlan-probe-$$"
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip -n "$ns" link add p0 type veth peer name p1
if ip -n "$ns" link add ipv0 link p0 type ipvlan mode l2 2>/dev/null; then
  echo "ipvlan: the kernel has it; running the ipvlan tests"
  cargo test -p tests --test scan -- --ignored ipvlan
else
  echo "ipvlan: this kernel has no ipvlan support; the ipvlan tests were NOT run (reported as ignored, not passed)"
fi
