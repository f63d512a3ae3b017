#!/usr/bin/env bash
# Install the Debian packages the build, the tests, the demo and the benchmark use.
# Idempotent: apt-get runs only when something is missing. Needs root.
set -euo pipefail

# command -> Debian package
declare -A need=(
  [ip]=iproute2
  [tc]=iproute2
  [ping]=iputils-ping
  [gcc]=gcc
  [make]=make
  [unshare]=util-linux
  [nsenter]=util-linux
  [qemu-system-x86_64]=qemu-system-x86
  [cpio]=cpio
  [xz]=xz-utils
  [busybox]=busybox-static
  [ipvsadm]=ipvsadm
  [conntrack]=conntrack
  [depmod]=kmod
  [strip]=binutils
  [containerd]=containerd
  [ctr]=containerd
  [runc]=runc
  [timeout]=coreutils
  [find]=findutils
  [pgrep]=procps
  [sysctl]=procps
  [bc]=bc
  [hostname]=hostname
  [protoc]=protobuf-compiler
  [/usr/lib/cni/bridge]=containernetworking-plugins
  [/usr/lib/qemu/virtiofsd]=qemu-system-common
  [mount]=mount
  [sha256sum]=coreutils
  [tmux]=tmux
  [/usr/bin/python3]=python3
  [mkfs.ext4]=e2fsprogs
  [pkg-config]=pkg-config
  [/usr/include/seccomp.h]=libseccomp-dev
  [/usr/include/cap-ng.h]=libcap-ng-dev
  [/usr/include/x86_64-linux-gnu/asm/unistd_64.h]=linux-libc-dev
  [/usr/bin/ip]=iproute2
  [/usr/sbin/nft]=nftables
  [dpdk-testpmd]=dpdk-dev
  [iperf3]=iperf3
  [/usr/sbin/ethtool]=ethtool
)

missing=()
for cmd in "${!need[@]}"; do
  if [[ $cmd == /* ]]; then
    # A path: a program, a plugin or a header (-e: headers are not executable).
    [ -e "$cmd" ] || missing+=("${need[$cmd]}")
  else
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
  fi
done

if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing ${missing[*]} and not root; run as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2046
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u)
fi

command -v cargo >/dev/null 2>&1 || {
  echo "install-deps: cargo not found; this machine kind ships the Rust toolchain (rustup)" >&2
  exit 1
}

# The Rust virtiofsd (what kata ships; QEMU 8 dropped the C one), from crates.io into
# /usr/local/bin, where the runtime looks for it first (about a minute and a half to build).
if [ ! -x /usr/local/bin/virtiofsd ]; then
  echo "install-deps: installing virtiofsd"
  cargo install --locked --quiet --root /usr/local virtiofsd
fi

# The hybrid-vsock backend for the VM tests, from crates.io (about a minute to build).
if ! command -v vhost-device-vsock >/dev/null 2>&1; then
  echo "install-deps: installing vhost-device-vsock"
  cargo install --locked --quiet vhost-device-vsock
fi

# unpack_from SUITE DIR PACKAGE...: Debian's PACKAGEs (each at SUITE's version) downloaded from
# SUITE and unpacked into DIR, never installed over the system's own. The sources list and the
# package lists live in a scratch directory, not in /etc/apt.
unpack_from() {
  local suite=$1 dir=$2 scratch
  shift 2
  scratch=$(mktemp -d)
  mkdir -p "$scratch/lists/partial" "$scratch/archives/partial"
  cat > "$scratch/extra.sources" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  local opts=(-o "Dir::Etc::SourceList=$scratch/extra.sources" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$scratch/lists" -o "Dir::Cache::Archives=$scratch/archives" -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update -qq
  local pkgs=() p v
  for p in "$@"; do
    v=$(apt-cache "${opts[@]}" madison "$p" | awk -v s="$suite" '$0 ~ s {print $3; exit}')
    pkgs+=("$p=$v")
  done
  (cd "$scratch" && apt-get "${opts[@]}" download -qq "${pkgs[@]}")
  mkdir -p "$dir"
  for deb in "$scratch"/*.deb; do dpkg-deb -x "$deb" "$dir"; done
  rm -rf "$scratch"
}

# containerd 2.1 for the second pass of the end-to-end tests: Debian's package from sid (the
# only suite that has a 2.x), next to the system's 1.6.
C2_DIR=/var/lib/kata-net-test/containerd-2.1
if [ ! -x "$C2_DIR/usr/bin/containerd" ]; then
  echo "install-deps: fetching containerd 2.1 (Debian sid) into $C2_DIR"
  unpack_from sid "$C2_DIR" containerd
  "$C2_DIR/usr/bin/containerd" --version
fi

# QEMU 10 for the vhost-user test only: Debian 12's QEMU 7.2 segfaults when a guest starts a
# vhost-user NIC on DPDK's testpmd (docs/network.md). bookworm-backports' build, next to the
# system's QEMU; DPDK's testpmd (dpdk-dev) is the backend.
Q10_DIR=/var/lib/kata-net-test/qemu-10
if [ ! -x "$Q10_DIR/usr/bin/qemu-system-x86_64" ]; then
  echo "install-deps: fetching QEMU 10 (Debian bookworm-backports) into $Q10_DIR"
  unpack_from bookworm-backports "$Q10_DIR" qemu-system-x86 qemu-system-common qemu-system-data
  "$Q10_DIR/usr/bin/qemu-system-x86_64" --version
fi
