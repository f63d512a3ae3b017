#!/usr/bin/env bash
# Build the test VM's guest image: a kernel from Debian's cloud kernel package (downloaded and
# unpacked, never installed on the host) and an initramfs with busybox, the guest agent (static),
# ipvsadm, conntrack with their libraries, and the kernel modules the guest needs. Only when
# KATA_AGENT=<path to a kata-agent binary> is given (a user's own, e.g. from a kata release): a
# second initramfs, initrd-kata.img, the same but for its init: that agent with the glibc
# libraries it links, as PID 1. Nothing built by another project is kept in this repository.
#
# Cached and idempotent: the kernel is fetched once; the initramfs is rebuilt only when its
# inputs change. Output: $GUEST_IMAGE_DIR (default target/guest-image): vmlinuz, initrd.img,
# kernel-version.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${GUEST_IMAGE_DIR:-$root/target/guest-image}
cache="$out/cache"
mkdir -p "$cache"

log() { echo "guest-image: $*"; }

# --- the guest agent, static (glibc's static libc; the machine has no musl target) ---------------
log "building the static guest agent"
(cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$root/target/guest" \
  cargo build --release --quiet -p guest-agent --target x86_64-unknown-linux-gnu)
agent="$root/target/guest/x86_64-unknown-linux-gnu/release/guest-agent"
ldd "$agent" 2>&1 | grep -qE 'statically linked|not a dynamic' || {
  echo "guest-image: $agent is not static" >&2; exit 1; }

# --- kata's agent: only the one the user names ------------------------------------------------------
kata_agent=${KATA_AGENT:-}
if [ -n "$kata_agent" ]; then
  case $kata_agent in /*) ;; *) kata_agent="$PWD/$kata_agent" ;; esac
  [ -f "$kata_agent" ] && [ -x "$kata_agent" ] || {
    echo "guest-image: KATA_AGENT=$kata_agent is not an executable file" >&2; exit 1; }
  "$kata_agent" --version 2>/dev/null | grep -q '^kata-agent version' || {
    echo "guest-image: KATA_AGENT=$kata_agent is not kata's agent (its --version does not say kata-agent)" >&2; exit 1; }
  log "kata's agent: $kata_agent ($("$kata_agent" --version | head -1))"
else
  # An image built earlier with another agent must not be booted as if it were current.
  rm -f "$out/initrd-kata.img"
  log "KATA_AGENT not given: initrd-kata.img is not built (the kata pass of the tests will not run)"
fi

# --- the kernel ------------------------------------------------------------------------------------
if [ ! -f "$cache/kernel.done" ]; then
  if ! apt-cache policy linux-image-cloud-amd64 | grep -q 'Candidate: [0-9]'; then
    apt-get update -qq
  fi
  pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [ -n "$pkg" ] || { echo "guest-image: no cloud kernel package found" >&2; exit 1; }
  log "fetching $pkg"
  rm -rf "$cache/kernel" "$cache"/*.deb
  # _apt cannot write into a root-owned cache directory; download as root, quietly.
  (cd "$cache" && apt-get download -qq -o APT::Sandbox::User=root "$pkg")
  dpkg -x "$cache"/"$pkg"_*.deb "$cache/kernel"
  touch "$cache/kernel.done"
fi
shopt -s nullglob
moddirs=("$cache"/kernel/lib/modules/* "$cache"/kernel/usr/lib/modules/*)
shopt -u nullglob
[ ${#moddirs[@]} -gt 0 ] || { echo "guest-image: the kernel package has no modules" >&2; exit 1; }
kmods=${moddirs[0]}
kver=$(basename "$kmods")
[ -f "$cache/kernel/boot/vmlinuz-$kver" ] || { echo "guest-image: no vmlinuz for $kver" >&2; exit 1; }
[ -f "$kmods/modules.dep" ] || depmod -b "$cache/kernel" "$kver"

# --- what goes into the initramfs -------------------------------------------------------------------
modules=(virtio_pci virtio_net virtio_console vsock vmw_vsock_virtio_transport virtiofs
  ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_lblc ip_vs_lblcr ip_vs_dh ip_vs_sh ip_vs_sed ip_vs_nq
  nf_conntrack nf_conntrack_netlink nfnetlink)
tools=(/usr/sbin/ipvsadm /usr/sbin/conntrack)
for t in /bin/busybox "${tools[@]}"; do
  [ -x "$t" ] || { echo "guest-image: $t missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
done

stamp=$( (sha256sum "$agent" ${kata_agent:+"$kata_agent"} "$0" /bin/busybox "${tools[@]}"; echo "$kver ${modules[*]}") | sha256sum | cut -c1-16)
if [ -f "$out/initrd.img" ] && { [ -z "$kata_agent" ] || [ -f "$out/initrd-kata.img" ]; } && [ "$(cat "$out/initrd.stamp" 2>/dev/null)" = "$stamp" ]; then
  log "up to date ($kver)"
  exit 0
fi

tree="$out/initramfs.d"
rm -rf "$tree"
mkdir -p "$tree"/{bin,sbin,dev,proc,sys,run,tmp,etc,root,lib/modules/"$kver"}
cp /bin/busybox "$tree/bin/busybox"
cp "$agent" "$tree/sbin/guest-agent"
strip "$tree/sbin/guest-agent"
for t in "${tools[@]}"; do
  cp "$t" "$tree/sbin/"
  ldd "$t" | awk '/=> \// {print $3} /^[ \t]*\/lib/ {print $1}' | while read -r lib; do
    mkdir -p "$tree$(dirname "$lib")"
    cp -L "$lib" "$tree$lib"
  done
done

# Modules and everything they depend on, per modules.dep.
declare -A seen=()
add_module() {
  local name=$1 line path dep
  line=$(grep -E "(^|/)${name//_/[_-]}\.ko(\.[a-z]+)?:" "$kmods/modules.dep" | head -1) || true
  if [ -z "$line" ]; then
    grep -qE "/${name//_/[_-]}\.ko" "$kmods/modules.builtin" 2>/dev/null && return 0
    echo "guest-image: module $name not found in $kver" >&2; exit 1
  fi
  path=${line%%:*}
  [ -n "${seen[$path]:-}" ] && return 0
  seen[$path]=1
  mkdir -p "$tree/lib/modules/$kver/$(dirname "$path")"
  cp "$kmods/$path" "$tree/lib/modules/$kver/$path"
  for dep in ${line#*:}; do
    dep=$(basename "$dep"); dep=${dep%%.ko*}
    add_module "$dep"
  done
}
for m in "${modules[@]}"; do add_module "$m"; done
cp "$kmods"/modules.{order,builtin,builtin.modinfo} "$tree/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$tree" "$kver"

cat > "$tree/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
echo "guest: init at $(cut -d' ' -f1 /proc/uptime)s"
for m in virtio_pci virtio_net virtio_console vsock vmw_vsock_virtio_transport virtiofs; do modprobe "$m"; done
ip link set lo up
hostname sandbox
args="--serial agent.channel.0"
[ -e /dev/vsock ] && args="$args --vsock 1024"
# Connection tracking always on (enable_hooks), as on a node with a firewall, and IPVS keeping
# its connections in it (vs/conntrack): they get entries, which `kata-ipvs cleanup` deletes.
(modprobe nf_conntrack enable_hooks=1
 modprobe -a ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_lblc ip_vs_lblcr ip_vs_dh ip_vs_sh ip_vs_sed ip_vs_nq \
   nf_conntrack_netlink
 echo 1 > /proc/sys/net/ipv4/vs/conntrack) &
while true; do
  echo "guest: starting agent ($args) at $(cut -d' ' -f1 /proc/uptime)s"
  /sbin/guest-agent $args
  echo "guest: agent exited with $?"
  sleep 1
done
INIT
chmod +x "$tree/init"

pack() { (cd "$tree" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) > "$out/$1.tmp"; mv "$out/$1.tmp" "$out/$1"; }
pack initrd.img

# The same tree with kata's agent as PID 1: init loads the modules, unmounts what it mounted
# (the agent mounts /proc, /sys, /dev, /run and cgroups itself) and execs it. The agent reads
# its options from the kernel command line (agent.*) and listens on vsock port 1024.
rm -f "$tree/sbin/guest-agent" "$tree/sbin/ipvsadm" "$tree/sbin/conntrack"
mkdir -p "$tree/usr/bin"
# kata's agent binds the sandbox's DNS over /etc/resolv.conf only where that file exists.
: > "$tree/etc/resolv.conf"
cp "$kata_agent" "$tree/usr/bin/kata-agent"
ldd "$kata_agent" | awk '/=> \// {print $3} /^[ \t]*\/lib/ {print $1}' | while read -r lib; do
  mkdir -p "$tree$(dirname "$lib")"
  cp -L "$lib" "$tree$lib"
done
cat > "$tree/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "guest: init (kata-agent) at $(cut -d' ' -f1 /proc/uptime)s"
for m in virtio_pci virtio_net virtio_console vsock vmw_vsock_virtio_transport virtiofs; do modprobe "$m"; done
umount /sys
umount /proc
exec /usr/bin/kata-agent
INIT
chmod +x "$tree/init"
# kata's debug console (agent.debug_console) runs /bin/bash without an argv[0], which busybox
# needs to pick its applet; a script gives it one.
printf '#!/bin/busybox sh\nexec /bin/busybox sh "$@"\n' > "$tree/bin/bash"
chmod +x "$tree/bin/bash"
pack initrd-kata.img
cp "$cache/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
echo "$kver" > "$out/kernel-version"
echo "$stamp" > "$out/initrd.stamp"
rm -rf "$tree"
log "built $out (kernel $kver, initrd $(du -h "$out/initrd.img" | cut -f1), initrd-kata $(du -h "$out/initrd-kata.img" | cut -f1))"
