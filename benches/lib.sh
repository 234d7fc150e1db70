# Sourced by the benchmarks: a Berth daemon of their own on a temporary socket and data
# root, and the removal of what it made on the host (the berth0 bridge, its nftables tables,
# its rules in Docker's DOCKER-USER chain) when they were not there before.
#
#   docker_anchor                        # the anchors' dockerd, up
#   berth_start WORK [DAEMON FLAGS...]   # sets berth_bin, sock, daemon_pid
#   berth ARGS...                        # Berth's CLI against that daemon
#   berth_stop                           # in the benchmark's cleanup

# ../shared/anchors/setup.sh, for benchmarks that need only its dockerd (and apt's
# packages): its podman check may fail on hosts where crun refuses hybrid cgroups (the
# setup's hugetlb fix tests the size of a cgroupfs file, which is always 0).
docker_anchor() {
  local anchors=${ANCHORS:-../shared/anchors/setup.sh}
  bash "$anchors" >/dev/null 2>&1 || docker info >/dev/null 2>&1 \
    || { echo "the anchors (dockerd) did not start: $anchors" >&2; exit 1; }
}

berth_start() {
  local work=$1
  shift
  berth_bin=$PWD/target/release/berth
  sock="$work/berth.sock"
  had_bridge=$(ip link show berth0 >/dev/null 2>&1 && echo yes || true)
  "$berth_bin" daemon -H "unix://$sock" --data-root "$work/data" --exec-root "$work/exec" "$@" \
    >"$work/daemon.log" 2>&1 &
  daemon_pid=$!
  for _ in $(seq 100); do berth version >/dev/null 2>&1 && break; sleep 0.05; done
}

berth() { BERTH_HOST="unix://$sock" "$berth_bin" "$@"; }

berth_stop() {
  [ -n "${daemon_pid:-}" ] || return 0
  kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
  daemon_pid=""
  if [ -z "$had_bridge" ]; then
    ip link del berth0 2>/dev/null || true
    nft delete table ip berth 2>/dev/null || true
    nft delete table ip6 berth 2>/dev/null || true
    iptables -S DOCKER-USER 2>/dev/null | grep -- '--comment berth ' | sed 's/^-A/-D/' \
      | while read -r rule; do eval iptables -w "$rule"; done || true
  fi
}

# Milliseconds a command takes (its output dropped).
ms() {
  local t0 t1
  t0=${EPOCHREALTIME/./}
  "$@" >/dev/null 2>&1
  t1=${EPOCHREALTIME/./}
  echo $(( (t1 - t0) / 1000 ))
}

median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.0f", m}'; }
