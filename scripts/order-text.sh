#!/usr/bin/env bash
# Regenerates crates/berth/text-order.txt: the functions an idle-to-busy daemon runs, in the
# order the linker should place them at the start of .text (build.rs passes the file to
# lld as --symbol-ordering-file). Packed together, they fill far fewer of the 64 KiB windows
# the kernel maps around each page fault, which is most of the daemon's resident memory.
#
#   sudo scripts/order-text.sh [ROUNDS]     (default 6; needs perf: apt-get install linux-perf)
#
# Each round links the binary with the order found so far, runs a daemon of its own (temp
# socket, data and exec roots) under `perf record` (every page fault, and the clock at
# 20 kHz) through start-up and the everyday workload of benches/lifecycle.sh (load, run
# --rm, create/start/wait/rm, run -d, exec, ps, logs, inspect, images, info, stop, rm -f),
# and adds the daemon's functions it saw. A fault in code not yet in the order names one
# more function the daemon runs; samples name the hot ones. So each round reveals what the
# last one missed, and the daemon's resident text shrinks round by round. Symbols are
# mangled names; an entry the code no longer has is ignored by the linker, so the file
# goes stale gently as the code changes: run this again now and then.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-6}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 1; }
order=$PWD/crates/berth/text-order.txt
work=$(mktemp -d /tmp/berth-order.XXXXXX)
dpid=""
cleanup() {
  [ -n "$dpid" ] && kill "$dpid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
scripts/mkrootfs.sh "$work/rootfs" >/dev/null
scripts/mkimage-archive.sh "$work/rootfs" "$work/busybox.tar" busybox:latest >/dev/null
touch "$order"
# Every symbol seen so far, once per sighting: the order is by how often each was seen.
cp "$order" "$work/seen"

round() {
  local bin=$1 d=$work/d
  rm -rf "$d"
  mkdir -p "$d"
  perf record -q -e page-faults/period=1/ -e cpu-clock/freq=20000/ -d -o "$work/perf.data" -- \
    "$bin" daemon -H "unix://$d/s.sock" --data-root "$d/data" --exec-root "$d/exec" \
    >"$d/daemon.log" 2>&1 &
  local perf_pid=$!
  for _ in $(seq 200); do [ -S "$d/s.sock" ] && break; sleep 0.05; done
  dpid=$(pgrep -P "$perf_pid" | head -1)
  b() { BERTH_HOST="unix://$d/s.sock" timeout 60 "$work/cli" "$@"; }
  b load -i "$work/busybox.tar" >/dev/null
  local k i id
  for k in 1 2 3; do
    b version >/dev/null
    b run --rm --network none busybox true
    id=$(b create --network none busybox true)
    b start "$id" >/dev/null
    b wait "$id" >/dev/null
    b rm "$id" >/dev/null
    b run -d --network none --name ex busybox sleep 3600 >/dev/null
    b exec ex true
    b exec ex echo hi >/dev/null
    for i in 1 2 3; do b run -d --network none busybox sleep 3600 >/dev/null; done
    b ps >/dev/null
    b ps -a --format '{{.Names}}' >/dev/null
    b logs ex >/dev/null
    b inspect ex >/dev/null
    b images >/dev/null
    b info >/dev/null
    b stop -t 1 ex >/dev/null
    b rm -f $(b ps -aq) >/dev/null
  done
  sleep 1
  echo "  daemon: $(grep -E 'VmRSS|RssFile' "/proc/$dpid/status" | tr -s ' \t' ' ' | tr '\n' ' ')" >&2
  kill "$dpid"
  wait "$perf_pid" 2>/dev/null || true
  dpid=""
  # Only the daemon runs from $bin: the CLI from a copy, shims from the shim server's view.
  perf script -i "$work/perf.data" -F ip,sym,dso --no-demangle 2>/dev/null \
    | awk -v bin="($bin)" '$NF == bin && $(NF-1) != "[unknown]" {print $(NF-1)}' >>"$work/seen"
  rm -rf "$d"
}

for r in $(seq "$ROUNDS"); do
  sort "$work/seen" | uniq -c | sort -k1,1nr -k2 | awk '{print $2}' >"$work/order"
  BERTH_TEXT_ORDER="$work/order" cargo build --release --locked -p berth 2>&1 | grep -E '^error' -A5 || true
  cp target/release/berth "$work/berth"
  cp target/release/berth "$work/cli"
  echo "round $r: $(wc -l <"$work/order") functions in the order" >&2
  round "$work/berth"
done
sort "$work/seen" | uniq -c | sort -k1,1nr -k2 | awk '{print $2}' >"$order"
echo "wrote $order ($(wc -l <"$order") functions); rebuild with cargo build --release" >&2
