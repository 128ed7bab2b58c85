#!/usr/bin/env bash
# Prints one ready endpoint "ip:port" of a Service, picked at random from its
# EndpointSlices, as kube-proxy would for a new connection. For tests that
# run without kube-proxy (HANDOVER_KUBE_PROXY=0).
#   tests/cluster/endpoint.sh NAMESPACE SERVICE [PORT-NAME]
# Exits 1 with a message when the Service has no ready endpoint.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
(($# >= 2)) || die "usage: $0 NAMESPACE SERVICE [PORT-NAME]"
export KUBECONFIG="${KUBECONFIG:-$KUBECONFIG_PATH}"
"$K8S_BIN/kubectl" -n "$1" get endpointslices -l "kubernetes.io/service-name=$2" -o json |
  python3 -c '
import json, random, sys
svc, want = sys.argv[1], sys.argv[2]
eps = []
for s in json.load(sys.stdin)["items"]:
    ports = [p for p in (s.get("ports") or []) if want == "" or p.get("name", "") == want]
    if not ports:
        continue
    for e in s.get("endpoints") or []:
        if (e.get("conditions") or {}).get("ready"):
            eps += ["%s:%d" % (a, ports[0]["port"]) for a in e["addresses"]]
if not eps:
    sys.exit("error: service %s has no ready endpoint%s" % (svc, " with port " + want if want else ""))
print(random.choice(eps))
' "$1/$2" "${3:-}"
