#!/usr/bin/env bash
# Smoke test of the local cluster (run tests/cluster/up.sh first, or set
# KUBECONFIG): a Deployment of 2 pods of our image (handover:dev running the demo
# app, its pod name from the downward API) with a native sidecar, non-root, read-only
# root, a memory limit. Checks pod IPs over HTTP from the host, EndpointSlices, the
# Service's ClusterIP (when kube-proxy runs, also from inside a pod, hairpin included),
# kubectl logs and exec, graceful deletion and replacement; then cleans up.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

export KUBECONFIG="${KUBECONFIG:-$KUBECONFIG_PATH}"
[[ -f "$KUBECONFIG" ]] || die "no kubeconfig at $KUBECONFIG: run tests/cluster/up.sh first"
K() { "$K8S_BIN/kubectl" "$@"; }
NS=handover-smoke
t0=$SECONDS
step() { log "[$((SECONDS - t0))s] $*"; }
cleanup() {
  K delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
}
on_exit() {
  local rc=$?
  ((rc == 0)) && return
  echo "smoke: FAILED; pods:" >&2
  K -n "$NS" get pods -o wide >&2 || true
  echo "smoke: 0 passed, 1 failed" >&2
  [[ -n "${HANDOVER_SMOKE_KEEP:-}" ]] || cleanup
}
trap on_exit EXIT

if K get namespace "$NS" >/dev/null 2>&1; then
  step "removing namespace $NS left by an earlier run"
  K delete namespace "$NS" --timeout=120s >/dev/null
fi
K create namespace "$NS" >/dev/null
wait_for "service account default in $NS" 30 K -n "$NS" get serviceaccount default

step "creating Deployment web (2 replicas of $HANDOVER_IMAGE) and Service web"
K apply -n "$NS" -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 10
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        seccompProfile: {type: RuntimeDefault}
      initContainers:
      - name: sidecar
        image: handover:dev
        imagePullPolicy: Never
        restartPolicy: Always
        command: ["handover-sidecar", "demo-app", "--listen", "0.0.0.0:8081"]
        startupProbe:
          tcpSocket: {port: 8081}
          periodSeconds: 1
      containers:
      - name: web
        image: handover:dev
        imagePullPolicy: Never
        command: ["handover-sidecar", "demo-app", "--listen", "0.0.0.0:8080"]
        env:
        - {name: HANDOVER_POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          tcpSocket: {port: http}
          periodSeconds: 1
        livenessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 2
        resources:
          limits: {memory: 64Mi}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: ["ALL"]}
YAML

step "waiting for 2 Ready pods"
K -n "$NS" rollout status deployment/web --timeout=90s >/dev/null
step "deployment web is available"

pod_ips() { K -n "$NS" get pods -l app=web -o jsonpath='{range .items[?(@.status.podIP)]}{.metadata.name}={.status.podIP}{"\n"}{end}'; }
get_web() { # URL [curl args]: the demo app's answer to GET /count for session "smoke"
  local url="$1"; shift
  curl -fsS --max-time 3 -H 'Handover-Session: smoke' "$@" "${url%/}/count"
}
check_pod() { # NAME IP
  local name="$1" ip="$2" body
  body="$(get_web "http://$ip:8080")"
  [[ "$body" == *"\"pod\":\"$name\""* ]] || die "pod $name ($ip) answered: $body"
  K -n "$NS" logs "$name" -c web | grep 'demo app started' >/dev/null || die "pod $name: kubectl logs does not show the app's start"
  K -n "$NS" exec "$name" -c web -- handover-sidecar --version | grep -q '^handover-sidecar ' ||
    die "pod $name: kubectl exec does not run in the container"
  log "  pod $name at $ip: HTTP with its name from the downward API, kubectl logs, kubectl exec: ok"
}
cip="$(K -n "$NS" get service web -o jsonpath='{.spec.clusterIP}')"
mapfile -t pods < <(pod_ips)
((${#pods[@]} == 2)) || die "expected 2 pods with IPs, got: ${pods[*]}"
for p in "${pods[@]}"; do check_pod "${p%%=*}" "${p#*=}"; done
[[ "${pods[0]#*=}" != "${pods[1]#*=}" ]] || die "both pods have the same IP"

slice_ips() {
  K -n "$NS" get endpointslices -l kubernetes.io/service-name=web \
    -o jsonpath='{range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{"\n"}{end}' | sort
}
want="$(printf '%s\n' "${pods[@]#*=}" | sort)"
slices_match() { [[ "$(slice_ips)" == "$want" ]]; }
wait_for "EndpointSlices of service web to list the ready pod IPs $(tr "\n" " " <<<"$want")" 30 slices_match
step "EndpointSlices list both pods: $(tr "\n" " " <<<"$want")"

if [[ "$KUBE_PROXY" == 1 ]] && is_running kube-proxy; then
  cluster_ip_ok() { [[ "$(get_web "http://$cip")" == *'"pod":"web-'* ]]; }
  wait_for "ClusterIP $cip:80 to answer through kube-proxy" 30 cluster_ip_ok
  step "ClusterIP $cip:80 answers from the host (kube-proxy iptables)"
  # From inside a pod too, including to itself through the Service (hairpin).
  podns="$("$CLUSTER_SRC/pod.sh" netns "$NS" "${pods[0]%%=*}")"
  for i in 1 2 3 4 5 6; do
    [[ "$(nsenter --net="$podns" curl -fsS --max-time 3 -H 'Handover-Session: smoke' "http://$cip/count")" == *'"pod":"web-'* ]] ||
      die "ClusterIP $cip does not answer from inside pod ${pods[0]%%=*} (netns $podns), try $i"
  done
  step "ClusterIP answers from inside a pod (6 connections, both endpoints incl. itself)"
fi

victim="${pods[0]%%=*}"
step "deleting pod $victim gracefully"
K -n "$NS" delete pod "$victim" --wait=true --timeout=60s >/dev/null
step "pod $victim is gone from the API"
two_ready_new() {
  local n
  n="$(K -n "$NS" get pods -l app=web -o jsonpath='{range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
    awk -v v="$victim" '$1 != v && $2 == "True"' | wc -l)"
  ((n == 2))
}
wait_for "a replacement pod to become Ready" 60 two_ready_new
mapfile -t pods < <(pod_ips)
for p in "${pods[@]}"; do check_pod "${p%%=*}" "${p#*=}"; done
want="$(printf '%s\n' "${pods[@]#*=}" | sort)"
wait_for "EndpointSlices to list the replacement's IP" 30 slices_match
step "replacement Ready and in the EndpointSlices: $(tr "\n" " " <<<"$want")"

K delete namespace "$NS" --timeout=120s >/dev/null
step "namespace $NS deleted"
echo "smoke: 1 passed, 0 failed"
