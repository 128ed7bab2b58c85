#!/usr/bin/env bash
# Tears the local cluster down: stops the processes recorded in the pid files
# (SIGTERM, then SIGKILL after 15 s), removes pod network namespaces, the
# bridge, kube-proxy's iptables rules and the state directory.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

[[ $EUID -eq 0 ]] || die "down.sh needs root"
lock_cluster
t0=$SECONDS

# stop NAME...: SIGTERM to each, then wait for all (SIGKILL after 15 s).
stop() {
  local name pid pids=() names=()
  for name in "$@"; do
    if is_running "$name"; then
      pid="$(cat "$PIDS/$name.pid")"
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid") names+=("$name")
    fi
    rm -f "$PIDS/$name.pid"
  done
  local deadline=$((SECONDS + 15)) i
  for i in "${!pids[@]}"; do
    while pid_alive "${pids[$i]}"; do
      if ((SECONDS >= deadline)); then
        log "${names[$i]} did not stop within 15s: SIGKILL"
        kill -KILL "${pids[$i]}" 2>/dev/null || true
        break
      fi
      sleep 0.2
    done
  done
}

# The node agent first, while the API server is still there: it stops its pods.
stop nodeagent
stop kube-proxy kube-scheduler kube-controller-manager
stop kube-apiserver
stop etcd

# Pod namespaces the agent left (it was killed, or never cleaned up).
for ns in $(ip netns list 2>/dev/null | awk -v p="$NETNS_PREFIX" 'index($1, p) == 1 {print $1}'); do
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
done
if ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link del "$BRIDGE"
fi
if [[ "$KUBE_PROXY" == 1 && -x "$K8S_BIN/kube-proxy" ]] && command -v iptables >/dev/null; then
  "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
fi
rm -rf "$HANDOVER_CLUSTER_DIR"
log "cluster down in $((SECONDS - t0))s"
