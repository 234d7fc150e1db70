#!/usr/bin/env bash
# Build: one project (two independent stages with RUN steps on busybox, a final stage that
# copies from both and COPYs a 50 MiB context of 800 files, then metadata steps), built by
# Berth (`berth build`) and by Docker's BuildKit (docker.io's dockerd, its 20.10 CLI with
# DOCKER_BUILDKIT=1), interleaved, in one run:
# - cold: build caches and the built images dropped first;
# - cached: the same build again, nothing changed;
# - one file: one source file changed, then built.
# Also the context upload alone: a build of `FROM busybox` whose context is the 50 MiB.
# Prints medians and the ratios.
#
#   sudo benches/build.sh [REPS]     (default 5)
#
# The anchors come from ../shared/anchors/setup.sh (apt installs, starts dockerd, imports
# busybox:latest into Docker). Only what this script made is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-5}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
. benches/lib.sh
docker_anchor
[ -x target/release/berth ] || cargo build --release --locked
# The 20.10 CLI has BuildKit built in; the Docker 28 CLI on these machines lacks buildx.
dkr=/usr/bin/docker
work=$(mktemp -d /tmp/berth-build.XXXXXX)
tag="bench$$"
cleanup() {
  $dkr rmi -f "berth-bench/build:$tag" "berth-bench/upload:$tag" >/dev/null 2>&1 || true
  $dkr builder prune -af >/dev/null 2>&1 || true
  berth_stop
  rm -rf "$work"
}
trap cleanup EXIT
berth_start "$work"
scripts/mkrootfs.sh "$work/rootfs" >/dev/null
scripts/mkimage-archive.sh "$work/rootfs" "$work/busybox.tar" busybox:latest >/dev/null
berth load -i "$work/busybox.tar" >/dev/null
$dkr image inspect busybox:latest >/dev/null 2>&1 || $dkr load -i "$work/busybox.tar" >/dev/null

# The project: 800 files of 64 KiB (incompressible) in 16 directories, 50 MiB.
p="$work/project"
mkdir -p "$p/src"
for d in $(seq 16); do
  mkdir -p "$p/src/d$d"
  for f in $(seq 50); do head -c 65536 /dev/urandom > "$p/src/d$d/f$f.bin"; done
done
cat > "$p/Dockerfile" <<'EOF'
FROM busybox AS deps
RUN mkdir -p /deps && for i in $(seq 200); do echo "dep $i" > /deps/f$i; done
RUN dd if=/dev/zero of=/deps/blob bs=1M count=8 2>/dev/null

FROM busybox AS tools
RUN mkdir -p /tools && for i in $(seq 100); do echo "tool $i" > /tools/t$i; done
RUN sha256sum /bin/busybox > /tools/sum

FROM busybox
COPY --from=deps /deps /deps
COPY --from=tools /tools /tools
COPY src/ /app/src/
RUN find /app/src -type f | wc -l > /app/count
ENV APP_MODE=production
WORKDIR /app
LABEL org.example.bench=build
CMD ["cat", "/app/count"]
EOF
mkdir -p "$work/upload"
cp -r "$p/src" "$work/upload/src"
printf 'FROM busybox\nLABEL upload=1\n' > "$work/upload/Dockerfile"

b_build() { berth build -q -t "berth-bench/build:$tag" "$1"; }
d_build() { DOCKER_BUILDKIT=1 $dkr build -q -t "berth-bench/build:$tag" "$1"; }
b_cold() {
  berth rmi -f "berth-bench/build:$tag" >/dev/null 2>&1 || true
  berth builder prune -f >/dev/null 2>&1
}
d_cold() {
  $dkr rmi -f "berth-bench/build:$tag" >/dev/null 2>&1 || true
  $dkr builder prune -af >/dev/null 2>&1
}
touch_one() { head -c 65536 /dev/urandom > "$p/src/d7/f13.bin"; }

# Milliseconds of a command, after a settling pause; fails loudly if the build fails.
t() {
  local t0 t1
  sleep 0.3
  t0=${EPOCHREALTIME/./}
  "$@" >"$work/last.out" 2>&1 || { echo "failed: $*" >&2; cat "$work/last.out" >&2; exit 1; }
  t1=${EPOCHREALTIME/./}
  echo $(( (t1 - t0) / 1000 ))
}
declare -A T R

echo "== warm-up"
b_build "$p" >/dev/null; d_build "$p" >/dev/null
berth build -q -t "berth-bench/upload:$tag" "$work/upload" >/dev/null
DOCKER_BUILDKIT=1 $dkr build -q -t "berth-bench/upload:$tag" "$work/upload" >/dev/null

echo "== cold, cached, one file changed, upload ($REPS runs each, interleaved)"
for i in $(seq "$REPS"); do
  b_cold; T[berth,cold]+="$(t b_build "$p") "
  d_cold; T[docker,cold]+="$(t d_build "$p") "
  T[berth,cached]+="$(t b_build "$p") "
  T[docker,cached]+="$(t d_build "$p") "
  touch_one; T[berth,one]+="$(t b_build "$p") "
  touch_one; T[docker,one]+="$(t d_build "$p") "
  T[berth,upload]+="$(t berth build -q -t "berth-bench/upload:$tag" "$work/upload") "
  T[docker,upload]+="$(t env DOCKER_BUILDKIT=1 $dkr build -q -t "berth-bench/upload:$tag" "$work/upload") "
done
for e in berth docker; do
  for k in cold cached one upload; do R[$e,$k]=$(echo "${T[$e,$k]}" | tr ' ' '\n' | grep . | median); done
done
# Both built the same thing.
[ "$(berth run --rm "berth-bench/build:$tag")" = 800 ] || { echo "berth's image is wrong" >&2; exit 1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.1fx", b / a; else print "-" }'; }
printf '\n%-40s %10s %16s %14s\n' "measure (ms, medians)" berth "docker buildkit" "docker/berth"
for k in cold cached one upload; do
  case $k in
    cold) label="cold build" ;;
    cached) label="fully cached rebuild" ;;
    one) label="rebuild after one file changed" ;;
    upload) label="50 MiB context, cached FROM+LABEL" ;;
  esac
  printf '%-40s %10s %16s %14s\n' "$label" "${R[berth,$k]}" "${R[docker,$k]}" "$(ratio "${R[berth,$k]}" "${R[docker,$k]}")"
done
