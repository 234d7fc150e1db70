#!/usr/bin/env bash
# Berth's registry against Debian's docker-registry (distribution 2.8), on loopback, the
# same clients for both, interleaved.
#
#   sudo benches/registry.sh [ROUNDS]    (default 5)
#
# Measured, per round, each server on a fresh store:
#   - push of a 1 GiB image (four 256 MiB gzip layers of random bytes, pushed at once, as
#     docker pushes layers, with curl: POST, then PUT of the whole blob streamed from
#     the file; then the manifest), MB/s;
#   - pull of it (the manifest, then the four blobs at once with curl to /dev/null), MB/s;
#     and the four blobs again with benches/httpget.py, a client leaner than curl (on two
#     cores curl's own CPU caps the rate: a bare sendfile server reaches ~5 GB/s with curl,
#     ~7 GB/s with httpget.py);
#   - 10,000 HEAD requests of a small blob over 32 keep-alive connections (ab; wrk 4.1
#     waits for a body after HEAD and counts none), requests/s;
# and each server's resident memory when idle: just started, and after the round's load.
# Each round also pulls the four blobs, with curl and with httpget.py, from
# benches/sendfile-server.py, a bare sendfile loop with no registry in it: the ceiling of
# any blob server here. Its ratio to distribution is the most any registry could show.
# Both servers log nothing per request (Berth: --access-log off; distribution: access log
# off, level error). Berth fsyncs every blob before it becomes visible; distribution does
# not. Ratios are of the medians, Berth over distribution (memory: distribution over Berth).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
for p in docker-registry:docker-registry ab:apache2-utils curl:curl; do
  command -v "${p%%:*}" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${p##*:}" >/dev/null
done
[ -x target/release/berth ] || cargo build --release --locked
. benches/lib.sh
work=$(mktemp -d /tmp/berth-registry-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# The image: four layers, a config, a manifest.
mkdir -p "$work/img"
layers=()
for i in 1 2 3 4; do
  head -c $((256 << 20)) /dev/urandom | gzip -1 >"$work/img/layer$i"
  layers+=("$work/img/layer$i")
done
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' >"$work/img/config"
digest() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }
size() { stat -c %s "$1"; }
{
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
  printf '"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[' \
    "$(digest "$work/img/config")" "$(size "$work/img/config")"
  sep=""
  for l in "${layers[@]}"; do
    printf '%s{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}' \
      "$sep" "$(digest "$l")" "$(size "$l")"
    sep=","
  done
  printf ']}'
} >"$work/img/manifest"
total=0
for l in "${layers[@]}"; do total=$((total + $(size "$l"))); done
printf 'small' >"$work/img/small"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$1/v2/" && return 0; sleep 0.05; done; return 1; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# start_server KIND ROOT → sets srv_pid, srv_port
start_server() {
  local kind=$1 root=$2
  srv_port=$(free_port)
  rm -rf "$root"
  if [ "$kind" = berth ]; then
    target/release/berth registry serve --addr "127.0.0.1:$srv_port" --root "$root" --access-log off 2>"$work/$kind.log" &
  else
    cat >"$work/dist.yml" <<EOF
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $root}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$srv_port}
EOF
    docker-registry serve "$work/dist.yml" >"$work/$kind.log" 2>&1 &
  fi
  srv_pid=$!
  pids+=("$srv_pid")
  wait_port "$srv_port"
}

stop_server() {
  kill "$srv_pid" 2>/dev/null || true
  wait "$srv_pid" 2>/dev/null || true
}

push_blob() {
  local port=$1 repo=$2 file=$3 loc
  loc=$(curl -s -D - -o /dev/null -X POST "http://127.0.0.1:$port/v2/$repo/blobs/uploads/" \
    | awk 'tolower($1)=="location:" {print $2}' | tr -d '\r')
  case $loc in http*) ;; *) loc="http://127.0.0.1:$port$loc" ;; esac
  case $loc in *\?*) loc="$loc&" ;; *) loc="$loc?" ;; esac
  curl -sf -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' -T "$file" "${loc}digest=$(digest "$file")"
}

push_image() {
  local port=$1 repo=$2 ps=()
  for l in "${layers[@]}"; do push_blob "$port" "$repo" "$l" & ps+=($!); done
  push_blob "$port" "$repo" "$work/img/config" & ps+=($!)
  for p in "${ps[@]}"; do wait "$p"; done
  curl -sf -o /dev/null -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary @"$work/img/manifest" "http://127.0.0.1:$port/v2/$repo/manifests/latest"
}

pull_image() {
  local port=$1 repo=$2 ps=()
  curl -sf -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://127.0.0.1:$port/v2/$repo/manifests/latest"
  for l in "${layers[@]}"; do
    curl -sf -o /dev/null "http://127.0.0.1:$port/v2/$repo/blobs/$(digest "$l")" & ps+=($!)
  done
  for p in "${ps[@]}"; do wait "$p"; done
}

# Digests once, not inside the timings.
declare -A dig
for l in "${layers[@]}" "$work/img/config" "$work/img/small"; do dig[$l]=$(digest "$l"); done
digest() { echo "${dig[$1]:-sha256:$(sha256sum "$1" | cut -d' ' -f1)}"; }

mbps() { awk -v b="$total" -v ms="$1" 'BEGIN {printf "%.0f", b / 1e6 / (ms / 1000)}'; }

bare_port=$(free_port)
python3 benches/sendfile-server.py "$work/img" "$bare_port" &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$bare_port/config" && break; sleep 0.05; done
bare_urls=()
for l in "${layers[@]}"; do bare_urls+=("http://127.0.0.1:$bare_port/$(basename "$l")"); done
pull_bare() {
  local ps=() u
  for u in "${bare_urls[@]}"; do curl -sf -o /dev/null "$u" & ps+=($!); done
  for p in "${ps[@]}"; do wait "$p"; done
}

declare -A res
for r in $(seq "$ROUNDS"); do
  for kind in berth dist; do
    start_server "$kind" "$work/root-$kind"
    idle=$(rss_kb "$srv_pid")
    sync
    t=$(ms push_image "$srv_port" bench/img)
    res[$kind-push]+="$(mbps "$t") "
    sync
    t=$(ms pull_image "$srv_port" bench/img)
    res[$kind-pull]+="$(mbps "$t") "
    urls=()
    for l in "${layers[@]}"; do urls+=("http://127.0.0.1:$srv_port/v2/bench/img/blobs/$(digest "$l")"); done
    res[$kind-lean]+="$(python3 benches/httpget.py "${urls[@]}") "
    push_blob "$srv_port" bench/img "$work/img/small"
    rate=$(ab -k -i -n 10000 -c 32 "http://127.0.0.1:$srv_port/v2/bench/img/blobs/$(digest "$work/img/small")" 2>/dev/null \
      | awk '/Requests per second/ {printf "%.0f", $4}')
    res[$kind-head]+="$rate "
    res[$kind-idle]+="$idle "
    res[$kind-loaded]+="$(rss_kb "$srv_pid") "
    stop_server
    rm -rf "$work/root-$kind"
  done
  res[bare-pull]+="$(mbps "$(ms pull_bare)") "
  res[bare-lean]+="$(python3 benches/httpget.py "${bare_urls[@]}") "
  last() { awk '{print $NF}' <<<"$1"; }
  echo "round $r: push MB/s berth $(last "${res[berth-push]}") / dist $(last "${res[dist-push]}")," \
    "pull berth $(last "${res[berth-pull]}") / dist $(last "${res[dist-pull]}") / bare $(last "${res[bare-pull]}")" >&2
done

med() { tr ' ' '\n' <<<"$1" | grep . | median; }
printf '%-34s %12s %14s %8s\n' "" berth distribution ratio
row() {
  local name=$1 key=$2 invert=${3:-}
  local b d
  b=$(med "${res[berth-$key]}")
  d=$(med "${res[dist-$key]}")
  if [ -n "$invert" ]; then
    printf '%-34s %12s %14s %7.2fx\n' "$name" "$b" "$d" "$(awk -v b="$b" -v d="$d" 'BEGIN {print d / b}')"
  else
    printf '%-34s %12s %14s %7.2fx\n' "$name" "$b" "$d" "$(awk -v b="$b" -v d="$d" 'BEGIN {print b / d}')"
  fi
}
row "push 1 GiB (MB/s)" push
row "pull 1 GiB (MB/s)" pull
row "pull, lean client (MB/s)" lean
ceiling() {
  local b d
  b=$(med "${res[bare-$2]}")
  d=$(med "${res[dist-$2]}")
  printf '%-34s %12s %14s %7.2fx\n' "$1" "$b" "$d" "$(awk -v b="$b" -v d="$d" 'BEGIN {print b / d}')"
}
ceiling "ceiling: bare sendfile, curl" pull
ceiling "ceiling: bare sendfile, lean" lean
row "HEAD blob, 32 connections (req/s)" head
row "idle RSS at start (KiB; ratio d/b)" idle invert
row "RSS after the load (KiB; ratio d/b)" loaded invert
echo "($ROUNDS rounds, medians; per-round values: berth push ${res[berth-push]}/ dist ${res[dist-push]})"
