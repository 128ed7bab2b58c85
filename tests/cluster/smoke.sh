#!/usr/bin/env bash
# Smoke test of the local cluster (run tests/cluster/up.sh first, or set
# KUBECONFIG). Node agent: a Deployment of 2 python http.server pods with an init
# container, a native sidecar, a ConfigMap volume, downward API env and the
# service-account token. Kubelet node: a Deployment of 2 pods of our image
# (handover:dev, the demo app) with a native sidecar, non-root, read-only root.
# Checks pod IPs over HTTP from the host, EndpointSlices, the Service's ClusterIP
# (when kube-proxy runs, also from inside a pod), kubectl logs and exec, graceful
# deletion and replacement; then cleans up.
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

if [[ "$NODE_KIND" == kubelet ]]; then
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

else
step "creating Deployment web (2 replicas) and Service web"
K apply -n "$NS" -f - >/dev/null <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata: {name: web-content}
data:
  index.html: "hello from handover-smoke\n"
---
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
      initContainers:
      - name: prepare
        image: busybox:1.36
        command: ["sh", "-c"]
        args:
        - |
          set -e
          cp /content/index.html /www/index.html
          sa=/var/run/secrets/kubernetes.io/serviceaccount
          code=$(curl -s -o /dev/null -w '%{http_code}' --cacert $sa/ca.crt \
            -H "Authorization: Bearer $(cat $sa/token)" \
            https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api)
          printf 'name=%s\nnamespace=%s\nip=%s\nuid=%s\napi=%s\nhostname=%s\nsvc=%s\n' "$POD_NAME" "$POD_NAMESPACE" \
            "$POD_IP" "$POD_UID" "$code" "$(hostname)" "$WEB_SERVICE_HOST:$WEB_SERVICE_PORT" > /www/info.txt
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        - {name: POD_UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}
        volumeMounts:
        - {name: content, mountPath: /content, readOnly: true}
        - {name: www, mountPath: /www}
      - name: sidecar
        image: busybox:1.36
        restartPolicy: Always
        command: ["sh", "-c", "trap 'echo sidecar got TERM; exit 0' TERM; while :; do sleep 1; done"]
      containers:
      - name: web
        image: registry.example/handover-smoke:latest
        workingDir: /www
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /index.html, port: http}
          periodSeconds: 1
        livenessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 2
        lifecycle:
          preStop:
            exec: {command: ["sh", "-c", "echo prestop > /www/prestop.txt; sleep 1"]}
        volumeMounts:
        - {name: www, mountPath: /www}
      volumes:
      - name: content
        configMap: {name: web-content}
      - name: www
        emptyDir: {}
YAML

fi
step "waiting for 2 Ready pods"
K -n "$NS" rollout status deployment/web --timeout=90s >/dev/null
step "deployment web is available"

pod_ips() { K -n "$NS" get pods -l app=web -o jsonpath='{range .items[?(@.status.podIP)]}{.metadata.name}={.status.podIP}{"\n"}{end}'; }
check_pod() { # NAME IP
  local name="$1" ip="$2"
  if [[ "$NODE_KIND" == kubelet ]]; then check_pod_kubelet "$@"; else check_pod_agent "$@"; fi
}
# The demo app answers a session's count with the pod's name (downward API env).
expected_body() { [[ "$NODE_KIND" == kubelet ]] && echo '"pod":"' || echo "hello from handover-smoke"; }
get_web() { # URL [curl args]: the body of the web container's page
  local url="$1"; shift
  if [[ "$NODE_KIND" == kubelet ]]; then
    curl -fsS --max-time 3 -H 'Handover-Session: smoke' "$@" "${url%/}/count"
  else
    curl -fsS --max-time 3 "$@" "${url%/}/index.html"
  fi
}
check_pod_kubelet() { # NAME IP
  local name="$1" ip="$2" body
  body="$(get_web "http://$ip:8080")"
  [[ "$body" == *"\"pod\":\"$name\""* ]] || die "pod $name ($ip) answered: $body"
  K -n "$NS" logs "$name" -c web | grep 'demo app started' >/dev/null || die "pod $name: kubectl logs does not show the app's start"
  K -n "$NS" exec "$name" -c web -- handover-sidecar --version | grep -q '^handover-sidecar ' ||
    die "pod $name: kubectl exec does not run in the container"
  log "  pod $name at $ip: HTTP with its name from the downward API, kubectl logs, kubectl exec: ok"
}
check_pod_agent() { # NAME IP
  local name="$1" ip="$2" body info
  body="$(curl -fsS --max-time 5 "http://$ip:8080/index.html")"
  [[ "$body" == "hello from handover-smoke" ]] || die "pod $name ($ip) answered: $body"
  info="$(curl -fsS --max-time 5 "http://$ip:8080/info.txt")"
  grep -qx "name=$name" <<<"$info" || die "pod $name: downward API name wrong: $info"
  grep -qx "ip=$ip" <<<"$info" || die "pod $name: downward API podIP wrong: $info"
  grep -qx "namespace=$NS" <<<"$info" || die "pod $name: namespace wrong: $info"
  grep -qx "api=200" <<<"$info" || die "pod $name: in-cluster API call with its token failed: $info"
  grep -qx "hostname=$name" <<<"$info" || die "pod $name: hostname is not the pod name: $info"
  grep -qx "svc=$cip:80" <<<"$info" || die "pod $name: service link env WEB_SERVICE_HOST/PORT wrong: $info"
  K -n "$NS" logs "$name" -c web | grep 'GET /index.html' >/dev/null || die "pod $name: kubectl logs does not show the requests"
  [[ "$(K -n "$NS" exec "$name" -c web -- cat /www/index.html)" == "hello from handover-smoke" ]] ||
    die "pod $name: kubectl exec does not see the pod's volume"
  log "  pod $name at $ip: HTTP, downward API, hostname, service env, in-cluster API with SA token (200), kubectl logs, kubectl exec: ok"
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
  cluster_ip_ok() { [[ "$(get_web "http://$cip")" == *"$(expected_body)"* ]]; }
  wait_for "ClusterIP $cip:80 to answer through kube-proxy" 30 cluster_ip_ok
  step "ClusterIP $cip:80 answers from the host (kube-proxy iptables)"
  # From inside a pod too, including to itself through the Service (hairpin).
  podns="$("$CLUSTER_SRC/pod.sh" netns "$NS" "${pods[0]%%=*}")"
  for i in 1 2 3 4 5 6; do
    [[ "$(nsenter --net="$podns" curl -fsS --max-time 3 "http://$cip/$([[ "$NODE_KIND" == kubelet ]] && echo count || echo index.html)" -H 'Handover-Session: smoke')" == *"$(expected_body)"* ]] ||
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
