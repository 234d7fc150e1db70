#!/usr/bin/env bash
# Regenerates crates/berth/text-order.txt: the functions the two long-running roles (the
# daemon, the registry server) run, in the order the linker should place them at the start
# of .text (build.rs passes the file to lld as --symbol-ordering-file). Packed together, they
# fill far fewer of the 64 KiB windows the kernel maps around each page fault, which is most
# of either server's resident memory.
#
#   sudo scripts/order-text.sh [ROUNDS]     (default 6; needs perf: apt-get install linux-perf)
#
# Each round links the binary with the order found so far and runs, each under `perf record`
# (every page fault, and the clock at 20 kHz), a daemon of its own (temp socket, data and
# exec roots) through start-up and the everyday workload of benches/lifecycle.sh, and a
# registry on loopback through start-up, pushes, pulls, HEADs, tags and the catalog. It adds
# the functions each was seen in. A fault in code not yet in the order names one more
# function that role runs; samples name the hot ones. So each round reveals what the last
# one missed, and resident text shrinks round by round. The file lists the functions both
# roles run, then the daemon's own, then the registry's own (`#` lines head each part), so
# each role's code is one or two runs of pages. Symbols are mangled names; an entry the code
# no longer has is ignored by the linker, so the file goes stale gently as the code changes:
# run this again now and then.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-6}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 1; }
order=$PWD/crates/berth/text-order.txt
work=$(mktemp -d /tmp/berth-order.XXXXXX)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
scripts/mkrootfs.sh "$work/rootfs" >/dev/null
scripts/mkimage-archive.sh "$work/rootfs" "$work/busybox.tar" busybox:latest >/dev/null
head -c $((8 << 20)) /dev/urandom >"$work/blob"
printf 'small' >"$work/small"

# Every symbol seen so far, once per sighting, per role (the file's parts say whose).
touch "$order" "$work/seen.daemon" "$work/seen.registry"
awk -v w="$work" '/^# /{part=$2; next} NF {
  if (part == "both" || part == "daemon") print >> (w "/seen.daemon");
  if (part == "both" || part == "registry") print >> (w "/seen.registry") }' "$order"

# by_count FILE: its symbols, most often seen first.
by_count() { sort "$1" | uniq -c | sort -k1,1nr -k2 | awk '{print $2}'; }
assemble() {
  by_count "$work/seen.daemon" >"$work/d.order"
  by_count "$work/seen.registry" >"$work/r.order"
  {
    # (FILENAME, not NR == FNR, tells the files apart: the first may be empty.)
    echo "# both"
    awk 'FILENAME == ARGV[1] {r[$0] = 1; next} $0 in r' "$work/r.order" "$work/d.order"
    echo "# daemon"
    awk 'FILENAME == ARGV[1] {r[$0] = 1; next} !($0 in r)' "$work/r.order" "$work/d.order"
    echo "# registry"
    awk 'FILENAME == ARGV[1] {d[$0] = 1; next} !($0 in d)' "$work/d.order" "$work/r.order"
  } >"$1"
}

# start_profiled ARGS...: $work/bin ARGS under perf (its page faults and clock samples);
# collect ROLE then stops it and adds the functions seen to ROLE's list.
start_profiled() {
  perf record -q -e page-faults/period=1/ -e cpu-clock/freq=20000/ -d -o "$work/perf.data" -- \
    "$work/bin" "$@" >"$work/role.log" 2>&1 &
  perf_pid=$!
}
collect() {
  local role=$1
  echo "  $role: $(grep -E 'VmRSS|RssFile' "/proc/$pid/status" | tr -s ' \t' ' ' | tr '\n' ' ')" >&2
  kill "$pid"
  wait "$perf_pid" 2>/dev/null || true
  pid=""
  # Only the role runs from $work/bin: clients from a copy, shims from the shim server's view.
  perf script -i "$work/perf.data" -F ip,sym,dso --no-demangle 2>/dev/null \
    | awk -v bin="($work/bin)" '$NF == bin && $(NF-1) != "[unknown]" {print $(NF-1)}' \
      >>"$work/seen.$role"
}

daemon_round() {
  local d=$work/d k i id
  rm -rf "$d"
  mkdir -p "$d"
  start_profiled daemon -H "unix://$d/s.sock" --data-root "$d/data" --exec-root "$d/exec"
  for _ in $(seq 200); do [ -S "$d/s.sock" ] && break; sleep 0.05; done
  pid=$(pgrep -P "$perf_pid" | head -1)
  b() { BERTH_HOST="unix://$d/s.sock" timeout 60 "$work/cli" "$@"; }
  b load -i "$work/busybox.tar" >/dev/null
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
  collect daemon
  rm -rf "$d"
}

registry_round() {
  local r=$work/r port k f loc dig
  rm -rf "$r"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  start_profiled registry serve --addr "127.0.0.1:$port" --root "$r" --access-log off
  local url=http://127.0.0.1:$port
  for _ in $(seq 200); do curl -s -o /dev/null "$url/v2/" && break; sleep 0.05; done
  pid=$(pgrep -P "$perf_pid" | head -1)
  for k in 1 2 3; do
    for f in "$work/blob" "$work/small"; do
      dig=sha256:$(sha256sum "$f" | cut -d' ' -f1)
      loc=$(curl -s -D - -o /dev/null -X POST "$url/v2/o/img/blobs/uploads/" \
        | awk 'tolower($1)=="location:" {print $2}' | tr -d '\r')
      case $loc in http*) ;; *) loc="$url$loc" ;; esac
      case $loc in *\?*) loc="$loc&" ;; *) loc="$loc?" ;; esac
      curl -sf -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' -T "$f" "${loc}digest=$dig"
      curl -sf -o /dev/null -I "$url/v2/o/img/blobs/$dig"
      curl -sf -o /dev/null "$url/v2/o/img/blobs/$dig"
      curl -sf -o /dev/null -H 'Range: bytes=0-3' "$url/v2/o/img/blobs/$dig"
    done
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":5},"layers":[]}' \
      "$dig" >"$work/manifest"
    curl -sf -o /dev/null -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
      --data-binary @"$work/manifest" "$url/v2/o/img/manifests/v$k"
    curl -sf -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$url/v2/o/img/manifests/v$k"
    curl -sf -o /dev/null "$url/v2/o/img/tags/list"
    curl -sf -o /dev/null "$url/v2/_catalog"
    curl -s -o /dev/null "$url/v2/o/img/blobs/sha256:$(printf '%064d' 0)"
  done
  sleep 1
  collect registry
  rm -rf "$r"
}

for r in $(seq "$ROUNDS"); do
  assemble "$work/order"
  BERTH_TEXT_ORDER="$work/order" cargo build --release --locked -p berth 2>&1 | grep -E '^error' -A5 || true
  cp target/release/berth "$work/bin"
  cp target/release/berth "$work/cli"
  echo "round $r: $(grep -vc '^#' "$work/order") functions in the order" >&2
  daemon_round
  registry_round
done
assemble "$order"
echo "wrote $order ($(grep -vc '^#' "$order") functions); rebuild with cargo build --release" >&2
