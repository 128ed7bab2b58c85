#!/usr/bin/env bash
# Prints the default image map for the node agent (JSON). Image names are
# matched without registry, tag or digest, then by their last path element.
#   handover        -> the project's release binaries; ENTRYPOINT handover-sidecar (the
#                      operator container sets command: handover-operator)
#   handover-smoke  -> python3 -m http.server (smoke tests)
#   busybox         -> the host's /bin/sh and coreutils
# Override the release directory with HANDOVER_RELEASE_DIR.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
release="${HANDOVER_RELEASE_DIR:-$repo/target/release}"
py="$(python3 -c "import sys; print(sys.executable)")" || { echo "error: python3 not found" >&2; exit 1; }
py_dir="$(dirname "$py")"
cat <<JSON
{
  "handover": {"dir": "$release", "entrypoint": ["handover-sidecar"]},
  "handover-smoke": {"dir": "$py_dir", "entrypoint": ["python3", "-m", "http.server"], "args": ["8080"]},
  "busybox": {"dir": "/usr/bin", "entrypoint": [], "args": ["sh"]}
}
JSON
