#!/usr/bin/env bash
# Fuzzing: builds the targets of fuzz/ (cargo-fuzz, libFuzzer) and runs each for a bounded time,
# starting from the committed seeds (fuzz/corpus/<target>/) and the saved findings
# (fuzz/regressions/<target>/). Ends with `N passed, N failed`, one per target; exits non-zero when
# any target crashed, panicked, timed out or went over its memory limits.
#
#   HANDOVER_FUZZ_SECONDS   seconds per target (default 30)
#   HANDOVER_FUZZ_TARGETS   the targets to run (default: all of fuzz/fuzz_targets/)
#   HANDOVER_FUZZ_SANITIZER none (default) or address
#   HANDOVER_CACHE          where the build and the growing working corpus are kept
#                           (default ~/.cache/handover; fuzz/target and fuzz/corpus in it)
#
# A finding is written to fuzz/artifacts/<target>/; copy it to fuzz/regressions/<target>/ and commit
# it, and every later run replays it first.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds="${HANDOVER_FUZZ_SECONDS:-30}"
sanitizer="${HANDOVER_FUZZ_SANITIZER:-address}"
cache="${HANDOVER_CACHE:-$HOME/.cache/handover}/fuzz"
# The build lives in the cache, not in the checkout: CI runs in a fresh clone, and the instrumented
# dependencies (the data path links the Kubernetes client) take minutes of CPU to build from nothing.
target_dir="$cache/target"
if [[ -n "${HANDOVER_FUZZ_TARGETS:-}" ]]; then
  read -r -a targets <<<"$HANDOVER_FUZZ_TARGETS"
else
  targets=()
  for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

# cargo-fuzz passes -Z flags (sancov instrumentation, the sanitizer) that a stable rustc takes only
# with RUSTC_BOOTSTRAP: no nightly toolchain to install or keep in step.
export RUSTC_BOOTSTRAP=1
# AddressSanitizer keeps freed memory in quarantine (256 MB by default) to catch use after free;
# kept small, so that -rss_limit_mb below measures the targets and not the quarantine.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=32"

if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

echo "== building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)"
started=$SECONDS
mkdir -p fuzz/artifacts
if ! cargo fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir" >fuzz/artifacts/build.log 2>&1; then
  tail -n 40 fuzz/artifacts/build.log
  echo "the fuzz targets do not build (whole log: fuzz/artifacts/build.log)"
  echo "fuzz: 0 passed, ${#targets[@]} failed"
  exit 1
fi
echo "built in $((SECONDS - started)) s"

passed=0
failed=()
for t in "${targets[@]}"; do
  work="$cache/corpus/$t"
  artifacts="fuzz/artifacts/$t"
  mkdir -p "$work" "$artifacts" "fuzz/corpus/$t" "fuzz/regressions/$t"
  log="$artifacts/last-run.log"
  # A Cookie header may be as large as the sidecar's header limit (64 KiB); what matters in a
  # cookie body, a key file, a member list or a duration shows in far less.
  max_len=4096
  [[ $t == cookie ]] && max_len=65536
  echo "== $t: ${seconds} s"
  # The working corpus grows with every run, and by thousands with a long run by hand: past 8 000
  # inputs or 16 MB it is merged down to the inputs that add coverage, so that a run's start
  # (every input executed once) and its memory stay bounded. (A cookie corpus of 15 500 inputs,
  # 42 MB, once took AddressSanitizer's process past -rss_limit_mb before the first new input.)
  if (($(find "$work" -type f | wc -l) > 8000 || $(du -sm --apparent-size "$work" | cut -f1) > 16)); then
    merged="$work.merging"
    rm -rf "$merged"
    mkdir -p "$merged"
    if cargo fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir" "$t" "$merged" "$work" -- \
      -merge=1 -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 >"$artifacts/merge.log" 2>&1; then
      echo "working corpus merged: $(find "$work" -type f | wc -l) inputs -> $(find "$merged" -type f | wc -l)"
      rm -rf "$work"
      mv "$merged" "$work"
    else
      echo "the working corpus could not be merged (log: $artifacts/merge.log); fuzzing it as it is"
      rm -rf "$merged"
    fi
  fi
  # The first corpus directory is the one libFuzzer adds to: a working copy in the cache, so the
  # committed seeds stay a small, reviewed set and each run starts where the last one ended.
  # -malloc_limit_mb catches one huge allocation, -rss_limit_mb a growing heap; the cookie targets
  # also hold themselves to an allocation budget linear in the input (fuzz/src/lib.rs).
  if cargo fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir" "$t" "$work" "fuzz/corpus/$t" "fuzz/regressions/$t" -- \
    -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=256 -malloc_limit_mb=256 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; then
    passed=$((passed + 1))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    echo "ok: ${execs:-?} inputs, ${rate:-?}/s, $(ls "$work" | wc -l) in the working corpus"
  else
    failed+=("$t")
    echo "FAILED: $t — the log's end (whole log: $log):"
    tail -n 40 "$log"
    echo "finding(s): $(ls "$artifacts" | grep -v '^last-run.log$' | sed "s|^|$artifacts/|" | tr '\n' ' ')"
  fi
done

echo
if ((${#failed[@]})); then
  echo "failed targets: ${failed[*]} (move the input from fuzz/artifacts/<target>/ to fuzz/regressions/<target>/ and commit it)"
fi
echo "fuzz: $passed passed, ${#failed[@]} failed"
((${#failed[@]} == 0))
