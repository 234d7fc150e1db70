#!/usr/bin/env bash
# Pull and push of a generated image of about 1 GiB (busybox plus five layers of about
# 200 MiB cut from this host's /usr: libraries, shared data, executables, more libraries,
# and noise plus logs), Berth against Docker (docker.io's dockerd), through Debian's
# docker-registry on loopback, in one run:
# - push: the loaded image (uncompressed layers) to an empty registry each time, so both
#   compress every layer; then Berth again to another empty registry (its compressed
#   layers kept from the first push);
# - pull: what Docker pushed (its gzip), into a cold store each time.
# Interleaved; prints medians, MB/s of the compressed bytes and the ratios, and where
# Berth's pull time went (its daemon's per-layer figures for the last pull).
#
#   sudo benches/pull.sh [REPS]     (default 3)
#
# The anchors come from ../shared/anchors/setup.sh (apt installs, starts dockerd). Only
# what this script made is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
. benches/lib.sh
docker_anchor
[ -x target/release/berth ] || cargo build --release --locked
work=$(mktemp -d /tmp/berth-pull.XXXXXX)
tag="bench$$"
image="berth-bench/big:$tag"
cleanup() {
  docker images --format '{{.Repository}}:{{.Tag}}' | grep -F ":$tag" | xargs -r docker rmi -f >/dev/null 2>&1 || true
  for pid in "$work"/reg.*/pid; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  berth_stop
  rm -rf "$work"
}
trap cleanup EXIT
berth_start "$work" --log-level debug

# An empty docker-registry on a free loopback port; prints the port.
registry() {
  local dir port
  dir=$(mktemp -d "$work/reg.XXXXXX")
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
    "$dir/data" "$port" > "$dir/config.yml"
  docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
  echo $! > "$dir/pid"
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.05; done
  echo "$port"
}
# Stops the registry on PORT and drops its storage.
registry_stop() {
  local dir
  dir=$(grep -l "127.0.0.1:$1\$" "$work"/reg.*/config.yml | xargs dirname)
  kill "$(cat "$dir/pid")" 2>/dev/null && wait "$(cat "$dir/pid")" 2>/dev/null || true
  rm -rf "$dir"
}

# A layer: regular files of the find arguments in name order, up to MiB.
pick() { # OUT.tar MiB FIND-ARGS...
  local out=$1 max=$(($2 << 20))
  shift 2
  find "$@" -type f -links 1 -readable -printf '%s\t%p\n' 2>/dev/null | sort -t "$(printf '\t')" -k2 \
    | awk -F'\t' -v max="$max" '{ if (sum + $1 <= max) { sum += $1; print $2 } }' > "$out.list"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$out" \
    --files-from "$out.list" 2>/dev/null || true
  rm -f "$out.list"
}
echo "== making the image"
scripts/mkrootfs.sh "$work/rootfs" >/dev/null
pick "$work/l1.tar" 200 /usr/lib/x86_64-linux-gnu
pick "$work/l2.tar" 200 /usr/share
pick "$work/l3.tar" 200 /usr/bin /usr/sbin
pick "$work/l4.tar" 200 /usr/lib -path /usr/lib/x86_64-linux-gnu -prune -o
mkdir -p "$work/l5/srv" "$work/l5/var/log"
head -c $((64 << 20)) /dev/urandom > "$work/l5/srv/media.bin"
awk 'BEGIN { srand(1); for (i = 0; i < 1500000; i++)
  printf "2026-12-01T12:%02d:%02d.%06dZ INFO request id=%08x path=/api/v1/items/%d status=200 bytes=%d\n",
    int(i / 60) % 60, i % 60, i % 1000000, int(rand() * 4294967295), i % 5000, int(rand() * 100000) }' \
  > "$work/l5/var/log/app.log"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/l5" -cf "$work/l5.tar" .
rm -rf "$work/l5"
scripts/mkimage-archive.sh "$work/rootfs" "$work/image.tar" "$image" "$work"/l{1,2,3,4,5}.tar
rm -f "$work"/l?.tar
unpacked=$(( $(stat -c %s "$work/image.tar") >> 20 ))
docker load -i "$work/image.tar" >/dev/null
berth load -i "$work/image.tar" >/dev/null

declare -A T R
mbps() { awk -v b="$1" -v ms="$2" 'BEGIN { printf "%.1f", (ms > 0) ? b / 1048576 / (ms / 1000) : 0 }'; }

echo "== push: ${unpacked} MiB unpacked, to an empty registry each time ($REPS runs each, interleaved)"
for i in $(seq "$REPS"); do
  p=$(registry)
  docker tag "$image" "127.0.0.1:$p/$image"
  T[docker,push]+="$(ms docker push "127.0.0.1:$p/$image") "
  docker rmi "127.0.0.1:$p/$image" >/dev/null
  registry_stop "$p"
  # A fresh load: nothing compressed from the run before.
  berth rmi -f "$(berth images -q "$image")" >/dev/null
  berth load -i "$work/image.tar" >/dev/null
  p=$(registry)
  berth tag "$image" "127.0.0.1:$p/$image"
  T[berth,push]+="$(ms berth push "127.0.0.1:$p/$image") "
  if [ "$i" = "$REPS" ]; then
    pushed=$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
      "http://127.0.0.1:$p/v2/${image%:*}/manifests/$tag" | jq '[.layers[].size] | add')
  fi
  registry_stop "$p"
  p=$(registry)
  berth tag "$image" "127.0.0.1:$p/$image"
  T[berth,again]+="$(ms berth push "127.0.0.1:$p/$image") "
  registry_stop "$p"
done

# The pull source: what Docker pushes. Then neither store keeps the loaded image.
src=$(registry)
docker tag "$image" "127.0.0.1:$src/$image"
docker push "127.0.0.1:$src/$image" >/dev/null
docker rmi "$image" "127.0.0.1:$src/$image" >/dev/null
berth rmi -f "$(berth images -q "$image")" >/dev/null
size=$(curl -fsS -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
  "http://127.0.0.1:$src/v2/${image%:*}/manifests/$tag" | jq '[.layers[].size] | add')
echo "== pull: $((size >> 20)) MiB of gzip (Docker's), cold stores ($REPS runs each, interleaved)"
for _ in $(seq "$REPS"); do
  T[docker,pull]+="$(ms docker pull "127.0.0.1:$src/$image") "
  docker rmi "127.0.0.1:$src/$image" >/dev/null
  T[berth,pull]+="$(ms berth pull "127.0.0.1:$src/$image") "
  berth run --rm --network none "127.0.0.1:$src/$image" test -s /srv/media.bin
  berth rmi "127.0.0.1:$src/$image" >/dev/null
done
# The download alone, all layers at once, for scale.
blobs=$(curl -fsS -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
  "http://127.0.0.1:$src/v2/${image%:*}/manifests/$tag" | jq -r '.layers[].digest')
fetch_all() {
  for b in $blobs; do curl -fsS -o /dev/null "http://127.0.0.1:$src/v2/${image%:*}/blobs/$b" & done
  wait
}
curl_ms=$(ms fetch_all)

for e in docker berth; do
  for k in push again pull; do
    [ -n "${T[$e,$k]:-}" ] && R[$e,$k]=$(echo "${T[$e,$k]}" | tr ' ' '\n' | grep . | median)
  done
done
printf '%-34s %8s ms  %7s MB/s\n' \
  "docker push" "${R[docker,push]}" "$(mbps "$size" "${R[docker,push]}")" \
  "berth push (compressing)" "${R[berth,push]}" "$(mbps "$pushed" "${R[berth,push]}")" \
  "berth push (layers compressed before)" "${R[berth,again]}" "$(mbps "$pushed" "${R[berth,again]}")" \
  "docker pull" "${R[docker,pull]}" "$(mbps "$size" "${R[docker,pull]}")" \
  "berth pull" "${R[berth,pull]}" "$(mbps "$size" "${R[berth,pull]}")" \
  "download only (curl, all layers at once)" "$curl_ms" "$(mbps "$size" "$curl_ms")"
echo "gzip sizes: docker's $((size >> 20)) MiB, berth's $((pushed >> 20)) MiB"
awk -v d="${R[docker,push]}" -v b="${R[berth,push]}" -v a="${R[berth,again]}" \
  'BEGIN { printf "push: berth is %.2fx faster than docker (compressing), %.1fx with the layers compressed before\n", d / b, d / a }'
awk -v d="${R[docker,pull]}" -v b="${R[berth,pull]}" \
  'BEGIN { printf "pull: berth is %.2fx faster than docker\n", d / b }'
echo "== where berth's last pull went, per layer (stages overlap: download, applier threads)"
grep -o 'layer [0-9a-f]\{12\}: .*' "$work/daemon.log" | tail -6
