#!/usr/bin/env bash
# Makes an OCI bundle (rootfs + config.json) running ARGS in a busybox rootfs, with the
# default spec of `berth runtime spec` minus the terminal.
# Usage: scripts/mkbundle.sh DIR [ARGS...]   (BERTH=path/to/berth to pick the binary)
set -euo pipefail
dir=${1:?usage: mkbundle.sh DIR [ARGS...]}
shift
here=$(cd "$(dirname "$0")" && pwd)
berth=${BERTH:-$here/../target/release/berth}
mkdir -p "$dir"
[ -x "$dir/rootfs/bin/busybox" ] || "$here/mkrootfs.sh" "$dir/rootfs"
rm -f "$dir/config.json"
"$berth" runtime spec --bundle "$dir"
args_json=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:] or ["sh"]))' "$@")
python3 - "$dir/config.json" "$args_json" <<'PY'
import json, sys
path, args = sys.argv[1], json.loads(sys.argv[2])
c = json.load(open(path))
c["process"]["terminal"] = False
c["process"]["args"] = args
json.dump(c, open(path, "w"), indent=2)
PY
