#!/usr/bin/env bash
# Build the test VM's guest image: a kernel from Debian's cloud kernel package (downloaded and
# unpacked, never installed on the host) and an initramfs with busybox, the guest agent (static),
# ipvsadm, conntrack, iperf3 and ethtool with their libraries, and the kernel modules the guest
# needs. Only when KATA_AGENT=<path to a kata-agent binary> is given (a user's own, e.g. from a kata release): a
# second initramfs, initrd-kata.img, the same but for its init: that agent with the glibc
# libraries it links, as PID 1. Nothing built by another project is kept in this repository.
#
# Cached and idempotent: the kernel is fetched once; the initramfs is rebuilt only when its
# inputs change. Output: $GUEST_IMAGE_DIR (default target/guest-image): vmlinuz, initrd.img,
# rootfs.img (the same guest as a root filesystem image in kata's osbuilder layout),
# boot-initrd.img (loads this kernel's NVDIMM/virtio-blk modules, then boots the image's root),
# kernel-version; with KATA_AGENT also initrd-kata.img and rootfs-kata.img.
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
  nf_conntrack nf_conntrack_netlink nfnetlink
  # What privileged pods load or use (the kernel loads them on demand through the guest's
  # modprobe): bridges and veths, overlayfs, iptables' and nftables' tables.
  bridge br_netfilter veth overlay ip_tables iptable_filter iptable_nat iptable_mangle ip6_tables
  ip6table_filter ip6table_nat nf_nat xt_conntrack xt_MASQUERADE xt_addrtype nf_tables)
# iperf3 and ethtool for the data-path bench and the offload test (`make bench`, containerd.rs).
tools=(/usr/sbin/ipvsadm /usr/sbin/conntrack /usr/bin/iperf3 /usr/sbin/ethtool)
for t in /bin/busybox "${tools[@]}"; do
  [ -x "$t" ] || { echo "guest-image: $t missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
done

stamp=$( (sha256sum "$agent" ${kata_agent:+"$kata_agent"} "$0" /bin/busybox /usr/bin/ip "${tools[@]}"; echo "$kver ${modules[*]}") | sha256sum | cut -c1-16)
if [ -f "$out/initrd.img" ] && [ -f "$out/rootfs.img" ] && [ -f "$out/boot-initrd.img" ] &&
   { [ -z "$kata_agent" ] || { [ -f "$out/initrd-kata.img" ] && [ -f "$out/rootfs-kata.img" ]; }; } && [ "$(cat "$out/initrd.stamp" 2>/dev/null)" = "$stamp" ]; then
  log "up to date ($kver)"
  exit 0
fi

tree="$out/initramfs.d"
rm -rf "$tree"
mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,etc,root,var,lib/modules/"$kver"}
# /var/run is /run (a tmpfs), as on kata's images: kata's agent keeps the sandbox's namespaces
# there, which a read-only root could not hold.
ln -s ../run "$tree/var/run"
cp /bin/busybox "$tree/bin/busybox"
cp "$agent" "$tree/sbin/guest-agent"
strip "$tree/sbin/guest-agent"
# iproute2's ip beside busybox's (which the guest's /init and the tests' reads use): it shows
# what busybox's does not, such as a route's MTU. At /usr/lib/iproute2/ip, off PATH.
mkdir -p "$tree/usr/lib/iproute2"
cp /usr/bin/ip "$tree/usr/lib/iproute2/ip"
for t in "${tools[@]}" /usr/bin/ip; do
  [ "$t" = /usr/bin/ip ] || cp "$t" "$tree/sbin/"
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
  mkdir -p "$mtree/lib/modules/$kver/$(dirname "$path")"
  cp "$kmods/$path" "$mtree/lib/modules/$kver/$path"
  for dep in ${line#*:}; do
    dep=$(basename "$dep"); dep=${dep%%.ko*}
    add_module "$dep"
  done
}
mtree=$tree
for m in "${modules[@]}"; do add_module "$m"; done
cp "$kmods"/modules.{order,builtin,builtin.modinfo} "$tree/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$tree" "$kver"

cat > "$tree/init" <<'INIT'
#!/bin/busybox sh
# On a guest image's read-only root the applets are already linked (at build time).
/bin/busybox --install -s 2>/dev/null
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
if ! touch /etc/.rw 2>/dev/null; then
  # A read-only root (rootfs.img): what the agent writes goes to tmpfs.
  echo "guest: root is read-only ($(grep ' / ' /proc/mounts | cut -d' ' -f1,3,4 | tail -1))"
  mount -t tmpfs tmpfs /tmp
  : > /run/resolv.conf
  mount --bind /run/resolv.conf /etc/resolv.conf
else
  rm -f /etc/.rw
fi
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
# A guest image boots /sbin/init (kata's osbuilder layout); an initramfs boots /init.
ln -sf ../init "$tree/sbin/init"
# Present, so that a read-only root can have the sandbox's DNS bound over it.
: > "$tree/etc/resolv.conf"

pack() { (cd "$tree" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) > "$out/$1.tmp"; mv "$out/$1.tmp" "$out/$1"; }

# A root filesystem image in kata's osbuilder layout, from $tree: a raw disk, a whole number of
# 128 MiB, whose first 2 MiB hold an MBR (partition 1 at 3 MiB: the disk as virtio-blk sees it)
# and, at 4 KiB, an NVDIMM PFN info block (fsdax, data from 2 MiB: the disk as an NVDIMM's pmem
# device sees it, with a second MBR at 2 MiB whose partition 1 starts 1 MiB later). Both
# partitions are the same ext4 filesystem, made from the tree without mounting it.
rootfs_image() {
  local name=$1 fs_mb size_mb img="$out/$1.tmp" fs="$out/$1.ext4"
  (cd "$tree" && chroot . /bin/busybox --install -s)
  fs_mb=$(( $(du -sm "$tree" | cut -f1) + 32 ))
  size_mb=$(( (fs_mb + 3 + 127) / 128 * 128 ))
  rm -f "$img" "$fs"
  truncate -s "$(( size_mb - 3 ))M" "$fs"
  mkfs.ext4 -q -F -b 4096 -m 3 -E root_owner=0:0 -L kata-net-root -d "$tree" "$fs"
  truncate -s "${size_mb}M" "$img"
  python3 - "$img" "$size_mb" <<'PY'
import struct, sys, uuid
path, size = sys.argv[1], int(sys.argv[2]) << 20
MIB = 1 << 20

def mbr(first_lba, sectors):
    # One primary Linux partition, addressed by LBA (CHS fields saturated), boot signature.
    entry = struct.pack('<B3sB3sII', 0, b'\xfe\xff\xff', 0x83, b'\xfe\xff\xff', first_lba, sectors)
    return bytes(440) + uuid.uuid4().bytes[:4] + bytes(2) + entry + bytes(48) + b'\x55\xaa'

def pfn_info(dataoff, length):
    # The kernel's struct nd_pfn_sb (drivers/nvdimm/pfn.h), version 1.2, mode "memmap in RAM",
    # 2 MiB alignment; a label-less namespace has a zero parent uuid. Checksum: fletcher64 over
    # the 4 KiB block (as little-endian u32 words) with the checksum field zero.
    sb = struct.pack('<16s16s16sIHHQQIIII', b'NVDIMM_PFN_INFO\0', uuid.uuid4().bytes, bytes(16),
                     0, 1, 2, dataoff, (length - dataoff) // 4096, 1, 0, 0, 2 * MIB)
    sb += bytes(4088 - len(sb))
    lo = hi = 0
    for (w,) in struct.iter_unpack('<I', sb + bytes(8)):
        lo = (lo + w) & 0xffffffff
        hi = (hi + lo) & 0xffffffff
    return sb + struct.pack('<Q', (hi << 32) | lo)

sectors = (size - 3 * MIB) // 512
with open(path, 'r+b') as f:
    f.write(mbr(3 * MIB // 512, sectors))
    f.seek(4096)
    f.write(pfn_info(2 * MIB, size))
    f.seek(2 * MIB)
    f.write(mbr(MIB // 512, sectors))
PY
  dd if="$fs" of="$img" bs=1M seek=3 conv=notrunc status=none
  rm -f "$fs"
  chmod 0644 "$img"
  mv "$img" "$out/$name"
}

pack initrd.img
rootfs_image rootfs.img

# The initramfs a guest image needs with this kernel, which has the NVDIMM and virtio-blk drivers
# as modules (kata's guest kernel has them built in): it loads them, mounts the root that
# root=, rootfstype= and rootflags= name (read-only with `ro`), and hands over to its /sbin/init.
boot="$out/boot-initrd.d"
rm -rf "$boot"
mkdir -p "$boot"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,newroot,lib/modules/"$kver"}
cp /bin/busybox "$boot/bin/busybox"
mtree=$boot; seen=()
for m in virtio_pci virtio_blk nfit nd_pmem; do add_module "$m"; done
cp "$kmods"/modules.{order,builtin,builtin.modinfo} "$boot/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$boot" "$kver"
cat > "$boot/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
modprobe -a virtio_pci virtio_blk nfit nd_pmem
root= fstype=ext4 flags= mode=rw
for a in $(cat /proc/cmdline); do
  case $a in
    root=*) root=${a#root=} ;; rootfstype=*) fstype=${a#rootfstype=} ;;
    rootflags=*) flags=${a#rootflags=} ;; ro) mode=ro ;;
  esac
done
i=0
while [ ! -b "$root" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
echo "boot-initrd: mounting $root ($fstype, $mode${flags:+,$flags})"
mount -t "$fstype" -o "$mode${flags:+,$flags}" "$root" /newroot || { echo "boot-initrd: cannot mount $root"; sleep 5; poweroff -f; }
umount /proc /sys
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec /bin/busybox switch_root /newroot /sbin/init
INIT
chmod +x "$boot/init"
(cd "$boot" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) > "$out/boot-initrd.img.tmp"
mv "$out/boot-initrd.img.tmp" "$out/boot-initrd.img"
rm -rf "$boot"

# With KATA_AGENT: the same tree with kata's agent as PID 1: init loads the modules, unmounts
# what it mounted (the agent mounts /proc, /sys, /dev, /run and cgroups itself) and execs it. The
# agent reads its options from the kernel command line (agent.*) and listens on vsock port 1024.
if [ -n "$kata_agent" ]; then
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
/bin/busybox --install -s 2>/dev/null
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
  rm -f "$tree/bin/bash"
  printf '#!/bin/busybox sh\nexec /bin/busybox sh "$@"\n' > "$tree/bin/bash"
  chmod +x "$tree/bin/bash"
  pack initrd-kata.img
  rootfs_image rootfs-kata.img
else
  rm -f "$out/rootfs-kata.img"
fi
cp "$cache/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
echo "$kver" > "$out/kernel-version"
echo "$stamp" > "$out/initrd.stamp"
rm -rf "$tree"
log "built $out (kernel $kver, initrd $(du -h "$out/initrd.img" | cut -f1), rootfs.img $(du -h --apparent-size "$out/rootfs.img" | cut -f1)${kata_agent:+, initrd-kata $(du -h "$out/initrd-kata.img" | cut -f1)})"
