#!/usr/bin/env bash
# Container lifecycle: Berth against Docker (Debian's docker.io: dockerd + containerd +
# runc) and podman (crun), in one run, interleaved, on the same busybox image (imported
# into each from the same rootfs). Prints medians and the ratios.
#
#   sudo benches/lifecycle.sh [REPS] [CONTAINERS]     (defaults 15 and 100)
#
# Measured, all with --network none (Berth's bridge networking is not built yet, so the
# anchors run without theirs too):
#   run --rm busybox true; create + start + rm as separate commands; exec true into a
#   running container; ps with CONTAINERS containers; CONTAINERS x run -d ... sleep (total);
#   rm -f of all of them (total); idle daemon RSS; per running container, the RSS and PSS of
#   its monitor process (berth shim / containerd-shim-runc-v2 / conmon) plus the daemon's
#   growth.
# The anchors come from ../shared/anchors/setup.sh (apt installs, starts dockerd). Only
# processes this script started are stopped; the anchors' containers are the ones it made.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-15}
N=${2:-100}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
ANCHORS=${ANCHORS:-../shared/anchors/setup.sh}
bash "$ANCHORS" >/dev/null
[ -x target/release/berth ] || cargo build --release --locked
berth_bin=$PWD/target/release/berth
work=$(mktemp -d /tmp/berth-lifecycle.XXXXXX)
sock="$work/berth.sock"
# What the daemon makes on the host (berth0, its nftables tables) goes with it unless it was there.
had_bridge=$(ip link show berth0 >/dev/null 2>&1 && echo yes || true)
"$berth_bin" daemon -H "unix://$sock" --data-root "$work/data" --exec-root "$work/exec" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
label="berth-bench=$$"
cleanup() {
  BERTH_HOST="unix://$sock" "$berth_bin" ps -aq | xargs -r env BERTH_HOST="unix://$sock" "$berth_bin" rm -f >/dev/null 2>&1 || true
  docker ps -aq --filter "label=$label" | xargs -r docker rm -f >/dev/null 2>&1 || true
  podman ps -aq --filter "label=$label" | xargs -r podman rm -f -t 0 >/dev/null 2>&1 || true
  kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
  if [ -z "$had_bridge" ]; then
    ip link del berth0 2>/dev/null || true
    nft delete table ip berth 2>/dev/null || true
    nft delete table ip6 berth 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
berth() { BERTH_HOST="unix://$sock" "$berth_bin" "$@"; }
scripts/mkrootfs.sh "$work/rootfs" >/dev/null
scripts/mkimage-archive.sh "$work/rootfs" "$work/busybox.tar" busybox:latest >/dev/null
berth load -i "$work/busybox.tar" >/dev/null
engines="berth docker podman"

# Nanoseconds now, without forking (bash 5's EPOCHREALTIME), so the clock costs nothing.
now() { local t=${EPOCHREALTIME/./}; echo "${t}000"; }
# us of one command (output discarded). Each measurement starts after a short pause, so
# background work an engine leaves behind (containerd's, dockerd's, conmon's) does not
# land on whichever engine is measured next.
ms() {
  local t0 t1
  sleep 0.3
  t0=${EPOCHREALTIME/./}
  "$@" >/dev/null 2>&1
  t1=${EPOCHREALTIME/./}
  echo $((t1 - t0))
}
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f", m/1000}'; }
declare -A R

# Force removal; podman's rm -f waits the stop timeout first unless told not to.
rmf() { local e=$1; shift; if [ "$e" = podman ]; then podman rm -f -t 0 "$@"; else $e rm -f "$@"; fi; }
run_rm() { "$1" run --rm --network none busybox true; }
create_start_rm() {
  local id
  id=$("$1" create --network none busybox true)
  "$1" start "$id" >/dev/null
  "$1" wait "$id" >/dev/null
  "$1" rm "$id" >/dev/null
}

echo "== warm-up"
for e in $engines; do run_rm $e >/dev/null 2>&1; done

echo "== run --rm, create+start+rm, exec ($REPS runs each, interleaved)"
for e in $engines; do $e run -d --network none --label "$label" --name "exec-$$-$e" busybox sleep 3600 >/dev/null; done
declare -A T
for i in $(seq "$REPS"); do
  for e in $engines; do
    T[$e,run]+="$(ms run_rm $e) "
    T[$e,split]+="$(ms create_start_rm $e) "
    T[$e,exec]+="$(ms $e exec "exec-$$-$e" true) "
  done
done
for e in $engines; do
  for k in run split exec; do R[$e,$k]=$(echo "${T[$e,$k]}" | tr ' ' '\n' | grep . | median); done
  rmf $e "exec-$$-$e" >/dev/null
done

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
pss_kib() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
daemon_rss() {
  case $1 in
    berth) rss_kib "$daemon_pid" ;;
    docker) echo $(( $(rss_kib "$(cat /var/run/docker.pid)") + $(rss_kib "$(pgrep -o -x containerd)") )) ;;
    podman) echo 0 ;; # no daemon
  esac
}
# Monitor processes: the parent of each container's init (berth shim, containerd's runc
# shim, conmon).
monitors() {
  local c pid
  for c in $($1 ps -q --filter "label=$label"); do
    pid=$($1 inspect -f '{{.State.Pid}}' "$c")
    awk '/^PPid/ {print $2}' "/proc/$pid/status" 2>/dev/null
  done | sort -u
}
sum() { local t=0 x; for x in "$@"; do t=$((t + x)); done; echo $t; }

echo "== $N containers per engine: run -d, ps, memory, rm -f"
for e in $engines; do
  idle=$(daemon_rss $e)
  t0=$(now)
  for i in $(seq "$N"); do $e run -d --network none --label "$label" busybox sleep 3600 >/dev/null; done
  t1=$(now)
  R[$e,startN]=$(( (t1 - t0) / 1000000 ))
  pss=(); rss=()
  for p in $(monitors $e); do pss+=("$(pss_kib "$p")"); rss+=("$(rss_kib "$p")"); done
  count=$(monitors $e | wc -l)
  grown=$(( $(daemon_rss $e) - idle ))
  R[$e,idle]=$idle
  R[$e,pss]=$(( ($(sum "${pss[@]}") + grown) / (count > 0 ? count : 1) ))
  R[$e,rss]=$(( $(sum "${rss[@]}") / (count > 0 ? count : 1) ))
  ps_t=""
  for i in $(seq 5); do ps_t+="$(ms $e ps) "; done
  R[$e,ps]=$(echo "$ps_t" | tr ' ' '\n' | grep . | median)
  ids=$($e ps -q --filter "label=$label")
  t0=$(now)
  # shellcheck disable=SC2086
  [ -n "$ids" ] && rmf $e $ids >/dev/null
  t1=$(now)
  R[$e,rmN]=$(( (t1 - t0) / 1000000 ))
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.1fx", b / a; else print "-" }'; }
printf '\n%-34s %10s %10s %10s %14s %14s\n' "measure" berth docker podman "docker/berth" "podman/berth"
row() { printf '%-34s %10s %10s %10s %14s %14s\n' "$1" "${R[berth,$2]}" "${R[docker,$2]}" "${R[podman,$2]}" "$(ratio "${R[berth,$2]}" "${R[docker,$2]}")" "$(ratio "${R[berth,$2]}" "${R[podman,$2]}")"; }
row "run --rm --network none (ms)" run
row "create+start+wait+rm (ms)" split
row "exec true (ms)" exec
row "ps with $N containers (ms)" ps
row "$N x run -d sleep (ms total)" startN
row "rm -f of $N (ms total)" rmN
row "idle daemon RSS (KiB)" idle
row "per container RSS of monitor (KiB)" rss
row "per container PSS + daemon (KiB)" pss
