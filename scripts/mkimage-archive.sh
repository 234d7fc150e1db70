#!/usr/bin/env bash
# Packs a root filesystem into an image archive in the docker-archive format (`docker save`
# layout: manifest.json, config, layer tars), loadable by `docker load`, `ctr image import`
# and `podman load`. Offline; for tests and benchmarks. Layer tarballs given after the tag
# go on top of the root filesystem's layer, in order.
# Usage: scripts/mkimage-archive.sh ROOTFS OUT.tar [REPO:TAG [LAYER.tar...]]   (default busybox:latest)
set -euo pipefail
rootfs=${1:?usage: mkimage-archive.sh ROOTFS OUT.tar [REPO:TAG [LAYER.tar...]]}
out=${2:?usage: mkimage-archive.sh ROOTFS OUT.tar [REPO:TAG [LAYER.tar...]]}
tag=${3:-busybox:latest}
shift $(( $# < 3 ? $# : 3 ))
out=$(realpath -m "$out")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Reproducible layer: sorted names, fixed owner and mtime.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$work/layer.tar" .
diff_ids="" layers="" history=""
add_layer() { # TAR (moved into the archive)
  local id
  id=$(sha256sum "$1" | cut -d' ' -f1)
  if [ ! -d "$work/$id" ]; then
    mkdir "$work/$id"
    mv "$1" "$work/$id/layer.tar"
  fi
  diff_ids+="${diff_ids:+,}\"sha256:$id\""
  layers+="${layers:+,}\"$id/layer.tar\""
  history+="${history:+,}{\"created\":\"1970-01-01T00:00:00Z\",\"created_by\":\"berth scripts/mkimage-archive.sh\"}"
  last_id=$id
}
add_layer "$work/layer.tar"
for extra in "$@"; do
  cp "$extra" "$work/extra.tar"
  add_layer "$work/extra.tar"
done
cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z",
 "config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},
 "rootfs":{"type":"layers","diff_ids":[$diff_ids]},
 "history":[$history]}
JSON
config_id=$(sha256sum "$work/config.json" | cut -d' ' -f1)
mv "$work/config.json" "$work/$config_id.json"
repo=${tag%:*}
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":[%s]}]\n' "$config_id" "$tag" "$layers" > "$work/manifest.json"
printf '{"%s":{"%s":"%s"}}\n' "$repo" "${tag##*:}" "$last_id" > "$work/repositories"
ids=$(cd "$work" && find . -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort)
# shellcheck disable=SC2086 # one word per layer directory
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work" -cf "$out" manifest.json repositories "$config_id.json" $ids
