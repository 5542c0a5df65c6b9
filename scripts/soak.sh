#!/usr/bin/env bash
# Soak under overload (RELIABILITY.md, "Overload"); not a test, CI does not
# run it. Needs wrk and curl (Debian packages).
#
#   scripts/soak.sh [BINARY]          # default target/release/photolabel
#   DURATION=20s scripts/soak.sh      # a short run to try the script
#
# 1. Starts `photolabel serve` on a loopback port with a fresh data dir and
#    key (extra flags: SERVE_ARGS), uploading a 1440×960 JPEG throughout.
# 2. Capacity: wrk, CONCURRENCY (16) connections as fast as they go, for
#    BASELINE (30s); photos/s is the capacity (or set CAPACITY to skip).
# 3. Overload: for DURATION (10m), OVERLOAD (2) × capacity requests/s on a
#    fixed schedule (scripts/soak.lua) over CONNECTIONS (192) connections.
#    Every second: GET /health (status, latency) and the server's RSS.
# 4. The load drops: time until one upload gets 200 again (must be ≤ 5 s),
#    then the capacity run of step 2 again (throughput must be back).
# 5. Prints the statuses (wrk's and the server's /metrics), anything outside
#    {200, 429, 503}, /health failures, RSS (peak, per half), recovery.
# Exits 1 when an acceptance check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/photolabel}
duration=${DURATION:-10m}
baseline=${BASELINE:-30s}
concurrency=${CONCURRENCY:-16}
connections=${CONNECTIONS:-192}
overload=${OVERLOAD:-2}
port=${PORT:-18282}
photo=${PHOTO:-tests/fixtures/bench/tiled_1440x960.jpg}
threads=4
for tool in wrk curl; do
  command -v $tool >/dev/null || { echo "needs $tool: apt-get install $tool" >&2; exit 2; }
done
[ -x "$bin" ] || { echo "no binary at $bin (cargo build --release)" >&2; exit 2; }

work=$(mktemp -d)
server='' health_pid='' rss_pid=''
cleanup() {
  for pid in $health_pid $rss_pid $server; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

key=$("$bin" keys --data-dir "$work" create --name soak 2>/dev/null)
# shellcheck disable=SC2086
"$bin" serve --data-dir "$work" --bind "127.0.0.1:$port" --log warn ${SERVE_ARGS:-} 2>"$work/server.log" &
server=$!
for _ in $(seq 1 600); do
  curl -sf "127.0.0.1:$port/health" >/dev/null && break
  kill -0 $server 2>/dev/null || { echo "serve exited:" >&2; cat "$work/server.log" >&2; exit 2; }
  sleep 0.5
done
curl -sf "127.0.0.1:$port/health" >/dev/null || { echo "server never became ready" >&2; exit 2; }
url="http://127.0.0.1:$port/labelling/img"
export PHOTO=$photo KEY=$key THREADS=$threads

# One upload; prints its status.
upload_once() {
  curl -s -o /dev/null -m 60 -w '%{http_code}' -H "x-api-key: $key" \
    -F "image=@$photo;type=image/jpeg" "$url" || true
}

# wrk run: $1 label, $2 duration, $3 connections, $4 rate (0: unpaced).
run_wrk() {
  RATE=$4 wrk -t$threads -c"$3" -d"$2" --timeout 60s -s scripts/soak.lua "$url" \
    > "$work/wrk-$1.txt" 2>&1 || true
}
wrk_value() { awk -v k="$2" '$1 == k { print $2 }' "$work/wrk-$1.txt"; }
wrk_photos_per_s() {
  awk '$1 == "wrk_status" && $2 == 200 { n = $3 } END { print n + 0 }' "$work/wrk-$1.txt" |
    awk -v d="$(wrk_seconds "$1")" '{ printf "%.1f", $1 / d }'
}
# wrk's own duration line: "N requests in 20.01s, ..." (or 10.00m, 1.00h).
wrk_seconds() { sed -n 's/.* requests in \([0-9.]*\)\(ms\|s\|m\|h\),.*/\1 \2/p' "$work/wrk-$1.txt" |
  awk '{ f = ($2 == "ms") ? 0.001 : ($2 == "m") ? 60 : ($2 == "h") ? 3600 : 1; print $1 * f }'; }

echo "== capacity: $concurrency connections, unpaced, $baseline"
if [ -n "${CAPACITY:-}" ]; then
  capacity=$CAPACITY
  echo "given: $capacity photos/s"
else
  run_wrk before "$baseline" "$concurrency" 0
  capacity=$(wrk_photos_per_s before)
  echo "measured: $capacity photos/s (200s only)"
fi
rate=$(awk -v c="$capacity" -v o="$overload" 'BEGIN { printf "%.1f", c * o }')

# Samplers: one line per second each, until told to stop.
: > "$work/health"; : > "$work/rss"
(
  while [ ! -e "$work/stop" ]; do
    t=$(now)
    out=$(curl -s -o /dev/null -m 5 -w '%{http_code} %{time_total}' "127.0.0.1:$port/health" || true)
    echo "$t ${out:-000 5}" >> "$work/health"
    sleep 1
  done
) &
health_pid=$!
(
  while [ ! -e "$work/stop" ] && kill -0 $server 2>/dev/null; do
    echo "$(now) $(awk '/VmRSS/ { print $2 }' /proc/$server/status)" >> "$work/rss"
    sleep 1
  done
) &
rss_pid=$!

echo "== overload: $rate requests/s offered (${overload}× capacity), $connections connections, $duration"
load_start=$(now)
run_wrk overload "$duration" "$connections" "$rate"
load_end=$(now)

# Recovery: the first 200 after the load dropped.
first_ok=''
while [ -z "$first_ok" ]; do
  status=$(upload_once)
  if [ "$status" = 200 ]; then
    first_ok=$(now)
  elif awk -v a="$load_end" -v b="$(now)" 'BEGIN { exit !(b - a > 60) }'; then
    break
  else
    sleep 0.1
  fi
done
touch "$work/stop"
wait $health_pid $rss_pid 2>/dev/null || true
health_pid='' rss_pid=''
echo "== after the load: $concurrency connections, unpaced, $baseline"
run_wrk after "$baseline" "$concurrency" 0
after=$(wrk_photos_per_s after)

metrics=$(curl -s "127.0.0.1:$port/metrics" | grep -E '^photolabel_requests_total\{' || true)

# ---- report ------------------------------------------------------------------
fail=0
echo
echo "## soak report ($(date -u +%Y-%m-%dT%H:%MZ), $bin, $(nproc) cores)"
echo
echo "- capacity (before): $capacity photos/s; offered during the overload: $rate requests/s"
echo "- overload: $(wrk_seconds overload) s, wrk completed $(wrk_value overload wrk_rate) responses/s," \
  "latency $(grep wrk_latency_ms "$work/wrk-overload.txt" | cut -d' ' -f2-)," \
  "socket errors: $(grep wrk_errors "$work/wrk-overload.txt" | cut -d' ' -f2-)"
echo "- offered/capacity: $(awk -v r="$(wrk_value overload wrk_rate)" -v c="$capacity" 'BEGIN { printf "%.2f", r / c }')×;" \
  "photos labelled during the overload: $(wrk_photos_per_s overload)/s"
echo "- statuses seen by wrk during the overload: $(awk '$1 == "wrk_status" { printf "%s×%s ", $3, $2 }' "$work/wrk-overload.txt")"
echo "- statuses counted by the server (/metrics, whole run):"
echo "$metrics" | sed -E 's/^photolabel_requests_total\{(.*)\} (.*)$/    \1: \2/'
outside=$( {
  awk '$1 == "wrk_status" && $2 != 200 && $2 != 429 && $2 != 503 { print "wrk: " $2 " × " $3 }' \
    "$work/wrk-"*.txt
  echo "$metrics" | grep -E 'status="[0-9]+"' |
    grep -vE 'status="(200|429|503)"' | sed 's/^/server: /'
} || true)
if [ -n "$outside" ]; then
  echo "- FAIL: responses outside {200, 429, 503}:"; echo "$outside" | sed 's/^/    /'; fail=1
else
  echo "- responses outside {200, 429, 503}: none"
fi
health_total=$(awk -v a="$load_start" -v b="$load_end" '$1 >= a && $1 <= b' "$work/health" | wc -l)
health_bad=$(awk -v a="$load_start" -v b="$load_end" '$1 >= a && $1 <= b && $2 != 200' "$work/health")
health_max=$(awk -v a="$load_start" -v b="$load_end" '$1 >= a && $1 <= b { if ($3 > m) m = $3 } END { printf "%.0f", m * 1000 }' "$work/health")
if [ -n "$health_bad" ]; then
  echo "- FAIL: /health failed $(echo "$health_bad" | wc -l) of $health_total times (time, status, seconds):"
  echo "$health_bad" | sed 's/^/    /'; fail=1
else
  echo "- /health during the overload: $health_total of $health_total answered 200, slowest ${health_max} ms"
fi
peak=$(sort -k2 -n "$work/rss" | tail -1 | awk '{ print $2 }')
mid=$(awk -v a="$load_start" -v b="$load_end" 'BEGIN { printf "%.3f", (a + b) / 2 }')
first_half=$(awk -v a="$load_start" -v m="$mid" '$1 >= a && $1 < m { if ($2 > p) p = $2 } END { print p + 0 }' "$work/rss")
second_half=$(awk -v m="$mid" -v b="$load_end" '$1 >= m && $1 <= b { if ($2 > p) p = $2 } END { print p + 0 }' "$work/rss")
echo "- resident memory: peak $((peak / 1024)) MB; overload first half peak $((first_half / 1024)) MB," \
  "second half peak $((second_half / 1024)) MB ($(wc -l < "$work/rss") samples)"
if [ "$second_half" -gt $((first_half * 5 / 4 + 16384)) ]; then
  echo "- FAIL: memory grew by more than a quarter from the first half to the second"; fail=1
fi
if [ -n "$first_ok" ]; then
  recovery=$(elapsed "$load_end" "$first_ok")
  echo "- recovery: first 200 ${recovery} s after the load dropped"
  if awk -v r="$recovery" 'BEGIN { exit !(r > 5) }'; then echo "- FAIL: recovery over 5 s"; fail=1; fi
else
  echo "- FAIL: no 200 within 60 s after the load dropped"; fail=1
fi
echo "- throughput after the load: $after photos/s (before: $capacity)"
if awk -v a="$after" -v c="$capacity" 'BEGIN { exit !(a < 0.8 * c) }'; then
  echo "- FAIL: throughput after the load below 80 % of before"; fail=1
fi
errors=$(grep -cE ' (ERROR|WARN) ' "$work/server.log" || true)
echo "- server log: $errors WARN/ERROR lines$( [ "$errors" -gt 0 ] && echo ", last:" )"
grep -E ' (ERROR|WARN) ' "$work/server.log" | tail -5 | sed 's/^/    /' || true
echo
[ $fail = 0 ] && echo "soak: PASS" || echo "soak: FAIL"
exit $fail
