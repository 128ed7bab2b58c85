# NetworkPolicy enforcement on the node: kube-network-policies (sigs.k8s.io, the implementation kind
# uses), which works with any CNI — here the bridge plugin — by queueing the first packet of each
# new connection of the node's pods (nftables, NFQUEUE) and checking it against the policies. Without
# it the cluster stores NetworkPolicies and nothing enforces them. Sourced by up.sh once the node is
# Ready (it uses up.sh's start/wait_up/alive_or_die); not run on its own.
#
# Built once from the Go module proxy into $HANDOVER_CACHE. It reads the API through the in-cluster
# configuration only (a service-account token at the standard path), so it runs in a private mount
# namespace where that path is a bind mount of a token made for it here.
# shellcheck shell=bash

NETPOL_VERSION=v0.8.0
NETPOL_BIN="$HANDOVER_CACHE/tools/kube-network-policies-$NETPOL_VERSION/kube-network-policies"
SA_PATH=/var/run/secrets/kubernetes.io/serviceaccount

command -v nft >/dev/null || die "nft is not installed (Debian: nftables)"
if [[ ! -x "$NETPOL_BIN" ]]; then
  command -v go >/dev/null || die "go is needed to build kube-network-policies $NETPOL_VERSION"
  log "building kube-network-policies $NETPOL_VERSION (Go module proxy; cached in $(dirname "$NETPOL_BIN"))"
  netpol_tmp="$(mktemp -d)"
  GOBIN="$netpol_tmp" go install "sigs.k8s.io/kube-network-policies/cmd@$NETPOL_VERSION" >&2
  mkdir -p "$(dirname "$NETPOL_BIN")"
  mv "$netpol_tmp/cmd" "$NETPOL_BIN"
  rm -rf "$netpol_tmp"
fi

if ! is_running kube-network-policies; then
  kubectl_ apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: ServiceAccount
metadata: {name: kube-network-policies, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: kube-network-policies}
rules:
  - {apiGroups: [""], resources: [pods, namespaces], verbs: [list, watch]}
  - {apiGroups: [networking.k8s.io], resources: [networkpolicies], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: kube-network-policies}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kube-network-policies}
subjects: [{kind: ServiceAccount, name: kube-network-policies, namespace: kube-system}]
EOF
  netpol_sa="$HANDOVER_CLUSTER_DIR/netpol-serviceaccount"
  mkdir -p "$netpol_sa"
  kubectl_ -n kube-system create token kube-network-policies --duration 48h >"$netpol_sa/token"
  cp "$PKI/ca.crt" "$netpol_sa/ca.crt"
  echo kube-system >"$netpol_sa/namespace"
  # The mount point on the host stays an empty directory; down.sh removes it if up.sh made it.
  if [[ ! -d "$SA_PATH" ]]; then
    mkdir -p "$SA_PATH"
    touch "$HANDOVER_CLUSTER_DIR/serviceaccount-path.created"
  fi
  # shellcheck disable=SC2016 # the inner sh expands them
  # --fail-open: if the controller dies, queued packets pass instead of being dropped.
  start kube-network-policies unshare --mount --propagation private \
    sh -c 'mount --bind "$0" "$1" && shift 2 && exec "$@"' "$netpol_sa" "$SA_PATH" \
    env KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT="$API_PORT" \
    "$NETPOL_BIN" --hostname-override "$NODE_NAME" --disable-nri --fail-open \
    --nfqueue-id "$((100 + IDX))" --metrics-bind-address "127.0.0.1:$((9080 + 1000 * IDX))" --v=1
fi
netpol_synced() { curl -fsS "http://127.0.0.1:$((9080 + 1000 * IDX))/metrics" >/dev/null && nft list table inet kube-network-policies >/dev/null; }
wait_up kube-network-policies 60 "kube-network-policies to serve its metrics and install its nftables table" netpol_synced
