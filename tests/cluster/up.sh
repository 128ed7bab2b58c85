#!/usr/bin/env bash
# Brings up the local Kubernetes cluster as plain processes: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy and the
# node: a kubelet with its own containerd, runc and the CNI bridge plugin.
# Idempotent: components that already run are kept.
#
#   HANDOVER_IMAGE_ARCHIVE=… HANDOVER_PAUSE_ARCHIVE=… tests/cluster/up.sh
#
# imports the image archives (tests/image/build.sh) into the node's containerd, the
# first as handover:dev, the second as the sandbox image registry.k8s.io/pause:3.10.
# Without them, the images already imported are used.
#
# The last line printed is the KUBECONFIG path. State, logs and pid files
# live in ${HANDOVER_CLUSTER_DIR:-/tmp/handover-cluster}.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

[[ $EUID -eq 0 ]] || die "up.sh needs root (network namespaces, bridge, iptables)"
(($# == 0)) || die "usage: [HANDOVER_IMAGE_ARCHIVE=…] [HANDOVER_PAUSE_ARCHIVE=…] $0"
lock_cluster
t0=$SECONDS

# --- host packages -----------------------------------------------------------
need_pkgs=()
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v iptables >/dev/null || need_pkgs+=(iptables)
command -v conntrack >/dev/null || need_pkgs+=(conntrack)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v unzip >/dev/null || need_pkgs+=(unzip)
command -v containerd >/dev/null || need_pkgs+=(containerd)
command -v runc >/dev/null || need_pkgs+=(runc)
[[ -x "$CNI_BIN_DIR/bridge" ]] || need_pkgs+=(containernetworking-plugins)
command -v nsenter >/dev/null || need_pkgs+=(util-linux)
if ((${#need_pkgs[@]})); then
  log "installing Debian packages: ${need_pkgs[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# --- binaries ----------------------------------------------------------------
"$CLUSTER_SRC/build-k8s.sh"
mkdir -p "$PKI" "$LOGS" "$PIDS"

# --- certificates ----------------------------------------------------------------
# sign NAME SUBJECT [EXTFILE-LINES]: key and cert signed by the cluster CA.
sign() {
  local name="$1" subj="$2" ext="${3:-}"
  [[ -f "$PKI/$name.crt" ]] && return 0
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "$ext" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
}
if [[ ! -f "$PKI/ca.crt" ]]; then
  log "writing certificates and keys to $PKI"
  openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=handover-test-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/ca.crt" 2>/dev/null
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
fi
sign apiserver "/CN=kube-apiserver" \
  "extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$BRIDGE_IP,IP:$SERVICE_API_IP"
sign admin "/O=system:masters/CN=handover-admin" "extendedKeyUsage=clientAuth"
sign controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
sign scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
sign kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
# The kubelet: a node identity (the Node authorizer and NodeRestriction limit it to its own node
# and pods), its serving certificate for the API server's logs/exec/port-forward calls, and the
# API server's client certificate for those calls.
sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "extendedKeyUsage=clientAuth"
sign kubelet-serving "/CN=$NODE_NAME" "extendedKeyUsage=serverAuth
subjectAltName=DNS:$NODE_NAME,IP:$BRIDGE_IP"
sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"

kubeconfig() {
  local name="$1" out="$HANDOVER_CLUSTER_DIR/$1.kubeconfig"
  [[ "$name" == admin ]] && out="$KUBECONFIG_PATH"
  cat >"$out" <<KC
apiVersion: v1
kind: Config
clusters:
- name: handover
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $name
  user:
    client-certificate: $PKI/$name.crt
    client-key: $PKI/$name.key
contexts:
- name: handover
  context: {cluster: handover, user: $name, namespace: default}
current-context: handover
KC
}
for k in admin controller-manager scheduler kube-proxy kubelet; do kubeconfig "$k"; done

# --- pod network bridge (the API server advertises its address) ----------------
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link add "$BRIDGE" type bridge
fi
if [[ "$(ip -o addr show dev "$BRIDGE")" != *" $BRIDGE_IP/"* ]]; then
  ip addr add "$BRIDGE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
fi
ip link set "$BRIDGE" up
echo 1 >/proc/sys/net/ipv4/ip_forward

# --- processes -------------------------------------------------------------------
# start NAME COMMAND...: run in its own session, logging to $LOGS/NAME.log.
start() {
  local name="$1"; shift
  if is_running "$name"; then
    log "$name is already running (pid $(cat "$PIDS/$name.pid"))"
    return 0
  fi
  log "starting $name"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  local pid=$! deadline=$((SECONDS + 10))
  echo "$pid" >"$PIDS/$name.pid"
  # Until the child has exec'd the component, its command line is this script's, and is_running
  # would call it dead (a loaded machine took long enough for etcd to be reported "exited").
  until is_running "$name" || ! pid_alive "$pid" || ((SECONDS >= deadline)); do
    sleep 0.05
  done
}
api_ready() { kubectl_ get --raw /readyz >/dev/null; }
etcd_healthy() { curl -fsS "http://127.0.0.1:$ETCD_PORT/health" | grep '"health":"true"' >/dev/null; }
alive_or_die() {
  is_running "$1" || die "$1 exited; last lines of $LOGS/$1.log:
$(tail -n 20 "$LOGS/$1.log")"
}
wait_up() { # NAME TIMEOUT DESCRIPTION CHECK...
  local name="$1" timeout="$2" what="$3"; shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    alive_or_die "$name"
    ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what (log: $LOGS/$name.log)"
    sleep 0.5
  done
}

start etcd "$K8S_BIN/etcd" --name handover --data-dir "$HANDOVER_CLUSTER_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "handover=http://127.0.0.1:$ETCD_PEER_PORT" \
  --listen-metrics-urls "" --log-level warn --quota-backend-bytes 4294967296
wait_up etcd 60 "etcd to be healthy on 127.0.0.1:$ETCD_PORT" etcd_healthy

start kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 0.0.0.0 --secure-port "$API_PORT" --advertise-address "$BRIDGE_IP" \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --authorization-mode Node,RBAC --allow-privileged=true --enable-admission-plugins NodeRestriction \
  --kubelet-preferred-address-types InternalIP --kubelet-certificate-authority "$PKI/ca.crt" \
  --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
  --shutdown-send-retry-after=true \
  --profiling=false --v=1
wait_up kube-apiserver 120 "the API server to be ready (https://127.0.0.1:$API_PORT/readyz)" api_ready

start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig "$HANDOVER_CLUSTER_DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$HANDOVER_CLUSTER_DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$HANDOVER_CLUSTER_DIR/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --cert-dir "$HANDOVER_CLUSTER_DIR/kcm-certs" \
  --leader-elect=false --root-ca-file "$PKI/ca.crt" \
  --service-account-private-key-file "$PKI/sa.key" --use-service-account-credentials=true \
  --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" --profiling=false --v=1

start kube-scheduler "$K8S_BIN/kube-scheduler" \
  --kubeconfig "$HANDOVER_CLUSTER_DIR/scheduler.kubeconfig" \
  --authentication-kubeconfig "$HANDOVER_CLUSTER_DIR/scheduler.kubeconfig" \
  --authorization-kubeconfig "$HANDOVER_CLUSTER_DIR/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false --profiling=false --v=1

if [[ "$KUBE_PROXY" == 1 ]]; then
  start kube-proxy "$K8S_BIN/kube-proxy" \
    --kubeconfig "$HANDOVER_CLUSTER_DIR/kube-proxy.kubeconfig" \
    --hostname-override "$NODE_NAME" --proxy-mode iptables --cluster-cidr "$POD_CIDR" \
    --conntrack-max-per-core 0 --nodeport-addresses primary --metrics-bind-address "127.0.0.1:$PROXY_METRICS_PORT" \
    --healthz-bind-address "127.0.0.1:$PROXY_HEALTHZ_PORT" --v=1
fi

source "$CLUSTER_SRC/lib/kubelet.sh"

node_ready() {
  [[ "$(kubectl_ get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}
default_sa() { kubectl_ -n default get serviceaccount default && kubectl_ -n default get configmap kube-root-ca.crt; }
wait_up kubelet 90 "node $NODE_NAME to be Ready" node_ready
wait_up kube-controller-manager 60 "the default service account and kube-root-ca.crt (kube-controller-manager)" default_sa
for c in kube-scheduler kube-proxy containerd; do
  [[ "$c" == kube-proxy && "$KUBE_PROXY" != 1 ]] && continue
  alive_or_die "$c"
done

log "cluster up in $((SECONDS - t0))s: kubectl --kubeconfig $KUBECONFIG_PATH get pods -A"
echo "$KUBECONFIG_PATH"
