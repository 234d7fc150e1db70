#!/usr/bin/env bash
# Runtime start-up: `berth runtime run` vs `crun run` vs `runc run` on one busybox bundle
# running /bin/true (no terminal), interleaved. Prints the median wall time and peak RSS of
# each and the ratios. Usage: benches/runtime.sh [RUNS]  (default 30; build with
# `cargo build --release` first)
set -euo pipefail
runs=${1:-30}
here=$(cd "$(dirname "$0")" && pwd)
berth=${BERTH:-$here/../target/release/berth}
[ -x "$berth" ] || { echo "build first: cargo build --release" >&2; exit 1; }
missing=""
for p in runc crun busybox-static time; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null; fi

work=$(mktemp -d /tmp/berth-bench-runtime.XXXXXX)
mounted=""
cleanup() {
  for r in berth crun runc; do
    for id in $(ls "$work/root-$r" 2>/dev/null); do
      case $r in
        berth) "$berth" runtime --root "$work/root-$r" delete --force "$id" ;;
        *) "$r" --root "$work/root-$r" delete --force "$id" ;;
      esac >/dev/null 2>&1 || true
    done
  done
  [ -n "$mounted" ] && umount "$mounted" && rmdir "$mounted" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# crun refuses to run on a cgroup v1 host whose unused controllers (hugetlb here) show up in
# the v2 hierarchy; mount them as v1 for the duration of the benchmark, as the anchors do.
# (Berth runs either way.)
if [ -n "$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null)" ]; then
  for c in $(cat /sys/fs/cgroup/unified/cgroup.controllers); do
    if ! mountpoint -q "/sys/fs/cgroup/$c"; then
      mkdir -p "/sys/fs/cgroup/$c" && mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" && mounted="/sys/fs/cgroup/$c"
    fi
  done
fi

BERTH="$berth" "$here/../scripts/mkbundle.sh" "$work/bundle" /bin/true >/dev/null
# Debian's crun 1.8 only takes ociVersion 1.0.x: give all three the same 1.0.2 bundle.
sed -i 's/"ociVersion": "[^"]*"/"ociVersion": "1.0.2"/' "$work/bundle/config.json"
python3 - "$work" "$berth" "$runs" <<'PY'
import os, statistics, sys, time
work, berth, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
bundle = f"{work}/bundle"
cmds = {
    "berth": lambda i: [berth, "runtime", "--root", f"{work}/root-berth", "run", "--bundle", bundle, f"b{i}"],
    "crun":  lambda i: ["crun", "--root", f"{work}/root-crun", "run", "--bundle", bundle, f"c{i}"],
    "runc":  lambda i: ["runc", "--root", f"{work}/root-runc", "run", "--bundle", bundle, f"r{i}"],
}
wall = {k: [] for k in cmds}
rss = {k: [] for k in cmds}
# Peak RSS in separate runs under GNU time: a child spawned from Python would report
# Python's pages until it execs.
import subprocess
for i in range(5):
    for name, cmd in cmds.items():
        out = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd(f"rss{i}")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, check=True)
        rss[name].append(int(out.stderr.strip().splitlines()[-1]) / 1024)
devnull = os.open(os.devnull, os.O_RDWR)
for i in range(runs + 2):          # two warm-up rounds, not counted
    for name, cmd in cmds.items():
        t0 = time.perf_counter()
        pid = os.posix_spawnp(cmd(i)[0], cmd(i), os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
        _, status, ru = os.wait4(pid, 0)
        dt = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{name} run {i} failed with status {os.waitstatus_to_exitcode(status)}: {' '.join(cmd(i))}")
        if i >= 2:
            wall[name].append(dt * 1000)
med = {k: statistics.median(v) for k, v in wall.items()}
print(f"runtime start-up, /bin/true, {runs} interleaved runs each (median)")
print(f"{'runtime':8} {'wall ms':>9} {'p10':>7} {'p90':>7} {'peak RSS MiB':>13}")
for k in cmds:
    q = statistics.quantiles(wall[k], n=10)
    print(f"{k:8} {med[k]:9.2f} {q[0]:7.2f} {q[-1]:7.2f} {max(rss[k]):13.1f}")
print(f"ratio berth/crun = {med['berth']/med['crun']:.2f}x   berth/runc = {med['berth']/med['runc']:.2f}x")
PY
