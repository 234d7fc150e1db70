#!/usr/bin/env bash
# Builds Berth and runs what works today, offline: a busybox container from the host's
# busybox-static, then a busybox web server in a container answering on a loopback port.
# (The daemon, images and published ports are not built yet: see docs/STATUS.md.)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (containers need it)" >&2; exit 1; }
for p in busybox-static libseccomp-dev pkg-config; do
  dpkg -s "$p" >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static libseccomp-dev pkg-config >/dev/null; break; }
done
cargo build --release --locked
berth=$PWD/target/release/berth
work=$(mktemp -d /tmp/berth-quickstart.XXXXXX)
root=$work/state
cleanup() {
  for id in $(ls "$root" 2>/dev/null); do "$berth" runtime --root "$root" delete --force "$id" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

echo "== a container: its own pid 1, hostname and network"
BERTH=$berth scripts/mkbundle.sh "$work/hello" sh -c 'echo "pid $$ on $(hostname), interfaces: $(ls /sys/class/net)"' >/dev/null
"$berth" runtime --root "$root" run --bundle "$work/hello" hello

echo "== a web server in a container, on the host's network, answering on 127.0.0.1"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BERTH=$berth scripts/mkbundle.sh "$work/web" httpd -f -p "127.0.0.1:$port" -h /www >/dev/null
mkdir -p "$work/web/rootfs/www" && echo "hello from a berth container" > "$work/web/rootfs/www/index.html"
# Share the host's network namespace (like --network host) so the port is on the host.
python3 - "$work/web/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "network"]
json.dump(c, open(sys.argv[1], "w"))
PY
"$berth" runtime --root "$root" run --detach --bundle "$work/web" web </dev/null >/dev/null 2>&1
for _ in $(seq 50); do
  if out=$(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/').read().decode().strip())" 2>/dev/null); then break; fi
  sleep 0.1
done
echo "GET http://127.0.0.1:$port/ -> ${out:-no answer}"
"$berth" runtime --root "$root" list
[ "${out:-}" = "hello from a berth container" ]
