#!/usr/bin/env bash
# A profile-guided build of the sidecar (PGO), to measure what it would give against the `dist`
# build the image ships: `bench --sidecar-exe OUT --compare-exe target/dist/handover-sidecar`.
# Not what the image ships (tests/bench/README.md, 2026-12-03 14:20 UTC, says why).
#
# 1. `dist` instrumented (-Cprofile-generate), 2. the sidecar driven through the bench's kinds of
# requests (noise states of 100 B, 2 KB and 3 KB, JSON carts of 300 B and 1.5 KB, page views,
# cookieless requests; a demo app behind it, six sessions at once, one curl each) and stopped with
# SIGTERM so that it writes its profile, 3. the profile merged, 4. `dist` built with it.
#
#   tests/bench/pgo.sh [OUT]          (default OUT: target/dist/handover-sidecar-pgo)
#
# Needs curl, an llvm-profdata of rustc's LLVM major version (Debian: apt-get install llvm-22 for
# rustc 1.95; or rustup's llvm-tools; LLVM_PROFDATA=path to name one), and a built
# target/dist/handover-sidecar (the demo app). Builds under $HANDOVER_CACHE/pgo (default
# ~/.cache/handover/pgo): two whole-program builds, ~15 minutes on two cores.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$repo/target/dist/handover-sidecar-pgo}
tool=$repo/target/dist/handover-sidecar
cache=${HANDOVER_CACHE:-$HOME/.cache/handover}/pgo
[[ -x $tool ]] || { echo "$tool not built (cargo build --profile dist -p handover-sidecar)" >&2; exit 2; }
command -v curl > /dev/null || { echo "curl not found (apt-get install curl)" >&2; exit 2; }
llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata=${LLVM_PROFDATA:-}
if [[ -z $profdata ]]; then
  for candidate in "llvm-profdata-$llvm_major" \
    "$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"; do
    if command -v "$candidate" > /dev/null; then profdata=$candidate; break; fi
  done
fi
[[ -n $profdata ]] || {
  echo "no llvm-profdata for LLVM $llvm_major (apt-get install llvm-$llvm_major, or rustup component add llvm-tools; or set LLVM_PROFDATA)" >&2
  exit 2
}

raw=$cache/raw
echo "== 1/4 dist, instrumented"
(cd "$repo" && RUSTFLAGS="-Cprofile-generate=$raw" CARGO_TARGET_DIR=$cache/generate \
  cargo build --profile dist -p handover-sidecar)

# The build scripts and proc macros the instrumented build ran wrote profiles too: only the
# sidecar's own run goes into the merge.
rm -rf "$raw"
mkdir -p "$raw"

echo "== 2/4 the sidecar driven"
# shellcheck source=tests/bench/lib.sh
source "$repo/tests/bench/lib.sh"
start_pod "$work" "$tool" "$cache/generate/dist/handover-sidecar"
drives=()
session 'blob?bytes=100' incr 6000 POST & drives+=($!)
session 'blob?bytes=2000' incr 4000 POST & drives+=($!)
session 'blob?bytes=3000' incr 2000 POST & drives+=($!)
session 'cart?bytes=300' incr 4000 POST & drives+=($!)
session 'cart?bytes=1500' incr 2000 POST & drives+=($!)
session 'visit?cache=none' 'visit?cache=none' 2000 GET & drives+=($!)
for d in "${drives[@]}"; do wait "$d"; done
# Cookieless requests: each one a new session.
args=()
for _ in $(seq 2000); do args+=(-o /dev/null "http://$ip:8000/incr"); done
codes=$(curl -s -w '%{http_code}\n' -X POST -H 'Host: bench' "${args[@]}" | sort | uniq -c | xargs)
[[ $codes == "2000 200" ]] || { echo "cookieless: not every request answered 200: $codes" >&2; exit 1; }
# SIGTERM: the sidecar drains (no grace) and exits, writing its profile on the way out.
kill "$sidecar"
wait "$sidecar" || true
compgen -G "$raw/*.profraw" > /dev/null || { echo "the instrumented sidecar wrote no profile into $raw" >&2; exit 1; }

echo "== 3/4 the profile merged"
"$profdata" merge -o "$cache/sidecar.profdata" "$raw"

echo "== 4/4 dist, optimized with the profile"
(cd "$repo" && RUSTFLAGS="-Cprofile-use=$cache/sidecar.profdata" CARGO_TARGET_DIR=$cache/use \
  cargo build --profile dist -p handover-sidecar)
install -m 0755 "$cache/use/dist/handover-sidecar" "$out"
echo "$out: the sidecar built with the profile of $(du -h "$cache/sidecar.profdata" | cut -f1)"
