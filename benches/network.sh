#!/usr/bin/env bash
# Networking: Berth against Docker (Debian's docker.io), in one run, interleaved, on the
# same busybox image.
#
#   sudo benches/network.sh [REPS] [SECONDS]     (defaults 15 and 5)
#
# Measured:
#   - `run --rm busybox true` with --network none and on the default bridge; the bridge's
#     cost is the difference of the medians.
#   - container-to-container TCP throughput on a user network of each engine: iperf3 (from
#     Debian, copied with its libraries into an image made here) as a server in one
#     container and a client in another reaching it by name, SECONDS per run; the median
#     receiver rate of REPS/3 runs.
# All traffic stays between containers of this machine. The anchors come from
# ../shared/anchors/setup.sh (apt installs, starts dockerd). Only what this script made is
# removed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-15}
SECS=${2:-5}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
. benches/lib.sh
docker_anchor
command -v iperf3 >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null
[ -x target/release/berth ] || cargo build --release --locked
work=$(mktemp -d /tmp/berth-network.XXXXXX)
berth_start "$work"
label="berth-bench=$$"
net="benchnet-$$"
cleanup() {
  berth ps -aq | xargs -r env BERTH_HOST="unix://$sock" "$berth_bin" rm -f >/dev/null 2>&1 || true
  berth network rm "$net" >/dev/null 2>&1 || true
  docker ps -aq --filter "label=$label" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
  docker rmi "berth-bench-iperf:$$" >/dev/null 2>&1 || true
  berth_stop
  rm -rf "$work"
}
trap cleanup EXIT
scripts/mkrootfs.sh "$work/rootfs" >/dev/null
scripts/mkimage-archive.sh "$work/rootfs" "$work/busybox.tar" busybox:latest >/dev/null
berth load -i "$work/busybox.tar" >/dev/null
# An iperf3 image: busybox plus iperf3 and the libraries it links.
cp -a "$work/rootfs" "$work/iperf"
mkdir -p "$work/iperf/usr/bin"
cp "$(command -v iperf3)" "$work/iperf/usr/bin/"
for lib in $(ldd "$(command -v iperf3)" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
  mkdir -p "$work/iperf$(dirname "$lib")"
  cp -L "$lib" "$work/iperf$lib"
done
scripts/mkimage-archive.sh "$work/iperf" "$work/iperf.tar" "berth-bench-iperf:$$" >/dev/null
berth load -i "$work/iperf.tar" >/dev/null
docker load -i "$work/iperf.tar" >/dev/null
engines="berth docker"

ms() {
  local t0 t1
  sleep 0.3
  t0=${EPOCHREALTIME/./}
  "$@" >/dev/null 2>&1
  t1=${EPOCHREALTIME/./}
  echo $((t1 - t0))
}
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f", m}'; }
declare -A T R

echo "== warm-up"
for e in $engines; do
  $e run --rm --network none busybox true >/dev/null 2>&1
  $e run --rm busybox true >/dev/null 2>&1
done

echo "== run --rm busybox true, --network none and the default bridge ($REPS runs each, interleaved)"
for i in $(seq "$REPS"); do
  for e in $engines; do
    T[$e,none]+="$(ms $e run --rm --network none busybox true) "
    T[$e,bridge]+="$(ms $e run --rm busybox true) "
  done
done
for e in $engines; do
  for k in none bridge; do
    R[$e,$k]=$(echo "${T[$e,$k]}" | tr ' ' '\n' | grep . | awk '{print $1/1000}' | median)
  done
  R[$e,cost]=$(awk -v a="${R[$e,bridge]}" -v b="${R[$e,none]}" 'BEGIN {printf "%.1f", a - b}')
done

echo "== TCP throughput between two containers on a user network (iperf3, ${SECS}s per run)"
runs=$(( REPS / 3 > 0 ? REPS / 3 : 1 ))
img="berth-bench-iperf:$$"
for e in $engines; do
  $e network create "$net" >/dev/null
  $e run -d --label "$label" --network "$net" --name "iperf-$$-$e" "$img" iperf3 -s >/dev/null
done
sleep 0.5
for i in $(seq "$runs"); do
  for e in $engines; do
    # The receiver's line: "[ 5]   0.00-5.00 sec  X GBytes  Y Gbits/sec  receiver".
    rate=$($e run --rm --label "$label" --network "$net" "$img" iperf3 -c "iperf-$$-$e" -t "$SECS" -f m 2>&1 \
      | awk '/receiver/ {print $(NF-2)}')
    T[$e,tput]+="${rate:-0} "
  done
done
for e in $engines; do
  R[$e,tput]=$(echo "${T[$e,tput]}" | tr ' ' '\n' | grep . | median)
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.2f", b / a; else print "-" }'; }
printf '\n%-44s %10s %10s %14s\n' "measure" berth docker "docker/berth"
row() { printf '%-44s %10s %10s %14s\n' "$1" "${R[berth,$2]}" "${R[docker,$2]}" "$(ratio "${R[berth,$2]}" "${R[docker,$2]}")"; }
row "run --rm --network none (ms)" none
row "run --rm on the default bridge (ms)" bridge
row "bridge cost: bridge - none (ms)" cost
row "container-to-container TCP (Mbit/s)" tput
