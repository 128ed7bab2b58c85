# Shared by tests/image/*.sh: paths, buildah with our own storage, Debian packages, base-image names.
# shellcheck shell=bash

IMAGE_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$IMAGE_SRC/../.." && pwd)"
HANDOVER_CACHE="${HANDOVER_CACHE:-$HOME/.cache/handover}"
# Everything image-related lives here, outside the repository:
#   storage-<driver>/  buildah's image store (base images, layers of earlier builds)
#   run-<driver>/      buildah's run root
#   tmp/               TMPDIR of buildah: its RUN --mount=type=cache directories live here
#   work/              scratch (mmdebstrap/dpkg-deb downloads)
#   *.oci.tar          the archives this directory's build.sh writes
IMAGES_DIR="${HANDOVER_IMAGES_DIR:-$HANDOVER_CACHE/images}"

log() { printf '[image %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf '[image] FATAL: %s\n' "$*" >&2; exit 1; }

# Installs the Debian packages whose commands are missing: need_debs cmd:pkg ...
need_debs() {
  local want=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || want+=("${pair#*:}")
  done
  ((${#want[@]})) || return 0
  [[ $EUID -eq 0 ]] || die "need root to install Debian packages: ${want[*]}"
  log "installing Debian packages: ${want[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null
}

# Overlay when the kernel lets us mount it here (quick, shares layers), else vfs (a full copy per
# layer). HANDOVER_BUILDAH_DRIVER overrides. Each driver has its own store.
pick_storage_driver() {
  if [[ -n "${HANDOVER_BUILDAH_DRIVER:-}" ]]; then echo "$HANDOVER_BUILDAH_DRIVER"; return; fi
  local d rc=0
  d="$(mktemp -d)"
  mkdir "$d"/{l,u,w,m}
  mount -t overlay overlay -o "lowerdir=$d/l,upperdir=$d/u,workdir=$d/w" "$d/m" 2>/dev/null || rc=$?
  if ((rc == 0)); then umount "$d/m"; echo overlay; else echo vfs; fi
  rm -rf "$d"
}

init_buildah() {
  need_debs buildah:buildah
  BUILDAH_DRIVER="$(pick_storage_driver)"
  mkdir -p "$IMAGES_DIR"/{tmp,work} "$IMAGES_DIR/storage-$BUILDAH_DRIVER" "$IMAGES_DIR/run-$BUILDAH_DRIVER"
  # Cache mounts (RUN --mount=type=cache) and temporary blobs go under TMPDIR.
  export TMPDIR="$IMAGES_DIR/tmp"
  BUILDAH=(buildah --root "$IMAGES_DIR/storage-$BUILDAH_DRIVER" --runroot "$IMAGES_DIR/run-$BUILDAH_DRIVER"
    --storage-driver "$BUILDAH_DRIVER")
}
bah() { "${BUILDAH[@]}" "$@"; }

image_exists() { bah images --quiet "$1" >/dev/null 2>&1; }

# The chart's appVersion: the tag the chart uses by default (image.repository handover).
app_version() {
  sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$REPO_ROOT/charts/handover/Chart.yaml"
}
