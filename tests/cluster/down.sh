#!/usr/bin/env bash
# Tears the local cluster down: stops the processes recorded in the pid files
# (SIGTERM, then SIGKILL after 15 s); removes every pod sandbox through the CRI (so
# CNI releases its addresses and veths), containerd's shims, the pods' processes,
# cgroups, mounts and network namespaces, puts back the kernel settings the kubelet
# changed, and removes the bridge, kube-proxy's iptables rules and the state directory.
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

# The kubelet first (it would restart what is removed next); then every pod sandbox through
# containerd (CNI DEL frees the IPs and veths).
stop kubelet
if is_running containerd && [[ -x "$K8S_BIN/crictl" ]]; then
  log "removing every pod sandbox of containerd $CONTAINERD_SOCK"
  crictl_ rmp --force --all >/dev/null 2>&1 || log "crictl rmp --all failed; processes are killed below"
fi
stop containerd
if [[ -d "$CONTAINERD_DIR" ]]; then
  # Shims of our containerd that outlived it (found by the socket in their command line), and
  # every process left in our pods' cgroups: SIGKILL by pid.
  shims=()
  for f in /proc/[0-9]*/cmdline; do
    cmd="$( (tr '\0' ' ' <"$f") 2>/dev/null)" || continue
    [[ "$cmd" == *containerd-shim*"-address $CONTAINERD_SOCK "* ]] && shims+=("$(basename "$(dirname "$f")")")
  done
  for h in /sys/fs/cgroup/*"$CGROUP_ROOT" /sys/fs/cgroup"$CGROUP_ROOT"; do
    [[ -d "$h" ]] || continue
    find "$h" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done
  done
  for pid in "${shims[@]}"; do
    log "killing containerd shim $pid left by containerd $CONTAINERD_SOCK"
    kill -KILL "$pid" 2>/dev/null || true
  done
  # Mounts under the state dir (container root filesystems, sandbox network namespaces, pod
  # volumes), deepest first.
  awk -v d="$HANDOVER_CLUSTER_DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cannot unmount $m"
  done
fi
# The pods' cgroups, deepest first (empty once their processes are gone).
for h in /sys/fs/cgroup/*"$CGROUP_ROOT" /sys/fs/cgroup"$CGROUP_ROOT"; do
  [[ -d "$h" ]] || continue
  deadline=$((SECONDS + 15))
  until find "$h" -depth -type d -exec rmdir {} + 2>/dev/null; [[ ! -d "$h" ]]; do
    if ((SECONDS >= deadline)); then log "cannot remove cgroup $h (processes left: $(find "$h" -name cgroup.procs -exec cat {} + | tr '\n' ' '))"; break; fi
    sleep 0.2
  done
done
# The kubelet's device-plugin socket has a fixed path; /var/lib/kubelet goes too if up.sh made it.
rm -f /var/lib/kubelet/device-plugins/kubelet.sock
if [[ -f "$HANDOVER_CLUSTER_DIR/var-lib-kubelet.created" ]]; then
  rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet 2>/dev/null || log "/var/lib/kubelet is not empty: kept"
fi
# The kernel settings the kubelet changed, as they were before.
if [[ -f "$HANDOVER_CLUSTER_DIR/sysctl.saved" ]]; then
  while read -r key value; do echo "$value" >"/proc/sys/$key" 2>/dev/null || log "cannot restore $key to $value"; done <"$HANDOVER_CLUSTER_DIR/sysctl.saved"
fi
stop kube-proxy kube-scheduler kube-controller-manager
stop kube-apiserver
stop etcd

# Veths still on the bridge (their pod's namespace outlived the teardown), then the bridge.
if ip link show "$BRIDGE" >/dev/null 2>&1; then
  for veth in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$veth" 2>/dev/null || true
  done
  ip link del "$BRIDGE"
fi
if [[ "$KUBE_PROXY" == 1 && -x "$K8S_BIN/kube-proxy" ]] && command -v iptables >/dev/null; then
  "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
fi
# The kubelet's own iptables chains (machine-wide, like kube-proxy's): KUBE-FIREWALL (drops
# non-loopback packets to 127.0.0.0/8), the canaries and the hint. Kept while another kubelet runs
# (another cluster index): it would only make them again.
other_kubelet=""
for f in /proc/[0-9]*/cmdline; do
  cmd="$( (tr '\0' ' ' <"$f") 2>/dev/null)" || continue
  [[ "$cmd" == */kubelet\ * ]] && other_kubelet="$(basename "$(dirname "$f")")"
done
if [[ -z "$other_kubelet" ]]; then
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for chain in INPUT OUTPUT; do
      while "$ipt" -t filter -D "$chain" -j KUBE-FIREWALL 2>/dev/null; do :; done
    done
    for table_chain in filter:KUBE-FIREWALL filter:KUBE-KUBELET-CANARY nat:KUBE-KUBELET-CANARY \
      mangle:KUBE-KUBELET-CANARY mangle:KUBE-IPTABLES-HINT; do
      "$ipt" -t "${table_chain%%:*}" -F "${table_chain#*:}" 2>/dev/null || true
      "$ipt" -t "${table_chain%%:*}" -X "${table_chain#*:}" 2>/dev/null || true
    done
  done
else
  log "another kubelet runs (pid $other_kubelet): its iptables chains are kept"
fi
rm -rf "$HANDOVER_CLUSTER_DIR"
log "cluster down in $((SECONDS - t0))s"
