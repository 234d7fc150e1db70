#!/usr/bin/env bash
# The whole test suite: installs what the tests need from Debian's packages (offline apart
# from apt and crates.io), then runs every test. Runtime tests need root; as another user
# they report themselves skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs="busybox-static libseccomp-dev pkg-config containerd python3-venv skopeo nftables iproute2 iptables docker-compose openssl docker-registry apache2-utils curl"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    # The registry package starts a service on :5000 where systemd runs; tests start their own.
    if command -v systemctl >/dev/null && systemctl is-active -q docker-registry 2>/dev/null; then systemctl stop docker-registry; fi
  else
    echo "missing packages:$missing (run as root, or apt-get install them)" >&2
    exit 1
  fi
fi
# docker-py (PyPI) for the SDK test, in a venv of its own under target/.
venv=target/test-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import docker' 2>/dev/null; then
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'docker>=7,<8'
fi
export BERTH_DOCKER_PY=$PWD/$venv/bin/python
cargo test --workspace --locked "$@"
