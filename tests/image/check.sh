#!/usr/bin/env bash
# Runs the handover image as users will run it: imported into containerd, started by runc with the
# chart's security settings, and checks what it does there.
#
#   tests/image/check.sh [ARCHIVE [PAUSE_ARCHIVE]]
#
# ARCHIVE defaults to the archive tests/image/build.sh writes; PAUSE_ARCHIVE (build.sh --pause),
# when given, is checked too: it runs under the same settings and stops at once on SIGTERM.
#
# A containerd of its own (root, state, socket, runc root under a temporary directory; no CRI
# plugin) is started for the check and stopped afterwards, with every task, mount and network
# namespace it made, also on failure. Every container runs as the image's user (65532:65532), with
# a read-only root filesystem, no capabilities, containerd's default seccomp profile, no_new_privs
# and a memory limit; the check reads each of these back from the running process (/proc/<pid> of
# the task, read from the host: the image has no shell to read them from inside) and from the
# runtime (the OCI spec containerd handed to runc, the cgroup's memory.limit_in_bytes).
# Then a sidecar and the demo app, two containers in one network namespace this script creates,
# serve a session: cookie set, state continued, app container replaced and state restored.
# Ends with "check: N passed, N failed".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $EUID -eq 0 ]] || die "check.sh needs root (containerd, runc, network namespaces)"
ARCHIVE="${1:-$IMAGES_DIR/handover.oci.tar}"
[[ -f "$ARCHIVE" ]] || die "no image archive at $ARCHIVE (build it: tests/image/build.sh)"
PAUSE_ARCHIVE="${2:-}"
[[ -z "$PAUSE_ARCHIVE" || -f "$PAUSE_ARCHIVE" ]] || die "no pause archive at $PAUSE_ARCHIVE (tests/image/build.sh --pause)"
need_debs containerd:containerd runc:runc ctr:containerd ip:iproute2 curl:curl jq:jq pgrep:procps unshare:util-linux

MEM_LIMIT=$((128 * 1024 * 1024))
NS="handover-check-$$"           # containerd namespace (and cgroup parent /<NS>)
NETNS="hoimg-$$"                 # network namespace of the sidecar + app pair
DIR="$(mktemp -d /tmp/handover-image-check.XXXXXX)"
SOCK="$DIR/containerd.sock"
CTRD_PID=""
pass=0 fail=0
t_start=$SECONDS

ok() { pass=$((pass + 1)); printf 'ok    %s\n' "$*"; }
bad() { fail=$((fail + 1)); printf 'FAIL  %s\n' "$*"; }
# check DESCRIPTION EXPECTED ACTUAL
check() { if [[ "$2" == "$3" ]]; then ok "$1: $3"; else bad "$1: expected '$2', got '$3'"; fi; }

ctr_() { ctr --address "$SOCK" --namespace "$NS" "$@"; }

finished=0 err_line=""
trap 'err_line=$LINENO' ERR
cleanup() {
  local rc=$? id
  set +e
  if ((rc != 0 && finished == 0)); then
    # A command outside the checks failed: say where, and still end with the count.
    printf 'FAIL  check.sh stopped at line %s (exit status %s)\n' "${err_line:-?}" "$rc"
    printf 'check: %d passed, %d failed\n' "$pass" "$((fail + 1))"
  fi
  if [[ -n "$CTRD_PID" ]] && kill -0 "$CTRD_PID" 2>/dev/null; then
    for id in $(ctr_ task ls -q 2>/dev/null); do
      ctr_ task kill -s SIGKILL "$id" >/dev/null 2>&1
    done
    for id in $(ctr_ task ls -q 2>/dev/null); do
      wait_for 10 "task $id to stop" task_stopped "$id" >/dev/null 2>&1
      ctr_ task delete -f "$id" >/dev/null 2>&1
    done
    for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$id" >/dev/null 2>&1; done
    kill "$CTRD_PID" 2>/dev/null
    wait_for 15 "containerd (pid $CTRD_PID) to exit" dead "$CTRD_PID" >/dev/null 2>&1 || kill -KILL "$CTRD_PID" 2>/dev/null
  fi
  ip netns delete "$NETNS" 2>/dev/null
  # Whatever is still mounted below our directory (snapshots, shim bundles).
  grep -o " ${DIR}[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m"; done
  rmdir "/sys/fs/cgroup/"*"/$NS" 2>/dev/null
  rm -rf "$DIR"
  exit "$rc"
}
trap cleanup EXIT INT TERM

# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.2 s until it succeeds or the time is up.
wait_for() {
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@"; do
    if ((SECONDS >= deadline)); then
      printf 'timed out after %s s waiting for %s\n' "$limit" "$what" >&2
      return 1
    fi
    sleep 0.2
  done
}
dead() { ! kill -0 "$1" 2>/dev/null; }
task_stopped() { [[ "$(ctr_ task ls | awk -v id="$1" '$1 == id { print $3 }')" == STOPPED ]]; }

# --- containerd of our own ---------------------------------------------------------------------
mkdir -p "$DIR"/{root,state,runc,fifo,logs}
cat >"$DIR/config.toml" <<EOF
version = 2
root = "$DIR/root"
state = "$DIR/state"
# No CRI: this containerd only serves ctr. The opt plugin would write to /opt/containerd.
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = "$DIR/debug.sock"
EOF
containerd --config "$DIR/config.toml" >"$DIR/logs/containerd.log" 2>&1 &
CTRD_PID=$!
if ! wait_for 30 "containerd to answer on $SOCK" ctr --address "$SOCK" version >/dev/null 2>&1; then
  tail -n 20 "$DIR/logs/containerd.log" >&2
  die "containerd did not start"
fi
log "containerd $(containerd --version | awk '{print $3}') (pid $CTRD_PID), runc $(runc --version | awk 'NR==1{print $3}'), state in $DIR"

# --- the image: imported as a kubelet's containerd would have it -------------------------------
ctr_ images import --all-platforms "$ARCHIVE" >/dev/null
IMAGE="$(ctr_ images ls -q | head -n1)"
[[ -n "$IMAGE" ]] || die "no image in $ARCHIVE"
log "imported $IMAGE from $ARCHIVE"

# The image's own config, read from the archive (what `docker inspect` would show).
blob() { tar -xOf "$ARCHIVE" "blobs/sha256/${1#sha256:}"; }
manifest="$(blob "$(tar -xOf "$ARCHIVE" index.json | jq -r '.manifests[0].digest')")"
config="$(blob "$(jq -r '.config.digest' <<<"$manifest")")"
check "image user" "65532:65532" "$(jq -r '.config.User' <<<"$config")"
check "image entrypoint" '["/usr/local/bin/handover-sidecar"]' "$(jq -c '.config.Entrypoint' <<<"$config")"
check "image cmd" '["--help"]' "$(jq -c '.config.Cmd' <<<"$config")"
layers="$(jq '.layers | length' <<<"$manifest")"
compressed="$(jq '[.layers[].size] | add' <<<"$manifest")"
unpacked="$(jq '[.rootfs.diff_ids[]] | length' <<<"$config")"
printf 'info  image: %s layers, %s MB compressed (archive %s MB)\n' "$layers" \
  "$(awk -v b="$compressed" 'BEGIN{printf "%.1f", b/1e6}')" \
  "$(awk -v b="$(stat -c %s "$ARCHIVE")" 'BEGIN{printf "%.1f", b/1e6}')"
((unpacked == layers)) || bad "config lists $unpacked diff_ids for $layers layers"

# --- how every container runs: the chart's securityContext, as containerd/runc apply it ----------
# All capabilities dropped (the bounding set too), read-only root filesystem, containerd's default
# seccomp profile, no_new_privs (ctr's default: --allow-new-privs is not given), a memory limit.
# The user is not set here: it comes from the image (USER 65532:65532), as with the kubelet.
ALL_CAPS=(CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP
  LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE
  SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME
  SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG
  WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE)
SEC=(--read-only --seccomp --memory-limit "$MEM_LIMIT" --runc-root "$DIR/runc" --fifo-dir "$DIR/fifo")
for c in "${ALL_CAPS[@]}"; do SEC+=(--cap-drop "CAP_$c"); done

# run_once ID ARGS...: runs a container to its end; prints its output, returns its exit status.
run_once() {
  local id=$1
  shift
  timeout 60 ctr --address "$SOCK" --namespace "$NS" run --rm "${SEC[@]}" "$IMAGE" "$id" "$@" 2>&1
}

out="$(run_once entrypoint)" && rc=0 || rc=$?
check "entrypoint (handover-sidecar --help) exit status" 0 "$rc"
if grep -q '^Usage: handover-sidecar' <<<"$out"; then ok "entrypoint prints the sidecar's usage"
else bad "entrypoint output: $(head -n3 <<<"$out")"; fi
sidecar_version=""
for bin in handover-sidecar handover-operator; do
  out="$(run_once "$bin-version" "$bin" --version)" && rc=0 || rc=$?
  check "$bin --version exit status" 0 "$rc"
  if [[ "$out" == "$bin "* ]]; then ok "$bin --version: $out"; else bad "$bin --version printed: $out"; fi
  if [[ "$bin" == handover-sidecar ]]; then sidecar_version="$out"; fi
done
# The sidecar the image ships is the profile-guided build (Dockerfile, PGO), unless it was built
# without (build.sh with HANDOVER_IMAGE_PGO=false).
if [[ "${HANDOVER_IMAGE_PGO:-true}" == true ]]; then
  if [[ "$sidecar_version" == *"(profile-guided)"* ]]; then ok "the sidecar is the profile-guided build"
  else bad "the sidecar is not the profile-guided build: --version printed $sidecar_version"; fi
fi

# --- the security settings, read back from the process and from the runtime ------------------------
# verify_container ID PID: what the kernel says of the task's init process (/proc/PID, read from
# the host), what containerd gave runc (the OCI spec), and what the cgroup enforces.
verify_container() {
  local id=$1 pid=$2 status spec cg
  status="$(cat "/proc/$pid/status")"
  field() { awk -v k="$1:" '$1 == k { $1 = ""; sub(/^ /, ""); print }' <<<"$status"; }
  check "$id: Uid (real effective saved fs)" '65532 65532 65532 65532' "$(field Uid)"
  check "$id: Gid (real effective saved fs)" '65532 65532 65532 65532' "$(field Gid)"
  check "$id: CapEff" 0000000000000000 "$(field CapEff)"
  check "$id: CapPrm" 0000000000000000 "$(field CapPrm)"
  check "$id: CapBnd" 0000000000000000 "$(field CapBnd)"
  check "$id: CapAmb" 0000000000000000 "$(field CapAmb)"
  check "$id: NoNewPrivs" 1 "$(field NoNewPrivs)"
  check "$id: Seccomp (2 = filter)" 2 "$(field Seccomp)"
  # The root mount as the container sees it: mount options of "/" in its mount namespace.
  check "$id: / mounted" ro "$(awk '$5 == "/" { split($6, o, ","); print o[1] }' "/proc/$pid/mountinfo")"
  # A write to / through the container's root: refused by the mount itself, even for host root.
  local err
  err="$(touch "/proc/$pid/root/.handover-write-probe" 2>&1)" && rc=0 || rc=$?
  if ((rc != 0)) && [[ "$err" == *"Read-only file system"* ]]; then
    ok "$id: a write to / is refused (Read-only file system)"
  else
    bad "$id: a write to / was not refused as read-only: rc=$rc $err"
    rm -f "/proc/$pid/root/.handover-write-probe"
  fi
  spec="$(ctr_ containers info "$id" | jq '.Spec')"
  check "$id: spec process.user" "65532:65532" "$(jq -r '.process.user | "\(.uid):\(.gid)"' <<<"$spec")"
  check "$id: spec capabilities (all sets)" 0 \
    "$(jq '[.process.capabilities // {} | .[] | length] | add // 0' <<<"$spec")"
  check "$id: spec noNewPrivileges" true "$(jq '.process.noNewPrivileges' <<<"$spec")"
  check "$id: spec root.readonly" true "$(jq '.root.readonly' <<<"$spec")"
  check "$id: spec seccomp defaultAction" SCMP_ACT_ERRNO "$(jq -r '.linux.seccomp.defaultAction' <<<"$spec")"
  check "$id: spec memory limit" "$MEM_LIMIT" "$(jq '.linux.resources.memory.limit' <<<"$spec")"
  cg="$(awk -F: '$2 == "memory" { print $3 }' "/proc/$pid/cgroup")"
  if [[ -n "$cg" && -f "/sys/fs/cgroup/memory$cg/memory.limit_in_bytes" ]]; then
    check "$id: cgroup memory.limit_in_bytes ($cg)" "$MEM_LIMIT" "$(cat "/sys/fs/cgroup/memory$cg/memory.limit_in_bytes")"
    printf 'info  %s: memory.max_usage_in_bytes %s\n' "$id" "$(cat "/sys/fs/cgroup/memory$cg/memory.max_usage_in_bytes")"
  elif [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    cg="$(awk -F: '$1 == "0" { print $3 }' "/proc/$pid/cgroup")"
    check "$id: cgroup memory.max ($cg)" "$MEM_LIMIT" "$(cat "/sys/fs/cgroup$cg/memory.max")"
  else
    bad "$id: no memory cgroup found for pid $pid"
  fi
}

# written_files ID PID: regular files written, since the container started, on the mounts the
# container can write (tmpfs like /dev/shm and /run; the root is read-only).
writable_mounts() {
  awk '$6 ~ /^rw/ && $9 !~ /^(proc|sysfs|cgroup|cgroup2|devpts|mqueue)$/ { print $5 }' "/proc/$1/mountinfo"
}
written_files() {
  local pid=$2 mp
  writable_mounts "$pid" | while read -r mp; do
    find "/proc/$pid/root$mp" -xdev -type f -newer "$DIR/started" 2>/dev/null
  done
}

# --- a pod: the demo app and a sidecar in front of it, one network namespace ---------------------
ip netns add "$NETNS"
ip -n "$NETNS" link set lo up
podnet() { ip netns exec "$NETNS" "$@"; }
out="$(run_once keygen handover-sidecar keygen)" || die "keygen failed: $out"
printf '%s\n' "$out" >"$DIR/keys"
chmod 0444 "$DIR/keys"
touch "$DIR/started"

# start ID ARGS...: a detached container in the pod's network namespace, output to logs/ID.log.
start() {
  local id=$1
  shift
  ctr_ run -d "${SEC[@]}" --with-ns "network:/var/run/netns/$NETNS" \
    --log-uri "file://$DIR/logs/$id.log" --pid-file "$DIR/$id.pid" "${EXTRA[@]}" "$IMAGE" "$id" "$@" >/dev/null
}
EXTRA=()
start app handover-sidecar demo-app --listen 127.0.0.1:8080
EXTRA=(--mount "type=bind,src=$DIR/keys,dst=/etc/handover/keys,options=rbind:ro")
start sidecar handover-sidecar run --listen 127.0.0.1:8000 --admin 127.0.0.1:9901 --app 127.0.0.1:8080 \
  --pool check/image --pod-name image-0 --key-file /etc/handover/keys --cookie-secure false
EXTRA=()
if wait_for 30 "the sidecar's /ready (admin port 9901 in $NETNS)" podnet curl -fsS -o /dev/null http://127.0.0.1:9901/ready; then
  ok "sidecar ready (/ready 200 with the app behind it)"
else
  bad "sidecar not ready in 30 s"
  tail -n 20 "$DIR"/logs/*.log >&2
fi

# request N: POST /incr through the sidecar with the cookie jar; prints the body, headers in h<N>.
request() {
  podnet curl -sS --max-time 10 -D "$DIR/h$1" -c "$DIR/jar" -b "$DIR/jar" -X POST http://127.0.0.1:8000/incr
}
body1="$(request 1)" || true
# The sidecar names the cookie per pool (handover-<hash of the pool>) when no name is given.
if grep -qiE '^set-cookie: handover(-[0-9a-f]+)?=' "$DIR/h1"; then
  ok "request 1: Set-Cookie $(grep -ioE '^set-cookie: handover(-[0-9a-f]+)?=' "$DIR/h1" | head -n1 | cut -d' ' -f2)… ($(grep -ci '^set-cookie: handover' "$DIR/h1") cookie)"
else
  bad "request 1: no handover cookie set: $(head -n1 "$DIR/h1" 2>/dev/null)"
fi
check "request 1: count" 1 "$(jq -r .count <<<"$body1" 2>/dev/null)"
session="$(jq -r .session <<<"$body1" 2>/dev/null)"
body2="$(request 2)" || true
check "request 2 (with the cookie): count" 2 "$(jq -r .count <<<"$body2" 2>/dev/null)"
check "request 2: same session" "$session" "$(jq -r .session <<<"$body2" 2>/dev/null)"

# The image's filesystem, seen through the running sidecar's root: what it carries, and no shell.
root="/proc/$(cat "$DIR/sidecar.pid")/root"
exes="$(cd "$root" && { find usr/local/sbin usr/local/bin usr/sbin usr/bin sbin bin -maxdepth 1 \( -type f -o -type l \) -perm /111 2>/dev/null || true; } | sort | paste -sd' ' -)"
check "executables on PATH in the image" "usr/local/bin/handover-operator usr/local/bin/handover-sidecar" "$exes"
check "/etc/passwd: nonroot" "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin" "$(grep '^nonroot:' "$root/etc/passwd")"
check "/etc/group: nonroot" "nonroot:x:65532:" "$(grep '^nonroot:' "$root/etc/group")"
certs="$(grep -c 'BEGIN CERTIFICATE' "$root/etc/ssl/certs/ca-certificates.crt" 2>/dev/null || true)"
if ((${certs:-0} > 100)); then ok "CA bundle /etc/ssl/certs/ca-certificates.crt: $certs certificates"
else bad "CA bundle /etc/ssl/certs/ca-certificates.crt: ${certs:-no} certificates"; fi

verify_container sidecar "$(cat "$DIR/sidecar.pid")"
verify_container app "$(cat "$DIR/app.pid")"

# The app container dies and a new one starts (state lost with it); the sidecar restores the
# session from the cookie into the new app, which goes on counting.
ctr_ task kill -s SIGKILL app
wait_for 10 "the app task to stop after SIGKILL" task_stopped app
ctr_ task delete app >/dev/null
ctr_ containers delete app
start app2 handover-sidecar demo-app --listen 127.0.0.1:8080
wait_for 30 "the new app container's port 8080 in $NETNS" podnet bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080' 2>/dev/null ||
  bad "the new app container did not listen"
body3="$(request 3)" || true
check "request 3 (after the app container was replaced): count" 3 "$(jq -r .count <<<"$body3" 2>/dev/null)"
check "request 3: same session" "$session" "$(jq -r .session <<<"$body3" 2>/dev/null)"
restores="$(podnet curl -fsS http://127.0.0.1:9901/metrics | awk '$1 == "handover_restores_total{result=\"ok\"}" { print $2 }')"
check "sidecar metric handover_restores_total{result=\"ok\"}" 1 "$restores"
verify_container app2 "$(cat "$DIR/app2.pid")"

for id in sidecar app2; do
  files="$(written_files "$id" "$(cat "$DIR/$id.pid")")"
  if [[ -z "$files" ]]; then
    ok "$id: wrote no file on its writable mounts ($(writable_mounts "$(cat "$DIR/$id.pid")" | paste -sd' ' -); / is read-only)"
  else bad "$id: wrote $files"; fi
done

# Graceful stop: SIGTERM, the sidecar drains and exits 0 within its grace period.
ctr_ task kill -s SIGTERM sidecar
if wait_for 40 "the sidecar to exit after SIGTERM" task_stopped sidecar; then
  # `ctr task delete` exits with the task's exit status.
  ctr_ task delete sidecar >/dev/null 2>&1 && rc=0 || rc=$?
  check "sidecar exit status after SIGTERM" 0 "$rc"
else
  bad "sidecar still running 40 s after SIGTERM"
fi

# --- the pause image (for the node's pod sandboxes) ------------------------------------------------
if [[ -n "$PAUSE_ARCHIVE" ]]; then
  ctr_ images import --all-platforms "$PAUSE_ARCHIVE" >/dev/null
  PAUSE="$(ctr_ images ls -q | grep -v -x -F "$IMAGE" | head -n1)"
  check "pause image name" registry.k8s.io/pause:3.10 "$PAUSE"
  out="$(timeout 60 ctr --address "$SOCK" --namespace "$NS" run --rm "${SEC[@]}" "$PAUSE" pause-v /pause -v 2>&1)" && rc=0 || rc=$?
  check "pause -v" "0 pause.c 3.10-handover" "$rc $out"
  ctr_ run -d "${SEC[@]}" --with-ns "network:/var/run/netns/$NETNS" --log-uri "file://$DIR/logs/pause.log" \
    --pid-file "$DIR/pause.pid" "$PAUSE" pause >/dev/null
  pid="$(cat "$DIR/pause.pid")"
  check "pause: Uid" '65535 65535 65535 65535' "$(awk '$1 == "Uid:" { print $2, $3, $4, $5 }' "/proc/$pid/status")"
  check "pause: CapEff CapBnd Seccomp NoNewPrivs" "0000000000000000 0000000000000000 2 1" \
    "$(awk '$1 == "CapEff:" { e = $2 } $1 == "CapBnd:" { b = $2 } $1 == "Seccomp:" { s = $2 } $1 == "NoNewPrivs:" { n = $2 } END { print e, b, s, n }' "/proc/$pid/status")"
  # Reaping, the other half of pause's job: PID 1 of a PID namespace made here (not in a container:
  # the image has no shell to leave an orphan), a `sleep` it inherits must not stay a zombie.
  # The binary is the one in the archive's layer.
  pm="$(tar -xOf "$PAUSE_ARCHIVE" index.json | jq -r '.manifests[0].digest')"
  pl="$(tar -xOf "$PAUSE_ARCHIVE" "blobs/sha256/${pm#sha256:}" | jq -r '.layers[0].digest')"
  tar -xOf "$PAUSE_ARCHIVE" "blobs/sha256/${pl#sha256:}" | tar -xzf - -C "$DIR" pause
  # shellcheck disable=SC2016 # $0 is the inner shell's
  unshare --pid --fork --mount-proc sh -c 'sleep 1 & exec "$0"' "$DIR/pause" 2>/dev/null &
  ushare=$!
  child_of() { pgrep -P "$1" | head -n1; }
  if wait_for 5 "pause to start as PID 1 of its namespace" child_of "$ushare" >/dev/null &&
    ppid1="$(child_of "$ushare")" && wait_for 5 "pause's inherited sleep to start" child_of "$ppid1" >/dev/null; then
    sleeper="$(child_of "$ppid1")"
    gone() { ! [[ -e "/proc/$sleeper" ]]; }
    if wait_for 5 "the exited sleep (pid $sleeper) to be reaped by pause" gone; then
      ok "pause reaps a child it inherited (no zombie left)"
    else
      bad "pause left a zombie: $(ps -o pid=,stat=,comm= -p "$sleeper")"
    fi
    kill -TERM "$ppid1"
    wait "$ushare" && rc=0 || rc=$?
    check "pause (PID 1 of a PID namespace): exit status after SIGTERM" 0 "$rc"
  else
    bad "pause did not start under unshare"
    kill "$ushare" 2>/dev/null || true
  fi

  t0=$SECONDS
  ctr_ task kill -s SIGTERM pause
  if wait_for 5 "the pause container to exit after SIGTERM" task_stopped pause; then
    ctr_ task delete pause >/dev/null 2>&1 && rc=0 || rc=$?
    check "pause: exit status after SIGTERM (within $((SECONDS - t0)) s)" 0 "$rc"
  else
    bad "pause still running 5 s after SIGTERM"
  fi
fi

printf 'info  check took %s s\n' "$((SECONDS - t_start))"
finished=1
printf 'check: %d passed, %d failed\n' "$pass" "$fail"
((fail == 0))
