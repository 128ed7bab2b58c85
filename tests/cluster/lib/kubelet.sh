# The real node: containerd (its own config, root, state and socket under the state dir), runc,
# the CNI reference plugins on the cluster's bridge, the images, and the kubelet. Sourced by up.sh
# after the control plane is up (it uses up.sh's start/wait_up/alive_or_die); not run on its own.
# shellcheck shell=bash

command -v containerd >/dev/null || die "containerd is not installed"
command -v runc >/dev/null || die "runc is not installed"
for plugin in bridge host-local loopback portmap; do
  [[ -x "$CNI_BIN_DIR/$plugin" ]] || die "CNI plugin $CNI_BIN_DIR/$plugin is missing (Debian: containernetworking-plugins)"
done
[[ -x "$K8S_BIN/kubelet" && -x "$K8S_BIN/crictl" ]] || die "kubelet or crictl missing from $K8S_BIN (tests/cluster/build-k8s.sh)"
PAUSE_IMAGE="${HANDOVER_PAUSE_IMAGE:-registry.k8s.io/pause:3.10}"
mkdir -p "$CONTAINERD_DIR" "$KUBELET_DIR" "$CNI_DIR/net.d" "$CNI_DIR/ipam" "$HANDOVER_CLUSTER_DIR/pod-logs"

# --- kernel settings the kubelet changes -------------------------------------------
# The kubelet sets these (protectKernelDefaults: false); their values before the first kubelet of
# this cluster are kept so that down.sh puts them back.
if [[ ! -f "$HANDOVER_CLUSTER_DIR/sysctl.saved" ]]; then
  for key in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes; do
    [[ -f "/proc/sys/$key" ]] && echo "$key $(cat "/proc/sys/$key")"
  done >"$HANDOVER_CLUSTER_DIR/sysctl.saved.tmp"
  mv "$HANDOVER_CLUSTER_DIR/sysctl.saved.tmp" "$HANDOVER_CLUSTER_DIR/sysctl.saved"
fi

# --- cgroups ---------------------------------------------------------------------
# cgroup v1 (this machine): the pods' cgroups go under $CGROUP_ROOT in every hierarchy, so that
# down.sh removes exactly ours. A new cpuset cgroup starts with no CPUs: copy the parent's.
if [[ "$(stat -fc %T /sys/fs/cgroup)" == cgroup2fs ]]; then
  mkdir -p "/sys/fs/cgroup$CGROUP_ROOT"
else
  for h in /sys/fs/cgroup/*/; do
    h="${h%/}"
    [[ "$(stat -fc %T "$h")" == cgroupfs ]] || continue
    mkdir -p "$h$CGROUP_ROOT"
  done
  if [[ -d /sys/fs/cgroup/cpuset$CGROUP_ROOT ]]; then
    for f in cpuset.cpus cpuset.mems; do
      [[ -n "$(cat "/sys/fs/cgroup/cpuset$CGROUP_ROOT/$f")" ]] || cat "/sys/fs/cgroup/cpuset/$f" >"/sys/fs/cgroup/cpuset$CGROUP_ROOT/$f"
    done
  fi
fi

# --- CNI: the cluster's bridge, one IP per pod from host-local, hairpin for Services ----------
cat >"$CNI_DIR/net.d/10-handover.conflist.tmp" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "handover$IDX",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CNI_DIR/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$BRIDGE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
mv "$CNI_DIR/net.d/10-handover.conflist.tmp" "$CNI_DIR/net.d/10-handover.conflist"

# --- containerd -----------------------------------------------------------------------
cat >"$CONTAINERD_DIR/config.toml" <<TOML
# Written by tests/cluster/up.sh: this cluster's own containerd (never the machine's default).
version = 2
root = "$CONTAINERD_DIR/root"
state = "$CONTAINERD_DIR/state"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$CONTAINERD_SOCK"

[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$CONTAINERD_DIR/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = false
  enable_unprivileged_icmp = false
  # Never below containerd's own OOM score: this machine's root lacks CAP_SYS_RESOURCE, so the
  # kubelet's -998 for sandboxes (-997 for Guaranteed pods) would fail every container start.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$CNI_DIR/net.d"
    max_conf_num = 1
TOML

cat >"$CONTAINERD_DIR/crictl.yaml" <<YAML
runtime-endpoint: unix://$CONTAINERD_SOCK
image-endpoint: unix://$CONTAINERD_SOCK
timeout: 30
YAML
containerd_up() { ctr --address "$CONTAINERD_SOCK" version; }
start containerd "$(command -v containerd)" --config "$CONTAINERD_DIR/config.toml"
wait_up containerd 60 "containerd to answer on $CONTAINERD_SOCK" containerd_up

# --- images ---------------------------------------------------------------------------
# import_image ARCHIVE NAME: imports an OCI (or docker) archive into containerd's k8s.io namespace
# as NAME (the archive's index is kept under that name, whatever names it carries inside), and
# unpacks it. Skipped when this archive (by checksum) is already in under NAME.
import_image() {
  local archive="$1" name="$2" sum out
  [[ -f "$archive" ]] || die "image archive $archive does not exist"
  sum="$(sha256sum "$archive" | cut -d' ' -f1)"
  if [[ "$(cat "$CONTAINERD_DIR/imported.$sum" 2>/dev/null)" == "$name" ]] && image_present "$name"; then
    log "image $name is already imported from $archive"
    return 0
  fi
  log "importing $archive into containerd (k8s.io) as $name"
  if ! out="$(ctr_ images import --index-name "$name" "$archive" 2>&1)"; then
    # containerd 1.6's import once (in ~12 CI runs, 2026-12-03) did not find, while unpacking, the
    # index it had just written ("content digest sha256:…: not found", the archive intact). The
    # second import writes the index again; a second failure is the run's.
    log "ctr images import $archive failed ($out); importing it once more"
    out="$(ctr_ images import --index-name "$name" "$archive" 2>&1)" || die "ctr images import $archive failed twice: $out"
  fi
  image_present "$name" || die "ctr images import $archive did not give image $name: $out"
  echo "$name" >"$CONTAINERD_DIR/imported.$sum"
}
image_present() { ctr_ images check "name==$1" | grep -q ' complete '; }
if [[ -n "${HANDOVER_PAUSE_ARCHIVE:-}" ]]; then
  import_image "$HANDOVER_PAUSE_ARCHIVE" "$PAUSE_IMAGE"
fi
if [[ -n "${HANDOVER_IMAGE_ARCHIVE:-}" ]]; then
  import_image "$HANDOVER_IMAGE_ARCHIVE" "$HANDOVER_IMAGE"
fi
image_present "$PAUSE_IMAGE" ||
  die "the sandbox image $PAUSE_IMAGE is not in containerd: set HANDOVER_PAUSE_ARCHIVE to its archive"
image_present "$HANDOVER_IMAGE" ||
  log "warning: $HANDOVER_IMAGE is not in containerd (HANDOVER_IMAGE_ARCHIVE): pods of it will not start"

# --- kubelet --------------------------------------------------------------------------
# resolvConf "": pods get no name servers (there is no cluster DNS; names fail at once and no
# query leaves the machine). Eviction thresholds and image GC are set so that a shared, busy
# machine does not evict the test pods or delete the imported images (nothing could pull them back).
cat >"$KUBELET_DIR/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $BRIDGE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
imageServiceEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
resolvConf: ""
podLogsDir: $HANDOVER_CLUSTER_DIR/pod-logs
staticPodPath: ""
registerNode: true
rotateCertificates: false
serverTLSBootstrap: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
shutdownGracePeriod: 0s
shutdownGracePeriodCriticalPods: 0s
maxPods: 250
# 0, not -999: lowering an OOM score needs CAP_SYS_RESOURCE, which this machine's root lacks.
oomScoreAdj: 0
YAML

# The kubelet's device manager puts its socket in /var/lib/kubelet/device-plugins whatever its root
# dir: down.sh removes the socket, and the directories if this cluster made them.
[[ -e /var/lib/kubelet || -f "$HANDOVER_CLUSTER_DIR/var-lib-kubelet.created" ]] || touch "$HANDOVER_CLUSTER_DIR/var-lib-kubelet.created"
start kubelet "$K8S_BIN/kubelet" --config "$KUBELET_DIR/config.yaml" \
  --kubeconfig "$HANDOVER_CLUSTER_DIR/kubelet.kubeconfig" --root-dir "$KUBELET_DIR" \
  --hostname-override "$NODE_NAME" --node-ip "$BRIDGE_IP" --v=1
