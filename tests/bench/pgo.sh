#!/usr/bin/env bash
# The sidecar built with profile-guided optimization (PGO): what the image ships (the Dockerfile's
# builder runs this script), and what `bench --sidecar-exe OUT --compare-exe target/dist/handover-sidecar`
# measures against the plain `dist` build (tests/bench/README.md, 2026-12-03).
#
# 1. `dist` instrumented (-Cprofile-generate), 2. the sidecar driven through the bench's kinds of
# requests (noise states of 100 B, 2 KB and 3 KB, JSON carts of 300 B and 1.5 KB, page views,
# cookieless requests; the demo app behind it, six sessions at once, one curl each: 13 200
# requests with one worker thread, 11 000 with two) and stopped with SIGTERM so that it writes its
# profile, 3. the profile merged, 4. `dist` built with it (and HANDOVER_PGO set, so that its
# `--version` says "(profile-guided)").
#
#   tests/bench/pgo.sh [OUT]          (default OUT: target/dist/handover-sidecar-pgo)
#   tests/bench/pgo.sh --get-tools    (installs what of the following is missing, as root)
#
# Needs curl and an llvm-profdata of rustc's LLVM major version (rustup component add llvm-tools;
# or Debian's llvm-<major>: apt-get install llvm-22 for rustc 1.95; LLVM_PROFDATA=path to name
# one). Builds under $HANDOVER_CACHE/pgo (default ~/.cache/handover/pgo): two whole-program
# builds, ~15 minutes on two cores from scratch, ~6 when only the workspace's crates changed, none
# when the sidecar's sources are those of the last build (kept: below).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${HANDOVER_CACHE:-$HOME/.cache/handover}/pgo
llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')

# The llvm-profdata that reads what rustc's LLVM writes: named, rustup's llvm-tools (the same
# LLVM), or Debian's of the same major version.
find_profdata() {
  local candidate
  for candidate in ${LLVM_PROFDATA:-} \
    "$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata" \
    "llvm-profdata-$llvm_major"; do
    if command -v "$candidate" > /dev/null; then echo "$candidate"; return 0; fi
  done
  return 1
}

# --get-tools: fetch what is missing of the above and exit (the Dockerfile's builder runs this as
# a step of its own, cached: the rust images have rustup, not curl).
if [[ ${1:-} == --get-tools ]]; then
  debs=()
  command -v curl > /dev/null || debs+=(curl)
  if ! find_profdata > /dev/null; then
    if ! { command -v rustup > /dev/null && rustup component add llvm-tools; }; then debs+=("llvm-$llvm_major"); fi
  fi
  if ((${#debs[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${debs[@]}"
    rm -rf /var/lib/apt/lists/*
  fi
  find_profdata > /dev/null || { echo "no llvm-profdata for LLVM $llvm_major after --get-tools" >&2; exit 2; }
  exit 0
fi

out=${1:-$repo/target/dist/handover-sidecar-pgo}
command -v curl > /dev/null || { echo "curl not found (apt-get install curl; or $0 --get-tools)" >&2; exit 2; }
profdata=$(find_profdata) || {
  echo "no llvm-profdata for LLVM $llvm_major (rustup component add llvm-tools, or apt-get install llvm-$llvm_major; or set LLVM_PROFDATA; or $0 --get-tools)" >&2
  exit 2
}

# What the profile-guided build is made of: the toolchain (with the C compiler and the glibc it
# links against), this script and its helpers, the workspace's manifests and the crates the
# sidecar links (the app it trains on is one of them).
# The same inputs give the same program, so its build is kept under their hash and used again: an
# image build whose sidecar did not change (a change to the operator, the tests) skips both builds
# and the training. A change to any of these files builds anew.
key=$(cd "$repo" && {
  rustc -vV
  "$profdata" --version
  cc --version 2>&1 | head -1
  ldd --version 2>&1 | head -1
  find Cargo.toml Cargo.lock common dataplane lab sidecar tests/bench/pgo.sh tests/bench/lib.sh -type f -print0 |
    sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-16)
kept=$cache/built/$key/handover-sidecar
if [[ -x $kept ]]; then
  install -m 0755 "$kept" "$out"
  echo "$out: the sidecar built with a profile before, from the same sources and toolchain ($key)"
  exit 0
fi

raw=$cache/raw
echo "== 1/4 dist, instrumented"
(cd "$repo" && RUSTFLAGS="-Cprofile-generate=$raw" CARGO_TARGET_DIR=$cache/generate \
  cargo build --profile dist --locked -p handover-sidecar)
instrumented=$cache/generate/dist/handover-sidecar

# The build scripts and proc macros the instrumented build ran wrote profiles too: only the
# sidecar's own run goes into the merge.
rm -rf "$raw"
mkdir -p "$raw"

echo "== 2/4 the sidecar driven"
# shellcheck source=tests/bench/lib.sh
source "$repo/tests/bench/lib.sh"
# The instrumented build serves as the demo app too (one build fewer): its profiles go elsewhere.
export LLVM_PROFILE_FILE=$work/not-the-sidecar-%p.profraw
# drive WORKERS N: a pod whose sidecar runs WORKERS worker threads, driven with N requests of
# each kind per 1000 of the whole, then stopped. Both schedulers are trained: one worker (a pod
# limited to one CPU) and two (any other: the sidecar runs one per CPU it may use); code a profile
# never saw running is optimized as cold.
drive() {
  local workers=$1 n=$2 d drives=()
  SIDECAR_WORKERS=$workers start_pod "$work" "$instrumented" \
    env "LLVM_PROFILE_FILE=$raw/sidecar-%p.profraw" "$instrumented"
  session 'blob?bytes=100' incr $((n * 6)) POST & drives+=($!)
  session 'blob?bytes=2000' incr $((n * 4)) POST & drives+=($!)
  session 'blob?bytes=3000' incr $((n * 2)) POST & drives+=($!)
  session 'cart?bytes=300' incr $((n * 4)) POST & drives+=($!)
  session 'cart?bytes=1500' incr $((n * 2)) POST & drives+=($!)
  session 'visit?cache=none' 'visit?cache=none' $((n * 2)) GET & drives+=($!)
  for d in "${drives[@]}"; do wait "$d"; done
  # Cookieless requests: each one a new session.
  local args=()
  for _ in $(seq $((n * 2))); do args+=(-o /dev/null "http://$ip:8000/incr"); done
  all_answered cookieless $((n * 2)) -X POST "${args[@]}" || exit 1
  # SIGTERM: the sidecar drains (no grace) and exits, writing its profile on the way out.
  kill "$sidecar" "$app"
  wait "$sidecar" || { echo "the instrumented sidecar ($workers workers) did not exit cleanly" >&2; exit 1; }
}
drive 1 600
drive 2 500
compgen -G "$raw/*.profraw" > /dev/null || { echo "the instrumented sidecar wrote no profile into $raw" >&2; exit 1; }

echo "== 3/4 the profile merged"
"$profdata" merge -o "$cache/sidecar.profdata" "$raw"

echo "== 4/4 dist, optimized with the profile"
(cd "$repo" && RUSTFLAGS="-Cprofile-use=$cache/sidecar.profdata" CARGO_TARGET_DIR=$cache/use HANDOVER_PGO=1 \
  cargo build --profile dist --locked -p handover-sidecar)
# Only the latest build is kept: one binary, not one per change.
rm -rf "$cache/built"
install -D -m 0755 "$cache/use/dist/handover-sidecar" "$kept"
install -m 0755 "$kept" "$out"
echo "$out: the sidecar built with the profile of $(du -h "$cache/sidecar.profdata" | cut -f1)"
