#!/usr/bin/env bash
# Layer unpacking: Berth's applier (diffID computed on the way, one syncfs) vs GNU tar+gzip
# (`tar -xzf`, then `sync -f` for the same durability), interleaved, on a generated layer
# of many small files and some large ones. Prints MB/s of each and the ratio; also zstd.
# Usage: benches/unpack.sh [RUNS] [SIZE_MB]   (defaults 3, 500)
set -euo pipefail
runs=${1:-3}
size_mb=${2:-500}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
cargo build --release --locked -q -p berth-store --example apply_layer
apply=target/release/examples/apply_layer
work=$(mktemp -d /var/tmp/berth-bench-unpack.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "generating a ${size_mb} MiB layer..."
python3 - "$work/src" "$size_mb" <<'PY'
import os, random, sys
root, total = sys.argv[1], int(sys.argv[2]) << 20
rnd = random.Random(42)
words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9))) for _ in range(5000)]
block = b" ".join(rnd.choice(words) for _ in range(800_000))   # ~5 MiB of word-like text
def text(n):
    out = bytearray()
    while len(out) < n:
        start = rnd.randrange(0, len(block) - 1)
        out += block[start:start + n - len(out)]
    return bytes(out)
written = 0
large = total // 2                     # half the bytes in a few large files
for i in range(5):
    d = os.path.join(root, "opt", "big")
    os.makedirs(d, exist_ok=True)
    n = large // 5
    with open(os.path.join(d, f"blob{i}"), "wb") as f:
        f.write(text(n // 2) + os.urandom(n - n // 2))   # half text, half incompressible
    written += n
i = 0
while written < total:                 # the rest in small files, 100 per directory
    d = os.path.join(root, "usr", f"d{i // 100}")
    os.makedirs(d, exist_ok=True)
    n = rnd.randint(512, 24 << 10)
    with open(os.path.join(d, f"f{i}"), "wb") as f:
        f.write(text(n))
    written += n; i += 1
print(f"{i} small files, 5 large", file=sys.stderr)
PY
tar -C "$work/src" -cf "$work/layer.tar" .
gzip -6 -c "$work/layer.tar" > "$work/layer.tar.gz"
zstd -q -3 -c "$work/layer.tar" > "$work/layer.tar.zst" 2>/dev/null || python3 -c "
import sys, subprocess; sys.exit('zstd CLI missing: apt-get install zstd')"
raw=$(stat -c %s "$work/layer.tar")
rm -rf "$work/src"
echo "layer: $((raw >> 20)) MiB uncompressed, gzip $(( $(stat -c %s "$work/layer.tar.gz") >> 20 )) MiB"

time_it() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
declare -a berth_gz tar_gz berth_zst
for i in $(seq "$runs"); do
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  rm -rf "$work/out"; mkdir "$work/out"
  berth_gz+=( "$(time_it "$apply" "$work/layer.tar.gz" "$work/out")" )
  rm -rf "$work/out"; mkdir "$work/out"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  tar_gz+=( "$(time_it sh -c "tar -xzf '$work/layer.tar.gz' -C '$work/out' && sync -f '$work/out'")" )
  rm -rf "$work/out"; mkdir "$work/out"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  berth_zst+=( "$(time_it "$apply" "$work/layer.tar.zst" "$work/out")" )
  rm -rf "$work/out"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
b=$(median "${berth_gz[@]}"); t=$(median "${tar_gz[@]}"); z=$(median "${berth_zst[@]}")
mbs() { awk -v b="$raw" -v ms="$1" 'BEGIN {printf "%.0f", b / 1048576 / (ms / 1000)}'; }
echo "unpack, median of $runs interleaved runs (MB/s of uncompressed layer)"
echo "berth gzip (with diffID): ${b} ms  $(mbs "$b") MB/s"
echo "tar -xzf  (gzip):         ${t} ms  $(mbs "$t") MB/s"
echo "berth zstd (with diffID): ${z} ms  $(mbs "$z") MB/s"
awk -v b="$b" -v t="$t" 'BEGIN {printf "ratio berth/tar speed (gzip) = %.2fx\n", t / b}'
