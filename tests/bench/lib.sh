# Shared by tests/bench/*.sh: a demo app and a sidecar on a loopback address of their own, and
# sessions driven through them with curl.
# shellcheck shell=bash

# Scratch files go in $work; the processes in $pids are stopped when the script exits.
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# start_app DIR TOOL: TOOL's demo app on a loopback address of its own (127.0.0.0/8 is all
# loopback: the ports are free there), its log in DIR. Sets $ip and $app (also in $pids).
start_app() {
  local dir=$1 tool=$2
  ip=127.$((RANDOM % 200 + 20)).$((RANDOM % 250 + 1)).$((RANDOM % 250 + 1))
  "$tool" demo-app --listen "$ip:8080" --state-listen "$ip:8081" --workers 1 2> "$dir/app.log" &
  app=$!
  pids+=("$app")
}

# wait_for WHAT LOG CURL_ARGS...: returns once `curl CURL_ARGS` succeeds; fails after 60 s, naming
# WHAT with the end of its LOG.
wait_for() {
  local what=$1 log=$2 _
  shift 2
  for _ in $(seq 600); do
    if curl -s -o /dev/null "$@"; then return 0; fi
    sleep 0.1
  done
  echo "$what was not ready within 60 s: $(tail -3 "$log")" >&2
  return 1
}

# start_pod DIR TOOL SIDECAR...: TOOL's demo app (start_app), and the sidecar that `SIDECAR... run`
# starts (a build, or valgrind and its arguments before one) on the same address, keys and logs in
# DIR. Sets $ip, $app and $sidecar (both also in $pids) and returns once the sidecar is ready. No
# drain grace: SIGTERM stops it now. One worker thread, or $SIDECAR_WORKERS.
start_pod() {
  local dir=$1 tool=$2
  shift 2
  start_app "$dir" "$tool"
  "$tool" keygen > "$dir/keys"
  "$@" run --listen "$ip:8000" --admin "$ip:9901" --app "$ip:8080" --state-addr "$ip:8081" \
    --pool bench/pool --pod-name bench-0 --key-file "$dir/keys" --mode push --cookie-secure false \
    --workers "${SIDECAR_WORKERS:-1}" --drain-grace 0s --log-level warn 2> "$dir/sidecar.log" &
  sidecar=$!
  pids+=("$sidecar")
  wait_for "the sidecar" "$dir/sidecar.log" -f "http://$ip:9901/ready"
}

# all_answered WHAT N CURL_ARGS...: one curl with CURL_ARGS (its requests on one keep-alive
# connection, as the bench's `Host`); fails, naming WHAT, unless its N answers are all 200s.
all_answered() {
  local what=$1 n=$2 codes
  shift 2
  codes=$(curl -s -w '%{http_code}\n' -H 'Host: bench' "$@" | sort | uniq -c | xargs)
  [[ $codes == "$n 200" ]] || { echo "$what: not every request answered 200: $codes" >&2; return 1; }
}

# More fields on every request of `session` (curl -H arguments): none unless a script sets them.
request_fields=()

# The fields a browser sends with a request of a page's script besides Host (Chrome's: 13, ~560 bytes).
# shellcheck disable=SC2034 # read by the scripts that source this file
browser_fields=(
  -H 'User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36'
  -H 'Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8'
  -H 'Accept-Language: en-US,en;q=0.9' -H 'Accept-Encoding: gzip, deflate, br, zstd'
  -H 'sec-ch-ua: "Chromium";v="131", "Not_A Brand";v="24"' -H 'sec-ch-ua-mobile: ?0' -H 'sec-ch-ua-platform: "Linux"'
  -H 'Sec-Fetch-Site: same-origin' -H 'Sec-Fetch-Mode: cors' -H 'Sec-Fetch-Dest: empty'
  -H 'Referer: http://bench/cart' -H 'Origin: http://bench' -H 'Content-Type: application/x-www-form-urlencoded'
)

# session FIRST EACH N METHOD: one session on one keep-alive connection through the sidecar at
# $ip, its cookies carried on by curl's cookie engine: FIRST (which gives it its state), then EACH
# N times, each request with $request_fields. Fails unless every answer is a 200.
session() {
  local first=$1 each=$2 n=$3 method=$4 jar _
  jar=$(mktemp "$work/jar.XXXX")
  local args=(-o /dev/null "http://$ip:8000/$first")
  for _ in $(seq "$n"); do args+=(-o /dev/null "http://$ip:8000/$each"); done
  all_answered "$first" $((n + 1)) "${request_fields[@]}" -b "$jar" -c "$jar" -X "$method" "${args[@]}"
}
