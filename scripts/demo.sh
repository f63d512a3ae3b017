#!/usr/bin/env bash
# The main job: a demo sandbox through containerd, on built-in defaults.
# A pod namespace is prepared the way CNI's bridge plugin leaves one (veth eth0 with an address and
# routes, the far end in a peer namespace); a private containerd runs the sandbox with
# `ctr run --runtime io.containerd.kata.v2 --with-ns network:<netns>`; the VM, whose guest runs
# this project's agent reached over hybrid vsock, gets the pod's network, and the peer pings it.
# Everything is removed at the end. DEMO_AGENT=kata runs it on kata's own agent instead: the image
# `KATA_AGENT=<path to a kata-agent binary> make guest-image` builds (no kata agent is kept here).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/kata-net-demo.XXXXXX)
pod=kata-net-demo-pod; peer=kata-net-demo-peer; id=demo-sandbox
img="$root/target/guest-image"
case "${DEMO_AGENT:-ours}" in
  kata) initrd=initrd-kata.img
    [ -f "$img/$initrd" ] || { echo "DEMO_AGENT=kata: $img/$initrd missing; build it with KATA_AGENT=<path> make guest-image" >&2; exit 2; } ;;
  ours) initrd=initrd.img ;;
  *) echo "DEMO_AGENT must be kata or ours" >&2; exit 2 ;;
esac
cleanup() {
  set +e
  if [ -S "$work/containerd.sock" ]; then
    ctr -a "$work/containerd.sock" task kill -s SIGKILL "$id" >/dev/null 2>&1
    sleep 1
    ctr -a "$work/containerd.sock" task rm "$id" >/dev/null 2>&1
    ctr -a "$work/containerd.sock" container rm "$id" >/dev/null 2>&1
  fi
  [ -n "${cpid:-}" ] && kill "$cpid" 2>/dev/null && wait "$cpid" 2>/dev/null
  grep " $work/" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l
  ip netns del "$pod" 2>/dev/null; ip netns del "$peer" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

echo "== pod namespace $pod, as CNI leaves it"
ip netns add "$pod"; ip netns add "$peer"
ip -n "$pod" link add eth0 type veth peer name veth0 netns "$peer"
ip -n "$pod" link set eth0 address 02:00:0a:58:00:05 mtu 1450 up
ip -n "$pod" addr add 10.88.0.5/24 dev eth0
ip -n "$pod" route add default via 10.88.0.1
ip -n "$peer" link set veth0 mtu 1450 up
ip -n "$peer" addr add 10.88.0.1/24 dev veth0
"$root/target/release/kata-runtime" kata-network scan-netns "/run/netns/$pod"

cat > "$work/containerd.toml" <<TOML
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
[ttrpc]
  address = "$work/containerd.sock.ttrpc"
TOML
cat > "$work/configuration.toml" <<TOML
[hypervisor.qemu]
kernel = "$img/vmlinuz"
initrd = "$img/$initrd"
[runtime]
run_dir = "$work/run"
TOML
echo "== containerd (private root and socket) with containerd-shim-kata-v2"
PATH="$root/target/release:$PATH" KATA_CONF_FILE="$work/configuration.toml" \
  containerd --config "$work/containerd.toml" >"$work/containerd.log" 2>&1 &
cpid=$!
for _ in $(seq 100); do [ -S "$work/containerd.sock" ] && break; sleep 0.1; done
"$root/scripts/build-test-image.sh" "$work/image.tar"
ctr -a "$work/containerd.sock" images import "$work/image.tar" >/dev/null
start=$(date +%s.%N)
ctr -a "$work/containerd.sock" run -d --runtime io.containerd.kata.v2 --with-ns "network:/run/netns/$pod" \
  --annotation "io.katacontainers.sandbox_dns=nameserver 10.96.0.10" localhost/kata-net-pause:latest "$id"
echo "sandbox started in $(echo "$(date +%s.%N) - $start" | bc) s"
ctr -a "$work/containerd.sock" task ls
echo "== inside the pod namespace: eth0 redirected to the VM's TAP"
ip -n "$pod" -br link
kr() { KATA_CONF_FILE="$work/configuration.toml" "$root/target/release/kata-runtime" "$@"; }
echo "== the guest's agent: $(grep -ao '"agent-version":"[0-9.]*"\|guest-agent: ready' "$work/run/$id/console.log" | head -1)"
echo "== the VM's routes, as its agent lists them"
kr kata-network list-routes "$id"
echo "== the peer pings the pod address: the VM answers"
ip netns exec "$peer" ping -c 3 -i 0.3 -W 5 10.88.0.5
echo "== the pod's workload, a container in the VM (ctr task exec), sees its network and reaches the peer"
ctr -a "$work/containerd.sock" task exec --exec-id demo-look "$id" sh -c \
  'ip -o -4 addr show eth0; ip route; ping -c 2 -W 5 10.88.0.1'
echo "== an operator plugs a TAP into the running VM (kata-runtime kata-network)"
ip -n "$pod" tuntap add dev tap-op mode tap
ip -n "$pod" addr add 172.16.0.1/16 dev tap-op
ip -n "$pod" link set tap-op up
iface='{"device":"tap-op","name":"eth-op","IPAddresses":[{"address":"172.16.0.3","mask":"16"}],"hwAddr":"02:42:20:6f:a3:69","mtu":1500}'
echo "$iface" | kr kata-network add-iface "${id:0:8}" -
kr kata-network list-ifaces "$id"
echo '{"dest":"177.17.0.0/24","gateway":"172.16.0.1","device":"eth-op"}' | kr kata-network add-route "$id" -
ip netns exec "$pod" ping -c 2 -i 0.3 -W 5 172.16.0.3
echo "$iface" | kr kata-network del-iface "$id" -
ip -n "$pod" link del tap-op
echo "== teardown"
ctr -a "$work/containerd.sock" task kill -s SIGKILL "$id"
for _ in $(seq 100); do ctr -a "$work/containerd.sock" task ls | grep -q STOPPED && break; sleep 0.1; done
ctr -a "$work/containerd.sock" task rm "$id" >/dev/null
ctr -a "$work/containerd.sock" container rm "$id"
ip -n "$pod" -br link
if ip -n "$pod" link show tap0_kata >/dev/null 2>&1 || tc -n "$pod" qdisc show dev eth0 | grep -q ingress; then
  echo "demo FAILED: runtime devices left behind" >&2; exit 1
fi
for _ in $(seq 100); do pgrep -f "containerd-shim-kata-v2 .*$work/" >/dev/null || break; sleep 0.1; done
if pgrep -f "containerd-shim-kata-v2 .*$work/" >/dev/null; then
  echo "demo FAILED: the shim did not exit after the sandbox's removal" >&2; exit 1
fi
echo "demo OK"
