#!/usr/bin/env bash
# Instructions the sidecar runs per request, outside the kernel, counted by callgrind: the same
# request loop as `bench` (a session's state of noise pushed, POST /incr on one keep-alive
# connection, the cookie sealed on every response), with curl as the client.
#
# A count, not a time: it does not move with the machine's noise, so a change of a few hundred
# instructions (~1 % of a request) shows on a single run, where `bench --compare-exe` needs many
# rounds to see it. It does not see the kernel, cache misses or how fast the instructions run:
# a candidate it favours is then timed with `bench --compare-exe`.
#
# Each build runs twice, with 500 and 500 + N requests after the same start; the difference over
# N leaves start-up and warm-up out.
#
# --page counts a page view instead: GET /visit?cache=none, which pushes a state (a visit count)
# on a page a shared cache could store, so the sidecar also makes it private — a browser's path
# that the bench's POSTs do not take. (--state-bytes does not apply to it.)
#
# --cart B makes the session's state a JSON shopping cart of about B bytes (the demo app's
# `POST /cart`) instead of noise: a state with repeats, which the sidecar deflates with LZ77.
#
# --browser sends the 13 fields a browser's script request carries with every request (lib.sh:
# browser_fields; with Host, 14 fields and ~600 bytes) where curl sends three (Host, User-Agent,
# Accept): what the fields cost.
#
#   tests/bench/instructions.sh [--requests N] [--state-bytes B | --cart B | --page] [--browser] SIDECAR [OTHER_SIDECAR...]
#
# Needs valgrind and curl (Debian: apt-get install valgrind curl) and a built
# target/dist/handover-sidecar (the demo app; `cargo build --profile dist -p handover-sidecar`).
set -euo pipefail

requests=2000
state_bytes=100
page=""
cart=""
browser=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --requests) requests=$2; shift 2 ;;
    --state-bytes) state_bytes=$2; shift 2 ;;
    --cart) cart=$2; shift 2 ;;
    --page) page=1; shift ;;
    --browser) browser=1; shift ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || { echo "usage: $0 [--requests N] [--state-bytes B | --cart B | --page] [--browser] SIDECAR [OTHER_SIDECAR...]" >&2; exit 2; }
command -v valgrind > /dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/../.." && pwd)
tool=$repo/target/dist/handover-sidecar
[[ -x $tool ]] || { echo "$tool not built (cargo build --profile dist -p handover-sidecar)" >&2; exit 2; }

# shellcheck source=tests/bench/lib.sh
source "$repo/tests/bench/lib.sh"
if [[ -n $browser ]]; then request_fields=("${browser_fields[@]}"); fi

# Total instructions of one sidecar process: started under callgrind, 200 requests to warm up,
# then $2 counted ones, then stopped (SIGTERM: callgrind writes its counts at exit).
count() {
  local exe=$1 n=$2 d
  d=$(mktemp -d "$work/run.XXXX")
  start_pod "$d" "$tool" valgrind --tool=callgrind --callgrind-out-file="$d/callgrind.out" "$exe" || exit 1
  # One curl: one keep-alive connection, its cookie engine carrying the session's cookies on.
  if [[ -n $page ]]; then
    session 'visit?cache=none' 'visit?cache=none' $((n + 200)) GET || exit 1
  elif [[ -n $cart ]]; then
    session "cart?bytes=$cart" incr $((n + 200)) POST || exit 1
  else
    session "blob?bytes=$state_bytes" incr $((n + 200)) POST || exit 1
  fi
  kill "$sidecar" "$app"
  wait "$sidecar" 2> /dev/null || true
  awk '/^totals:/ { print $2 }' "$d/callgrind.out"
}

first=""
for exe in "$@"; do
  short=$(count "$exe" 500) || exit 1
  long=$(count "$exe" $((500 + requests))) || exit 1
  per=$(((long - short) / requests))
  if [[ -z $first ]]; then
    first=$per
    if [[ -n $page ]]; then
      what="GET /visit?cache=none"
    elif [[ -n $cart ]]; then
      what="a JSON cart of about $cart bytes"
    else
      what="state of $state_bytes bytes"
    fi
    if [[ -n $browser ]]; then what="$what, a browser's fields"; fi
    echo "$exe: $per instructions per request ($what, $requests requests)"
  else
    echo "$exe: $per instructions per request, x$(awk -v a="$per" -v b="$first" 'BEGIN { printf "%.3f", a / b }') of the first"
  fi
done
