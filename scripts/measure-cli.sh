#!/usr/bin/env bash
# Size and start-up time of kata-runtime binaries, side by side in one run:
#   scripts/measure-cli.sh BIN [BIN...]
# For each: file size, stripped size, and the median wall time of 100 runs of
# `kata-runtime kata-network list-ifaces <unknown sandbox>` (config parse, run_dir scan, the
# documented failure), runs interleaved so that machine noise hits every binary alike.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BIN [BIN...]" >&2; exit 2; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/run"
printf '[runtime]\nrun_dir = "%s/run"\n' "$scratch" > "$scratch/configuration.toml"
python3 - "$scratch" "$@" <<'PY'
import os, shutil, statistics, subprocess, sys, time
scratch, bins = sys.argv[1], sys.argv[2:]
env = dict(os.environ, KATA_CONF_FILE=os.path.join(scratch, "configuration.toml"))
times = {b: [] for b in bins}
for _ in range(100):
    for b in bins:
        t = time.perf_counter()
        r = subprocess.run([b, "kata-network", "list-ifaces", "nosuchsandbox"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        times[b].append(time.perf_counter() - t)
        assert r.returncode != 0 and r.stdout.strip() == b"null", (b, r)
base = None
for b in bins:
    stripped = os.path.join(scratch, "stripped")
    shutil.copy(b, stripped)
    subprocess.run(["strip", stripped], check=True)
    med = statistics.median(times[b]) * 1e3
    base = base or med
    print(f"{b}: size {os.path.getsize(b)/2**20:.1f} MiB, stripped {os.path.getsize(stripped)/2**20:.2f} MiB, "
          f"list-ifaces <unknown> median {med:.2f} ms ({med/base:.2f}x the first)")
PY
