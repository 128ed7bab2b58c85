#!/usr/bin/env bash
# Finds the host-side pieces of a running pod, for fault-injection tests.
#   tests/cluster/pod.sh pid   NAMESPACE POD CONTAINER   # main process of the container
#   tests/cluster/pod.sh netns NAMESPACE POD             # network namespace (ip netns exec ...)
#   tests/cluster/pod.sh veth  NAMESPACE POD             # host end of the pod's veth
#   tests/cluster/pod.sh ip    NAMESPACE POD
#   tests/cluster/pod.sh dir   NAMESPACE POD             # the agent's directory (logs/, volumes/)
# Examples: kill -KILL "$(pod.sh pid ns p app)"; kill -STOP ...; ip link set "$(pod.sh veth ns p)" down
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
export KUBECONFIG="${KUBECONFIG:-$KUBECONFIG_PATH}"
what="${1:-}"
case "$what" in
  pid) (($# == 4)) || die "usage: $0 pid NAMESPACE POD CONTAINER" ;;
  netns | veth | ip | dir) (($# == 3)) || die "usage: $0 $what NAMESPACE POD" ;;
  *) die "usage: $0 pid|netns|veth|ip|dir NAMESPACE POD [CONTAINER]" ;;
esac
uid="$("$K8S_BIN/kubectl" -n "$2" get pod "$3" -o 'jsonpath={.metadata.uid}')"
dir="$HANDOVER_CLUSTER_DIR/node/pods/$2_$3_$uid"
[[ -d "$dir" ]] || die "pod $2/$3 (uid $uid) has no directory on this node: $dir"
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$dir/sandbox.json" "$1"; }
case "$what" in
  pid)
    [[ -f "$dir/run/$4.pid" ]] || die "container $4 of pod $2/$3 is not running"
    cat "$dir/run/$4.pid" ;;
  netns) field netns ;;
  veth) field veth ;;
  ip) field ip ;;
  dir) echo "$dir" ;;
esac
