#!/usr/bin/env bash
# Load benchmark of the upload endpoint (not a test; CI does not run it).
# Starts `photolabel serve` on a loopback port with a fresh key, drives it
# with wrk (Debian package) for DURATION at CONCURRENCY with a 1440×960 JPEG,
# samples the server's resident memory every second, and prints throughput,
# latency, the status codes the server counted (/metrics) and the peak RSS.
#   bench/load.sh [BINARY] ; env: DURATION=60s CONCURRENCY=16 PORT=18181
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/photolabel}
duration=${DURATION:-60s}
concurrency=${CONCURRENCY:-16}
port=${PORT:-18181}
command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 1; }
data=$(mktemp -d)
trap 'kill $server $sampler 2>/dev/null || true; rm -rf "$data"' EXIT
key=$("$bin" keys --data-dir "$data" create --name load 2>/dev/null)
"$bin" serve --data-dir "$data" --bind "127.0.0.1:$port" --log warn &
server=$!
for _ in $(seq 1 120); do
  curl -sf "127.0.0.1:$port/health" >/dev/null && break
  sleep 0.5
done
(while kill -0 $server 2>/dev/null; do awk '/VmRSS/ {print $2}' /proc/$server/status; sleep 1; done) > "$data/rss" &
sampler=$!
PHOTO=tests/fixtures/bench/tiled_1440x960.jpg KEY=$key \
  wrk -t4 -c"$concurrency" -d"$duration" --latency -s bench/upload.lua "http://127.0.0.1:$port/labelling/img"
echo "status codes counted by the server:"
curl -s "127.0.0.1:$port/metrics" | grep -E '^photolabel_http_requests_total' || curl -s "127.0.0.1:$port/metrics" | grep -E 'requests' | head -20
echo "peak RSS: $(sort -n "$data/rss" | tail -1) kB (samples: $(wc -l < "$data/rss"))"
