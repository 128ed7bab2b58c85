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
# --baselines also counts nginx (the bench's configuration, in one process) and the minimal proxy
# (`lean-proxy`, lab/src/lean_proxy.rs) on the same requests, each session named by a
# `Handover-Session` field as the bench's clients do without the sidecar, and prints each sidecar's
# count over theirs: the CPU goal's comparison in a measure the machine's noise does not move
# (though it leaves out what counts do not see: cache misses, how fast the instructions run).
#
#   tests/bench/instructions.sh [--requests N] [--state-bytes B | --cart B | --page] [--browser] [--baselines] SIDECAR [OTHER_SIDECAR...]
#
# Needs valgrind and curl (Debian: apt-get install valgrind curl) and a built
# target/dist/handover-sidecar (the demo app; `cargo build --profile dist -p handover-sidecar`).
set -euo pipefail

requests=2000
state_bytes=100
page=""
cart=""
browser=""
baselines=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --requests) requests=$2; shift 2 ;;
    --state-bytes) state_bytes=$2; shift 2 ;;
    --cart) cart=$2; shift 2 ;;
    --page) page=1; shift ;;
    --browser) browser=1; shift ;;
    --baselines) baselines=1; shift ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || { echo "usage: $0 [--requests N] [--state-bytes B | --cart B | --page] [--browser] [--baselines] SIDECAR [OTHER_SIDECAR...]" >&2; exit 2; }
command -v valgrind > /dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/../.." && pwd)
tool=$repo/target/dist/handover-sidecar
[[ -x $tool ]] || { echo "$tool not built (cargo build --profile dist -p handover-sidecar)" >&2; exit 2; }

# shellcheck source=tests/bench/lib.sh
source "$repo/tests/bench/lib.sh"
if [[ -n $browser ]]; then request_fields=("${browser_fields[@]}"); fi

# The counters run in command substitutions, subshells that bash does not run the script's EXIT
# trap in: each stops the processes it started itself when it ends, however it ends (a failed
# start would otherwise leave a demo app running, and holding the script's output open).
stop_own_on_exit() { trap 'kill "${pids[@]}" 2> /dev/null || true' EXIT; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

# per_request COUNTER ARG: one request's instructions, from `COUNTER ARG N` (count or
# count_baseline) with N = 500 and 500 + $requests (see the top).
per_request() {
  local short long
  short=$("$1" "$2" 500) || exit 1
  long=$("$1" "$2" $((500 + requests))) || exit 1
  echo $(((long - short) / requests))
}

# Total instructions of one sidecar process: started under callgrind, 200 requests to warm up,
# then $2 counted ones, then stopped (SIGTERM: callgrind writes its counts at exit).
count() {
  local exe=$1 n=$2 d
  stop_own_on_exit
  d=$(mktemp -d "$work/run.XXXX")
  start_pod "$d" "$tool" valgrind --tool=callgrind --callgrind-out-file="$d/callgrind.out" "$exe" || exit 1
  # One curl: one keep-alive connection, its cookie engine carrying the session's cookies on.
  session "$first_path" "$each_path" $((n + 200)) "$method" || exit 1
  kill "$sidecar" "$app"
  wait "$sidecar" 2> /dev/null || true
  awk '/^totals:/ { print $2 }' "$d/callgrind.out"
}

# Total instructions of one baseline proxy ($1: nginx or lean) on the same requests, its sessions
# named by a field instead of a cookie: started under callgrind in front of a demo app of its own,
# 200 requests to warm up, then $2 counted ones.
count_baseline() {
  local kind=$1 n=$2 d proxy _
  stop_own_on_exit
  d=$(mktemp -d "$work/run.XXXX")
  start_app "$d" "$tool"
  if [[ $kind == nginx ]]; then
    # The bench's nginx (lab/src/bench.rs: nginx_config), in one process: callgrind follows it.
    cat > "$d/nginx.conf" <<EOF
master_process off;
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $d/body; proxy_temp_path $d/proxy; fastcgi_temp_path $d/fastcgi;
  uwsgi_temp_path $d/uwsgi; scgi_temp_path $d/scgi;
  upstream app { server $ip:8080; keepalive 128; keepalive_requests 10000000; }
  keepalive_requests 10000000;
  server {
    listen $ip:8000;
    location / {
      proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffer_size 16k; proxy_buffers 8 16k; proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }
}
EOF
    valgrind --tool=callgrind --callgrind-out-file="$d/callgrind.out" nginx -c "$d/nginx.conf" -p "$d" \
      2> "$d/proxy.log" &
  else
    valgrind --tool=callgrind --callgrind-out-file="$d/callgrind.out" "$tool" lean-proxy --listen "$ip:8000" \
      --app "$ip:8080" 2> "$d/proxy.log" &
  fi
  proxy=$!
  pids+=("$proxy")
  # The app first: a proxy answers (a 502) before its app does.
  wait_for "the demo app" "$d/app.log" "http://$ip:8080/" || exit 1
  wait_for "$kind" "$d/proxy.log" "http://$ip:8000/" || exit 1
  local args=(-o /dev/null "http://$ip:8000/$first_path")
  for _ in $(seq $((n + 200))); do args+=(-o /dev/null "http://$ip:8000/$each_path"); done
  all_answered "$kind" $((n + 201)) "${request_fields[@]}" -H 'Handover-Session: bench-1' -X "$method" "${args[@]}" ||
    exit 1
  kill "$proxy" "$app"
  wait "$proxy" 2> /dev/null || true
  awk '/^totals:/ { print $2 }' "$d/callgrind.out"
}

# What each session sends: its first request, which gives it its state, then the counted ones.
if [[ -n $page ]]; then
  first_path='visit?cache=none' each_path='visit?cache=none' method=GET what="GET /visit?cache=none"
elif [[ -n $cart ]]; then
  first_path="cart?bytes=$cart" each_path=incr method=POST what="a JSON cart of about $cart bytes"
else
  first_path="blob?bytes=$state_bytes" each_path=incr method=POST what="state of $state_bytes bytes"
fi
if [[ -n $browser ]]; then what="$what, a browser's fields"; fi

first=""
counts=()
for exe in "$@"; do
  per=$(per_request count "$exe") || exit 1
  counts+=("$per")
  if [[ -z $first ]]; then
    first=$per
    echo "$exe: $per instructions per request ($what, $requests requests)"
  else
    echo "$exe: $per instructions per request, x$(ratio "$per" "$first") of the first"
  fi
done

if [[ -n $baselines ]]; then
  command -v nginx > /dev/null || { echo "nginx not found (apt-get install nginx-light)" >&2; exit 2; }
  for kind in nginx lean; do
    per=$(per_request count_baseline "$kind") || exit 1
    name=$kind
    if [[ $kind == lean ]]; then name="the minimal proxy"; fi
    line="$name: $per instructions per request; sidecar / $name:"
    for c in "${counts[@]}"; do line="$line x$(ratio "$c" "$per")"; done
    echo "$line"
  done
fi
