#!/usr/bin/env bash
# Build the one-file lkice binary for this platform into DIST (default: dist/).
#   packaging/binary/build.sh [--dist DIR] [--target URL] [--token TOKEN [--token2 TOKEN]]
# The work is done by build.py (the same on Windows: python packaging/binary/build.py ...).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python3 packaging/binary/build.py "$@"
