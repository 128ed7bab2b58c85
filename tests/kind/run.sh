#!/usr/bin/env bash
# Runs the end-to-end suite against kind, for users who have Docker (this project's own machines
# have no Docker engine: there the suite runs on tests/cluster instead).
#
#   tests/kind/run.sh            # creates the kind cluster "handover" if needed, builds and loads
#                                # the image, runs the suite; the cluster stays for inspection
#   kind delete cluster --name handover
#
# Process-level faults (SIGKILL/SIGSTOP of a pod's processes, API server restart) need the local
# cluster; against kind the suite runs every fault it can drive through kubectl.
set -euo pipefail
cd "$(dirname "$0")/../.."

for tool in docker kind kubectl helm cargo; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 1; }
done

name=handover
if ! kind get clusters | grep -qx "$name"; then
  kind create cluster --name "$name" --wait 120s
fi
export KUBECONFIG
KUBECONFIG="$(mktemp)"
kind get kubeconfig --name "$name" >"$KUBECONFIG"

# The suite deploys image handover:dev (the Dockerfile at the root, both binaries in one image).
docker build -t handover:dev .
kind load docker-image handover:dev --name "$name"

# The suite's clients talk to the pool's ClusterIP, balanced per connection by kube-proxy, as
# in-cluster clients are; ClusterIPs route only on the node, so the test binary runs there.
HANDOVER_E2E_KIND=1 HANDOVER_KUBECTL="$(command -v kubectl)" HANDOVER_HELM="$(command -v helm)" \
  cargo test -p handover-e2e --no-run
test_bin="$(ls -t target/debug/deps/cluster-* | grep -v '\.d$' | head -n1)"
docker cp "$test_bin" "$name-control-plane:/handover-e2e"
docker cp "$KUBECONFIG" "$name-control-plane:/kubeconfig"
docker cp "$(command -v kubectl)" "$name-control-plane:/usr/local/bin/kubectl-e2e"
docker cp "$(command -v helm)" "$name-control-plane:/usr/local/bin/helm"
docker exec "$name-control-plane" mkdir -p /repo
docker cp charts "$name-control-plane:/repo/charts"
# Inside the node the API server is at the node's own address, not the host's published port.
docker exec "$name-control-plane" sh -c \
  "sed -i 's#server: https://127.0.0.1:[0-9]*#server: https://127.0.0.1:6443#' /kubeconfig"
docker exec -e KUBECONFIG=/kubeconfig -e HANDOVER_E2E_KIND=1 -e HANDOVER_E2E_REPO=/repo \
  -e HANDOVER_KUBECTL=/usr/local/bin/kubectl-e2e -e HANDOVER_HELM=/usr/local/bin/helm \
  "$name-control-plane" /handover-e2e --test-threads=1 --nocapture \
  --skip api_server_crash  # kills the API server process: the local cluster only
