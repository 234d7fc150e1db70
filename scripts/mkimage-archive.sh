#!/usr/bin/env bash
# Packs a root filesystem into a one-layer image archive in the docker-archive format
# (`docker save` layout: manifest.json, config, layer tar), loadable by `docker load`,
# `ctr image import` and `podman load`. Offline; for tests and benchmarks.
# Usage: scripts/mkimage-archive.sh ROOTFS OUT.tar [REPO:TAG]   (default busybox:latest)
set -euo pipefail
rootfs=${1:?usage: mkimage-archive.sh ROOTFS OUT.tar [REPO:TAG]}
out=${2:?usage: mkimage-archive.sh ROOTFS OUT.tar [REPO:TAG]}
tag=${3:-busybox:latest}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Reproducible layer: sorted names, fixed owner and mtime.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
mkdir "$work/$diff_id"
mv "$work/layer.tar" "$work/$diff_id/layer.tar"
cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z",
 "config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},
 "rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},
 "history":[{"created":"1970-01-01T00:00:00Z","created_by":"berth scripts/mkimage-archive.sh"}]}
JSON
config_id=$(sha256sum "$work/config.json" | cut -d' ' -f1)
mv "$work/config.json" "$work/$config_id.json"
repo=${tag%:*}
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]\n' "$config_id" "$tag" "$diff_id" > "$work/manifest.json"
printf '{"%s":{"%s":"%s"}}\n' "$repo" "${tag##*:}" "$diff_id" > "$work/repositories"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work" -cf "$out" manifest.json repositories "$config_id.json" "$diff_id"
