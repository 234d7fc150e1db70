#!/usr/bin/env bash
# Compose: `up -d` then `down` of a 10-service project (busybox services on the project's
# default network), Berth's `berth compose` against Debian's docker-compose 1.29 on
# docker.io, interleaved, in one run. Prints medians and the ratios.
#
#   sudo benches/compose.sh [REPS]     (default 7)
#
# The anchors come from ../shared/anchors/setup.sh (apt installs, starts dockerd);
# docker-compose comes from apt. Only what this script made is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-7}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
. benches/lib.sh
docker_anchor
command -v docker-compose >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
[ -x target/release/berth ] || cargo build --release --locked
work=$(mktemp -d /tmp/berth-compose.XXXXXX)
berth_start "$work"
proj_b="benchb$$"
proj_d="benchd$$"
cleanup() {
  (cd "$work/project" 2>/dev/null && berth compose -p "$proj_b" down -t 0 >/dev/null 2>&1) || true
  (cd "$work/project" 2>/dev/null && docker-compose -p "$proj_d" down -t 0 >/dev/null 2>&1) || true
  berth_stop
  rm -rf "$work"
}
trap cleanup EXIT
scripts/mkrootfs.sh "$work/rootfs" >/dev/null
scripts/mkimage-archive.sh "$work/rootfs" "$work/busybox.tar" busybox:latest >/dev/null
berth load -i "$work/busybox.tar" >/dev/null
mkdir -p "$work/project"
{
  echo "services:"
  for i in $(seq 10); do
    printf '  s%d:\n    image: busybox\n    command: sleep 3600\n    init: true\n' "$i"
  done
} > "$work/project/docker-compose.yml"

ms() {
  local t0 t1
  sleep 0.3
  t0=${EPOCHREALTIME/./}
  "$@" >/dev/null 2>&1
  t1=${EPOCHREALTIME/./}
  echo $(( (t1 - t0) / 1000 ))
}
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.0f", m}'; }
declare -A T R
b_up() { (cd "$work/project" && berth compose -p "$proj_b" up -d); }
b_down() { (cd "$work/project" && berth compose -p "$proj_b" down); }
d_up() { (cd "$work/project" && docker-compose -p "$proj_d" up -d); }
d_down() { (cd "$work/project" && docker-compose -p "$proj_d" down); }

echo "== warm-up"
b_up >/dev/null 2>&1; b_down >/dev/null 2>&1
d_up >/dev/null 2>&1; d_down >/dev/null 2>&1

echo "== up -d and down of 10 services ($REPS runs each, interleaved)"
for i in $(seq "$REPS"); do
  T[berth,up]+="$(ms b_up) "
  T[berth,down]+="$(ms b_down) "
  T[docker,up]+="$(ms d_up) "
  T[docker,down]+="$(ms d_down) "
done
for e in berth docker; do
  for k in up down; do R[$e,$k]=$(echo "${T[$e,$k]}" | tr ' ' '\n' | grep . | median); done
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.1fx", b / a; else print "-" }'; }
printf '\n%-36s %10s %16s %14s\n' "measure" berth "docker-compose" "docker/berth"
printf '%-36s %10s %16s %14s\n' "up -d, 10 services (ms)" "${R[berth,up]}" "${R[docker,up]}" "$(ratio "${R[berth,up]}" "${R[docker,up]}")"
printf '%-36s %10s %16s %14s\n' "down, 10 services (ms)" "${R[berth,down]}" "${R[docker,down]}" "$(ratio "${R[berth,down]}" "${R[docker,down]}")"
