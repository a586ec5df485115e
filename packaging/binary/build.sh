#!/usr/bin/env bash
# Build the one-file lkice binary for this platform into DIST (default: dist/).
#   packaging/binary/build.sh [--dist DIR] [--target URL] [--token TOKEN]
# --target/--token embed a default for double-click runs (lkice/embedded.json, only inside the
# binary: the source tree is left as it was). Needs: pip install '.[build]'.
set -euo pipefail
cd "$(dirname "$0")/../.."
dist=dist target="" token=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dist) dist=$2; shift 2 ;;
        --target) target=$2; shift 2 ;;
        --token) token=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
work=$(mktemp -d)
trap 'rm -rf "$work"; rm -f lkice/embedded.json' EXIT
if [ -n "$target" ]; then
    python3 -c 'import json,sys; json.dump({"target": sys.argv[1], "token": sys.argv[2] or None}, open("lkice/embedded.json","w"))' "$target" "$token"
fi
start=$(date +%s)
python3 -m PyInstaller --noconfirm --log-level WARN --distpath "$dist" --workpath "$work" \
    packaging/binary/lkice.spec
echo "built $dist/lkice in $(( $(date +%s) - start )) s, $(du -h "$dist/lkice" | cut -f1)"
