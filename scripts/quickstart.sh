#!/usr/bin/env bash
# Builds Berth and runs the main job offline: the daemon, a busybox image made from the
# host's busybox-static, containers through `berth run`, and a web server in a container
# answering on a loopback port. Everything lives in a temporary directory and goes at
# exit, and so do the bridge (berth0) and nftables tables (ip/ip6 berth) when this script made them.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (containers need it)" >&2; exit 1; }
pkgs="busybox-static libseccomp-dev pkg-config nftables iproute2"
for p in $pkgs; do
  dpkg -s "$p" >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null; break; }
done
cargo build --release --locked
berth=$PWD/target/release/berth
work=$(mktemp -d /tmp/berth-quickstart.XXXXXX)
daemon_pid=""
export BERTH_HOST="unix://$work/berth.sock"
# A bridge or table already there belongs to a Berth daemon of this machine: left alone.
had_bridge=$(ip link show berth0 >/dev/null 2>&1 && echo yes || true)
had_table=$(nft list table ip berth >/dev/null 2>&1 && echo yes || true)
cleanup() {
  if [ -n "$daemon_pid" ]; then
    ids=$("$berth" ps -aq 2>/dev/null || true)
    [ -n "$ids" ] && "$berth" rm -f $ids >/dev/null 2>&1
    kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  fi
  if [ -z "$had_bridge" ]; then
    ip link del berth0 2>/dev/null
    # Berth's rules in Docker's DOCKER-USER chain, when Docker is here too.
    iptables -S DOCKER-USER 2>/dev/null | grep -- '--comment berth ' | sed 's/^-A/-D/' \
      | while read -r rule; do eval iptables -w "$rule"; done
  fi
  if [ -z "$had_table" ]; then
    nft delete table ip berth 2>/dev/null
    nft delete table ip6 berth 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== berth daemon on $BERTH_HOST, and a busybox image made from the host"
"$berth" daemon -H "$BERTH_HOST" --data-root "$work/data" --exec-root "$work/exec" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do "$berth" version >/dev/null 2>&1 && break; sleep 0.05; done
scripts/mkrootfs.sh "$work/busybox-rootfs"
scripts/mkimage-archive.sh "$work/busybox-rootfs" "$work/busybox.tar" busybox:latest
"$berth" load -i "$work/busybox.tar"
"$berth" images

echo "== containers: their own pid 1, hostname and network; exit codes come back"
"$berth" run --rm busybox sh -c 'echo "pid $$ on $(hostname), interfaces: $(ls /sys/class/net | tr "\n" " ")"'
set +e; "$berth" run --rm busybox sh -c 'exit 3'; code=$?; set -e
echo "exit code: $code"

echo "== a web server in a container on the default bridge, published on 127.0.0.1"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/www" && echo "hello from a berth container" > "$work/www/index.html"
"$berth" run -d --name web -p "127.0.0.1:$port:80" -v "$work/www:/www:ro" busybox httpd -f -p 80 -h /www >/dev/null
"$berth" port web
for _ in $(seq 50); do
  if out=$(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/').read().decode().strip())" 2>/dev/null); then break; fi
  sleep 0.1
done
echo "GET http://127.0.0.1:$port/ -> ${out:-no answer}"
"$berth" ps
"$berth" exec web sh -c 'echo "exec in web: $(ps | wc -l) lines of ps"'
"$berth" rm -f web >/dev/null
[ "${out:-}" = "hello from a berth container" ]
