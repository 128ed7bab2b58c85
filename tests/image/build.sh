#!/usr/bin/env bash
# Builds the handover image from the repository's Dockerfile with buildah, and writes it as an OCI
# archive. No registry is needed: the two base images the Dockerfile names by build argument are
# built here from Debian packages (and this machine's Rust toolchain) and cached.
#
#   tests/image/build.sh            # the handover image; last line printed: the archive's path
#   tests/image/build.sh --pause    # the Kubernetes pause image (registry.k8s.io/pause:3.10)
#   tests/image/build.sh --bases    # only the base images
#
# Needs root (buildah's store, mounts). Debian packages it uses are installed when missing.
# Paths (HANDOVER_CACHE defaults to ~/.cache/handover; see lib.sh for the layout):
#   $HANDOVER_CACHE/images/handover.oci.tar   docker.io/library/handover:<chart appVersion>
#   $HANDOVER_CACHE/images/pause.oci.tar      registry.k8s.io/pause:3.10
# Base images, in buildah's store under $HANDOVER_CACHE/images/storage-<driver>, each built only
# when no image tagged with the hash of its inputs (recipe, package versions, toolchain) is there:
#   localhost/handover-base/rust:<rustc version>-<release>-<hash>   the builder (as rust:<v>-slim-bookworm)
#   localhost/handover-base/runtime:<release>-<hash>                the runtime (as distroless/cc:nonroot)
# <release>: this machine's Debian release, whose apt sources both come from (bookworm here).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $EUID -eq 0 ]] || die "build.sh needs root (buildah store, mounts)"
what=handover
case "${1:-}" in
  "") ;;
  --pause) what=pause ;;
  --bases) what=bases ;;
  *) die "usage: $0 [--pause|--bases]" ;;
esac

need_debs flock:util-linux unshare:util-linux
init_buildah
WORK="$IMAGES_DIR/work"
# One build at a time per cache (tests/run and a cluster script may both call this script).
exec 9>"$IMAGES_DIR/build.lock"
flock -w 3600 9 || die "waited an hour for $IMAGES_DIR/build.lock (another build.sh)"
# Working containers a killed build left in the store (neither the trap below nor buildah's
# --force-rm runs on SIGKILL): with the lock held no build uses any, and left there they hold their
# images, so every later prune fails and the store grows with each build.
left="$(bah containers --quiet 2>/dev/null | wc -l)"
if ((left > 0)); then
  bah rm --all >/dev/null 2>&1 || true
  log "removed $left working containers an interrupted build left in the store"
fi
# A working container left by a failed step (bah from) is removed on the way out.
WORKING=""
remove_working() {
  local rc=$?
  [[ -z "$WORKING" ]] || bah rm "$WORKING" >/dev/null 2>&1 || true
  exit "$rc"
}
trap remove_working EXIT

# --- the runtime base: distroless-like ----------------------------------------------------------
# What gcr.io/distroless/cc-debian12 holds, made the way distroless makes it: the files of a few
# Debian packages (no maintainer scripts, no dependencies pulled in: no shell, no package manager),
# plus passwd/group with nonroot (65532), the CA bundle, /tmp and the home directories.
# The Debian release of this machine (bookworm here, as the Dockerfile's bases) and its apt
# sources: both bases come from them, so the runtime's glibc is the builder's.
SUITE="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
[[ -n "$SUITE" ]] || die "/etc/os-release names no Debian release (VERSION_CODENAME)"
DEBIAN_SOURCES="${HANDOVER_DEBIAN_SOURCES:-}"
if [[ -z "$DEBIAN_SOURCES" ]]; then
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    [[ -s "$f" ]] && { DEBIAN_SOURCES="$f"; break; }
  done
fi
[[ -n "$DEBIAN_SOURCES" ]] || die "no Debian apt sources found (set HANDOVER_DEBIAN_SOURCES)"
runtime_debs() {
  # gcc-<N>-base: the one libgcc-s1 depends on in this release (gcc-12-base in bookworm).
  local gcc_base
  gcc_base="$(apt-cache depends libgcc-s1 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^gcc-[0-9]+-base$/ { print $2; exit }')"
  RUNTIME_DEBS=(base-files netbase tzdata ca-certificates "${gcc_base:-gcc-12-base}" libgcc-s1 libc6)
}

build_runtime_base() {
  local dir="$WORK/runtime" ctr mnt deb
  rm -rf "$dir" && mkdir -p "$dir/debs"
  (cd "$dir/debs" && apt-get download -o APT::Sandbox::User=root "${RUNTIME_DEBS[@]}" >/dev/null)
  ctr="$(bah from scratch)"
  WORKING="$ctr"
  mnt="$(bah mount "$ctr")"
  for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$mnt"; done
  # Documentation goes (the copyright files stay), like distroless.
  find "$mnt/usr/share/doc" -type f ! -name copyright -delete
  rm -rf "$mnt"/usr/share/{man,info,lintian,bash-completion} "$mnt/var/lib/dpkg"
  # ca-certificates' maintenance script (a shell script; there is no shell to run it).
  rm -f "$mnt/usr/sbin/update-ca-certificates"
  # What update-ca-certificates would write with every Mozilla certificate enabled (its default).
  mkdir -p "$mnt/etc/ssl/certs"
  cat "$mnt"/usr/share/ca-certificates/mozilla/*.crt >"$mnt/etc/ssl/certs/ca-certificates.crt"
  cat >"$mnt/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$mnt/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
  mkdir -p "$mnt"/{tmp,root,home/nonroot}
  chmod 1777 "$mnt/tmp"
  chmod 0700 "$mnt/root" "$mnt/home/nonroot"
  chown 65532:65532 "$mnt/home/nonroot"
  bah umount "$ctr" >/dev/null
  bah config --user 65532 --workingdir /home/nonroot \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --label org.opencontainers.image.description="handover test base: glibc, libgcc, CA certificates, tzdata, nonroot 65532; no shell" \
    "$ctr"
  bah commit --quiet --rm "$ctr" "$RUNTIME_IMAGE" >/dev/null
  WORKING=""
  rm -rf "$dir"
}

runtime_inputs() {
  declare -f build_runtime_base
  # The versions apt would fetch now (one apt-cache call: each takes seconds here). A machine
  # without package lists gets them first.
  apt-cache show --no-all-versions "${RUNTIME_DEBS[@]}" >/dev/null 2>&1 || apt-get update -qq >/dev/null
  apt-cache show --no-all-versions "${RUNTIME_DEBS[@]}" | awk '/^Package: / { p = $2 } /^Version: / { print p, $2 }'

}

# --- the builder base: Debian + this machine's Rust toolchain ----------------------------------
# As rust:<v>-slim-bookworm: Debian with gcc, libc6-dev and CA certificates; the toolchain in
# /usr/local/rustup/toolchains/<v>-x86_64-unknown-linux-gnu, its bin/ on PATH, CARGO_HOME
# /usr/local/cargo (the Dockerfile's cache mounts are under it). No rustup: the one toolchain is it.
# For the sidecar's profile-guided build (the Dockerfile's PGO, on unless HANDOVER_IMAGE_PGO=false):
# curl, and Debian's llvm-<major> of rustc's LLVM for its llvm-profdata (in the base, so that the
# build itself fetches nothing).
BUILDER_DEBS=(ca-certificates gcc libc6-dev)
PGO="${HANDOVER_IMAGE_PGO:-true}"
[[ "$PGO" == true || "$PGO" == false ]] || die "HANDOVER_IMAGE_PGO=$PGO: true or false"
pgo_debs() {
  [[ "$PGO" == true ]] || return 0
  local major
  major="$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
  apt-cache show --no-all-versions "llvm-$major" >/dev/null 2>&1 || apt-get update -qq >/dev/null
  apt-cache show --no-all-versions "llvm-$major" >/dev/null 2>&1 ||
    die "Debian $SUITE has no llvm-$major (rustc's LLVM) for the sidecar's profile-guided build; HANDOVER_IMAGE_PGO=false builds without"
  BUILDER_DEBS+=(curl "llvm-$major")
}

host_toolchain() {
  command -v rustc >/dev/null || die "no Rust toolchain on this machine (rustc); the builder base copies it"
  local sysroot
  sysroot="$(rustc --print sysroot)"
  [[ -x "$sysroot/bin/cargo" ]] || die "$sysroot has no cargo"
  echo "$sysroot"
}

build_builder_base() {
  local sysroot="$1" name="$2" ctr mnt
  ctr="$(bah from scratch)"
  WORKING="$ctr"
  mnt="$(bah mount "$ctr")"
  mmdebstrap --quiet --variant=minbase --include="$(IFS=,; echo "${BUILDER_DEBS[*]}")" \
    "$SUITE" "$mnt" "$DEBIAN_SOURCES" >&2
  mkdir -p "$mnt/usr/local/rustup/toolchains/$name" "$mnt/usr/local/cargo/bin"
  # bin, lib, libexec, etc: the compiler, std and cargo; not share/ (the HTML docs, 800 MB).
  cp -a "$sysroot"/{bin,lib,libexec,etc} "$mnt/usr/local/rustup/toolchains/$name/"
  # The toolchain runs on the builder's own glibc. (Its bin/ is on PATH itself, not linked from
  # /usr/local/cargo/bin: rustc finds its libraries relative to its own directory, $ORIGIN, which
  # glibc reads from /proc: mounted here in a mount namespace that ends with the check.)
  # shellcheck disable=SC2016 # $1 and $2 are the inner shell's arguments
  unshare --mount --fork sh -c 'mount -t proc proc "$1/proc" && chroot "$1" "$2/cargo" --version &&
    chroot "$1" "$2/rustc" --version' check "$mnt" "/usr/local/rustup/toolchains/$name/bin" >&2
  bah umount "$ctr" >/dev/null
  bah config \
    --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
    --env PATH="/usr/local/cargo/bin:/usr/local/rustup/toolchains/$name/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --env RUST_VERSION="${name%%-*}" \
    --label org.opencontainers.image.description="handover test base: Debian $SUITE, gcc, Rust ${name%%-*}" \
    "$ctr"
  bah commit --quiet --rm "$ctr" "$BUILDER_IMAGE" >/dev/null
  WORKING=""
}

builder_inputs() {
  declare -f build_builder_base
  printf 'suite %s\n' "$SUITE"
  printf 'debs %s\n' "${BUILDER_DEBS[*]}"
  rustc -vV
  cargo -V
}

ensure_bases() {
  need_debs mmdebstrap:mmdebstrap apt-get:apt dpkg-deb:dpkg
  local sysroot version hash
  sysroot="$(host_toolchain)"
  version="$(rustc --version | awk '{print $2}')"
  # The workspace is edition 2024 and needs rustc >= 1.90.
  [[ "$(printf '1.90.0\n%s\n' "$version" | sort -V | head -n1)" == 1.90.0 ]] ||
    die "rustc $version on this machine; the workspace needs >= 1.90"
  RUST_MINOR="${version%.*}"
  # Each base's tag ends with the hash of its inputs (the recipe: the shell function's text; the
  # package versions apt would fetch; the toolchain's version): a base is built when no image of
  # that tag is in the store, and checkouts with different recipes sharing one cache (worktrees,
  # branches) each find their own instead of rebuilding the other's.
  runtime_debs
  hash="$(runtime_inputs | sha256sum | cut -c1-12)"
  RUNTIME_IMAGE="localhost/handover-base/runtime:$SUITE-$hash"
  if image_exists "$RUNTIME_IMAGE"; then
    log "runtime base $RUNTIME_IMAGE is up to date"
  else
    log "building runtime base $RUNTIME_IMAGE (${RUNTIME_DEBS[*]})"
    local t0=$SECONDS
    build_runtime_base
    log "runtime base built in $((SECONDS - t0)) s"
  fi

  pgo_debs
  hash="$(builder_inputs | sha256sum | cut -c1-12)"
  BUILDER_IMAGE="localhost/handover-base/rust:$version-$SUITE-$hash"
  if image_exists "$BUILDER_IMAGE"; then
    log "builder base $BUILDER_IMAGE is up to date"
  else
    log "building builder base $BUILDER_IMAGE (mmdebstrap $SUITE + the toolchain in $sysroot)"
    local t0=$SECONDS
    build_builder_base "$sysroot" "$version-x86_64-unknown-linux-gnu"
    log "builder base built in $((SECONDS - t0)) s"
  fi
}

# --- the pause image ---------------------------------------------------------------------------
PAUSE_REF=registry.k8s.io/pause:3.10

build_pause() {
  need_debs gcc:gcc strip:binutils
  [[ -f /usr/lib/x86_64-linux-gnu/libc.a ]] || {
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libc6-dev >/dev/null
  }
  local dir="$WORK/pause" out="$IMAGES_DIR/pause.oci.tar" ctr
  rm -rf "$dir" && mkdir -p "$dir"
  gcc -Os -Wall -Werror -static -o "$dir/pause" "$IMAGE_SRC/pause/pause.c"
  strip "$dir/pause"
  ctr="$(bah from scratch)"
  WORKING="$ctr"
  bah copy --quiet --chmod 0755 "$ctr" "$dir/pause" /pause
  # As the upstream image: the binary, run as 65535, nothing else.
  bah config --entrypoint '["/pause"]' --cmd '' --user 65535:65535 \
    --label org.opencontainers.image.description="pause: holds a pod's namespaces, reaps zombies, exits on SIGINT/SIGTERM" \
    "$ctr"
  bah commit --quiet --rm "$ctr" localhost/pause:3.10 >/dev/null
  WORKING=""
  rm -f "$out"
  bah push --quiet localhost/pause:3.10 "oci-archive:$out:$PAUSE_REF"
  rm -rf "$dir"
  log "pause image: $(du -h "$out" | cut -f1) ($PAUSE_REF)"
  echo "$out"
}

# --- the handover image ------------------------------------------------------------------------
build_handover() {
  ensure_bases
  local ref out t0=$SECONDS
  ref="docker.io/library/handover:$(app_version)"
  out="$IMAGES_DIR/handover.oci.tar"
  log "building $ref from $REPO_ROOT/Dockerfile (buildah, $BUILDAH_DRIVER storage)"
  # --isolation chroot: RUN steps use the host's network (cargo fetches crates) and no runc.
  # --layers: unchanged steps are reused from the store; the cargo registry and target/ are
  # RUN --mount=type=cache directories under $TMPDIR, so a source change rebuilds our crates only.
  # The RUN steps see this machine's CA bundle (read-only, not kept in any layer): cargo reaches the
  # crate registry through whatever TLS this machine trusts (here: an intercepting proxy's CA).
  local ca="${HANDOVER_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}" vol=()
  [[ -f "$ca" ]] && vol=(--volume "$ca:/etc/ssl/certs/ca-certificates.crt:ro")
  bah build --quiet=false --layers --force-rm --pull=never --isolation chroot --format oci "${vol[@]}" \
    --build-arg "RUST_VERSION=$RUST_MINOR" --build-arg "PGO=$PGO" \
    --build-arg "BUILDER_IMAGE=$BUILDER_IMAGE" \
    --build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE" \
    -f "$REPO_ROOT/Dockerfile" -t localhost/handover:build "$REPO_ROOT" >&2
  rm -f "$out"
  bah push --quiet localhost/handover:build "oci-archive:$out:$ref"
  # Untagged images nothing builds on (earlier builds, and this build's builder stage) go, so the
  # store does not grow with every source change. The next build redoes the builder stage's steps
  # (cargo finds target/ fresh in its cache mount: about a second) and reuses the final stage.
  bah rmi --prune >/dev/null 2>&1 || log "warning: buildah rmi --prune failed (the store keeps old layers)"
  log "built in $((SECONDS - t0)) s: $ref, $(du -h "$out" | cut -f1) archive"
  echo "$out"
}

case "$what" in
  handover) build_handover ;;
  pause) build_pause ;;
  bases) ensure_bases ;;
esac
