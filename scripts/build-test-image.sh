#!/usr/bin/env bash
# Build a tiny OCI image (busybox-static, its applets as /bin/sh, /bin/ip, ...) as an OCI layout tarball, for
# `ctr images import`: there is no registry here. Usage: build-test-image.sh OUT.tar [NAME]
set -euo pipefail
out=$1
name=${2:-localhost/kata-net-pause:latest}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/layout/blobs/sha256"
cp /bin/busybox "$work/rootfs/bin/busybox"
# The applets the tests' commands use, as a busybox image has them.
for applet in sh cat echo hostname ip ls ping sleep true false ps tr grep cut mkdir nc; do
  ln -s busybox "$work/rootfs/bin/$applet"
done
tar -C "$work/rootfs" --numeric-owner --owner=0 --group=0 --mtime=@0 -cf "$work/layer.tar" bin
blob() { # file -> digest, stored in the layout
  local d; d=$(sha256sum "$1" | cut -d' ' -f1)
  cp "$1" "$work/layout/blobs/sha256/$d"
  echo "$d"
}
layer=$(blob "$work/layer.tar")
lsize=$(stat -c %s "$work/layer.tar")
cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh","-c","trap 'exit 143' TERM INT; sleep 1000000 & wait"]},"rootfs":{"type":"layers","diff_ids":["sha256:$layer"]}}
JSON
config=$(blob "$work/config.json")
csize=$(stat -c %s "$work/config.json")
cat > "$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config","size":$csize},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$layer","size":$lsize}]}
JSON
manifest=$(blob "$work/manifest.json")
msize=$(stat -c %s "$work/manifest.json")
cat > "$work/layout/index.json" <<JSON
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest","size":$msize,"annotations":{"io.containerd.image.name":"$name","org.opencontainers.image.ref.name":"latest"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"
tar -C "$work/layout" -cf "$out" oci-layout index.json blobs
