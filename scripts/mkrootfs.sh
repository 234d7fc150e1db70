#!/usr/bin/env bash
# Builds a busybox root filesystem offline from Debian's busybox-static.
# Usage: scripts/mkrootfs.sh DIR
set -euo pipefail
dir=${1:?usage: mkrootfs.sh DIR}
bb=$(command -v busybox || true)
if [ -z "$bb" ] || ! { ldd "$bb" 2>&1 || true; } | grep -q 'not a dynamic'; then
  echo "mkrootfs: a static busybox is needed: apt-get install busybox-static" >&2
  exit 1
fi
mkdir -p "$dir"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,proc,sys,dev,home,var/tmp,run}
chmod 1777 "$dir/tmp" "$dir/var/tmp"
cp "$bb" "$dir/bin/busybox"
# One link per applet at the path busybox itself reports (bin, sbin, usr/bin, usr/sbin).
"$dir/bin/busybox" --list-full | while read -r applet; do
  [ "$applet" = bin/busybox ] && continue
  ln -sf /bin/busybox "$dir/$applet"
done
cat > "$dir/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
cat > "$dir/etc/group" <<'G'
root:x:0:
tty:x:5:
nogroup:x:65534:
G
echo "berth" > "$dir/etc/hostname"
: > "$dir/etc/hosts"
: > "$dir/etc/resolv.conf"
