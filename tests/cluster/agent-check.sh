#!/usr/bin/env bash
# Checks the node agent's kubelet behaviours against the running cluster:
# crash restarts with back-off, liveness restarts, Job completion, native
# sidecar ordering, grace period then SIGKILL, Secret volume refresh,
# readiness driving EndpointSlices, a pod cut off from the network, SIGKILL of
# a container (via pod.sh), and surviving an API server restart.
#   tests/cluster/agent-check.sh        (after tests/cluster/up.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

export KUBECONFIG="${KUBECONFIG:-$KUBECONFIG_PATH}"
[[ -f "$KUBECONFIG" ]] || die "no kubeconfig at $KUBECONFIG: run tests/cluster/up.sh first"
K() { "$K8S_BIN/kubectl" "$@"; }
NS=handover-agent-check
t0=$SECONDS
passed=0
ok() { passed=$((passed + 1)); log "[$((SECONDS - t0))s] ok: $*"; }
on_exit() {
  local rc=$?
  if ((rc != 0)); then
    echo "agent-check: FAILED after $passed checks; pods:" >&2
    K -n "$NS" get pods -o wide >&2 || true
    echo "agent-check: $passed passed, 1 failed" >&2
  fi
  [[ -n "${HANDOVER_CHECK_KEEP:-}" ]] || K delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
}
trap on_exit EXIT
jp() { K -n "$NS" get "$1" -o "jsonpath=$2" 2>/dev/null; }

if K get namespace "$NS" >/dev/null 2>&1; then K delete namespace "$NS" --timeout=120s >/dev/null; fi
K create namespace "$NS" >/dev/null
wait_for "service account default in $NS" 30 K -n "$NS" get serviceaccount default

K apply -n "$NS" -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers:
  - {name: c, image: busybox, command: ["sh", "-c", "echo crashing; exit 3"]}
---
apiVersion: v1
kind: Pod
metadata: {name: unlive}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: handover-smoke
    livenessProbe:
      httpGet: {path: /missing, port: 8080}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: batch/v1
kind: Job
metadata: {name: job}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: c, image: busybox, command: ["sh", "-c", "echo done"]}
---
apiVersion: v1
kind: Pod
metadata: {name: sidecar}
spec:
  initContainers:
  - name: side
    image: busybox
    restartPolicy: Always
    command: ["sh", "-c", "sleep 1; touch /shared/side-started; while :; do sleep 1; done"]
    startupProbe:
      exec: {command: ["test", "-f", "/shared/side-started"]}
      periodSeconds: 1
    volumeMounts: [{name: shared, mountPath: /shared}]
  containers:
  - name: app
    image: busybox
    command: ["sh", "-c", "test -f /shared/side-started || { echo sidecar not started; exit 1; }; while :; do sleep 1; done"]
    volumeMounts: [{name: shared, mountPath: /shared}]
  volumes:
  - {name: shared, emptyDir: {}}
---
apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - {name: c, image: busybox, command: ["sh", "-c", "trap 'echo ignoring TERM' TERM; while :; do sleep 0.2; done"]}
---
apiVersion: v1
kind: Secret
metadata: {name: keys}
stringData: {key: one}
---
apiVersion: v1
kind: Pod
metadata: {name: secret, labels: {app: secret}}
spec:
  containers:
  - name: web
    image: handover-smoke
    workingDir: /keys
    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      httpGet: {path: /ready, port: http}
      periodSeconds: 1
      failureThreshold: 1
    volumeMounts: [{name: keys, mountPath: /keys, readOnly: true}]
  volumes:
  - name: keys
    secret: {secretName: keys}
---
apiVersion: v1
kind: Service
metadata: {name: secret}
spec:
  selector: {app: secret}
  ports: [{name: http, port: 80, targetPort: http}]
YAML

restarts_at_least() { (($(jp "pod/$1" '{.status.containerStatuses[0].restartCount}') >= $2)); }
wait_for "pod crash to be restarted twice" 30 restarts_at_least crash 2
[[ "$(jp pod/crash '{.status.containerStatuses[0].lastState.terminated.exitCode}')" == 3 ]] ||
  die "crash: lastState does not record exit code 3"
ok "crashing container restarted with back-off ($(jp pod/crash '{.status.containerStatuses[0].restartCount}') restarts, last exit 3, $(jp pod/crash '{.status.containerStatuses[0].state.waiting.reason}'))"

wait_for "pod unlive to be restarted by its liveness probe" 30 restarts_at_least unlive 1
ok "liveness probe failure restarts the container"

K -n "$NS" wait --for=condition=complete job/job --timeout=30s >/dev/null
[[ "$(K -n "$NS" get pods -l job-name=job -o 'jsonpath={.items[0].status.phase}')" == Succeeded ]] || die "job pod is not Succeeded"
ok "Job completes, its pod Succeeded"

K -n "$NS" wait --for=condition=Ready pod/sidecar --timeout=30s >/dev/null
[[ "$(jp pod/sidecar '{.status.containerStatuses[0].restartCount}')" == 0 ]] || die "app started before its sidecar was started"
[[ "$(jp pod/sidecar '{.status.initContainerStatuses[0].state.running.startedAt}')" != "" ]] || die "sidecar not running"
ok "native sidecar started (startup probe) before the app container and keeps running"

K -n "$NS" wait --for=condition=Ready pod/stubborn --timeout=30s >/dev/null
s=$SECONDS
K -n "$NS" delete pod stubborn --timeout=30s >/dev/null
took=$((SECONDS - s))
((took >= 2 && took <= 8)) || die "deleting a pod that ignores SIGTERM took ${took}s, want about its 2s grace period"
ok "pod ignoring SIGTERM is killed after its grace period (delete took ${took}s)"

has_ip() { [[ -n "$(jp pod/secret '{.status.podIP}')" ]]; }
wait_for "pod secret to get an IP" 30 has_ip
ip="$(jp pod/secret '{.status.podIP}')"
key_is() { [[ "$(curl -fsS --max-time 2 "http://$ip:8080/key")" == "$1" ]]; }
wait_for "secret pod to serve key=one" 30 key_is one
K -n "$NS" patch secret keys -p '{"stringData":{"key":"two"}}' >/dev/null
wait_for "the updated Secret to reach the running pod" 30 key_is two
ok "Secret update reaches the mounted volume of a running pod"

ready_eps() {
  K -n "$NS" get endpointslices -l kubernetes.io/service-name=secret \
    -o 'jsonpath={range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{"\n"}{end}'
}
no_ready_eps() { [[ -z "$(ready_eps)" ]]; }
has_ready_ep() { [[ "$(ready_eps)" == "$ip" ]]; }
wait_for "no ready endpoint while /ready is missing" 20 no_ready_eps
K -n "$NS" patch secret keys -p '{"stringData":{"ready":"yes"}}' >/dev/null
wait_for "pod secret to become Ready once /ready exists" 30 has_ready_ep
ok "readiness probe drives the pod's Ready condition and its EndpointSlice"

POD="$CLUSTER_SRC/pod.sh"
veth="$("$POD" veth "$NS" secret)"
ip link set "$veth" down
wait_for "pod secret to become unready with its veth $veth down" 20 no_ready_eps
ip link set "$veth" up
wait_for "pod secret to become Ready again with its veth up" 30 has_ready_ep
ok "cutting a pod off (ip link set $veth down) makes it unready; back up, Ready again"

pid="$("$POD" pid "$NS" secret web)"
kill -KILL "$pid"
wait_for "container web of pod secret to be restarted after SIGKILL of pid $pid" 30 restarts_at_least secret 1
wait_for "pod secret to be Ready after the restart" 30 has_ready_ep
[[ "$(jp pod/secret '{.status.containerStatuses[0].lastState.terminated.exitCode}')" == 137 ]] ||
  die "lastState of the killed container is not exit 137"
ok "SIGKILL of a container's process (pod.sh pid): restarted, lastState exit 137, Ready again"

if [[ "${HANDOVER_CHECK_API_RESTART:-1}" == 1 && -f "$PIDS/kube-apiserver.pid" ]]; then
  pid="$(cat "$PIDS/kube-apiserver.pid")"
  log "stopping kube-apiserver (pid $pid, SIGTERM) and bringing it back with up.sh"
  s=$SECONDS
  kill -TERM "$pid"
  gone() { ! kill -0 "$pid" 2>/dev/null; }
  wait_for "kube-apiserver pid $pid to exit" 30 gone
  log "kube-apiserver exited $((SECONDS - s))s after SIGTERM"
  "$CLUSTER_SRC/up.sh" >/dev/null
  K -n "$NS" delete pod crash --timeout=30s >/dev/null
  K -n "$NS" run after --image=busybox --restart=Never -- sh -c 'sleep 3600' >/dev/null
  K -n "$NS" wait --for=condition=Ready pod/after --timeout=30s >/dev/null
  wait_for "the existing pod secret to still be Ready" 30 has_ready_ep
  ok "after an API server restart: pods deleted, started, and reported"
fi

K delete namespace "$NS" --timeout=120s >/dev/null
trap - EXIT
log "all checks passed in $((SECONDS - t0))s"
echo "agent-check: $passed passed, 0 failed"
