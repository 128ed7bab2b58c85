#!/usr/bin/env bash
# Finds the host-side pieces of a running pod, for fault-injection tests.
#   tests/cluster/pod.sh pid   NAMESPACE POD CONTAINER   # main process of the container (host pid)
#   tests/cluster/pod.sh netns NAMESPACE POD             # path of the pod's network namespace
#   tests/cluster/pod.sh veth  NAMESPACE POD             # host end of the pod's veth
#   tests/cluster/pod.sh ip    NAMESPACE POD
#   tests/cluster/pod.sh dir   NAMESPACE POD             # the node's directory of the pod (volumes)
# Examples: kill -KILL "$(pod.sh pid ns p app)"; kill -STOP ...; ip link set "$(pod.sh veth ns p)" down;
#           nsenter --net="$(pod.sh netns ns p)" curl http://127.0.0.1:8080/
# The pid is the one the runtime reports (`crictl inspect`: the container's init process, pid 1 of
# its pid namespace); never a search by process name. The netns is the pod sandbox's (its pause
# process's, also from the runtime).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
export KUBECONFIG="${KUBECONFIG:-$KUBECONFIG_PATH}"
what="${1:-}"
case "$what" in
  pid) (($# == 4)) || die "usage: $0 pid NAMESPACE POD CONTAINER" ;;
  netns | veth | ip | dir) (($# == 3)) || die "usage: $0 $what NAMESPACE POD" ;;
  *) die "usage: $0 pid|netns|veth|ip|dir NAMESPACE POD [CONTAINER]" ;;
esac
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
sandbox_pid() {
  local id
  id="$(crictl_ pods --namespace "^$2\$" --name "^$3\$" --state ready -q | head -n1)"
  [[ -n "$id" ]] || die "pod $2/$3 has no ready sandbox on this node"
  crictl_ inspectp "$id" | json "d['info']['pid']"
}
case "$what" in
  pid)
    cid="$("$K8S_BIN/kubectl" -n "$2" get pod "$3" -o json | python3 -c '
import json, sys
pod, name = json.load(sys.stdin), sys.argv[1]
for key in ("containerStatuses", "initContainerStatuses"):
  for c in pod["status"].get(key) or []:
      if c["name"] == name and "running" in (c.get("state") or {}):
          print(c["containerID"].split("://", 1)[1])
' "$4")"
    [[ -n "$cid" ]] || die "container $4 of pod $2/$3 is not running"
    pid="$(crictl_ inspect "$cid" | json "d['info']['pid']")"
    [[ "$pid" =~ ^[1-9][0-9]*$ ]] || die "the runtime reports no pid for container $4 ($cid) of pod $2/$3"
    echo "$pid" ;;
  netns) echo "/proc/$(sandbox_pid "$@")/ns/net" ;;
  veth)
    link="$(nsenter --net="/proc/$(sandbox_pid "$@")/ns/net" ip -o link show eth0)"
    idx="$(sed -n 's/^[0-9]*: eth0@if\([0-9]*\):.*/\1/p' <<<"$link")"
    [[ -n "$idx" ]] || die "pod $2/$3: no veth peer in: $link"
    ip -o link show | awk -F': ' -v i="$idx" '$1 == i {sub(/@.*/, "", $2); print $2}' ;;
  ip) "$K8S_BIN/kubectl" -n "$2" get pod "$3" -o 'jsonpath={.status.podIP}{"\n"}' ;;
  dir) echo "$KUBELET_DIR/pods/$("$K8S_BIN/kubectl" -n "$2" get pod "$3" -o 'jsonpath={.metadata.uid}')" ;;
esac
