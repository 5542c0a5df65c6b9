#!/usr/bin/env bash
# Queue overhead and worker memory (issue 15), against the NATS server at
# $NATS (default nats://127.0.0.1:4222, JetStream on).
#
#   tools/queue_bench.sh [N_PHOTOS] [QUEUED]
#
# 1. The same N_PHOTOS photos of shared/data (default 300), labelled by
#    `photolabel label DIR` from disk and by one `photolabel worker` that
#    fetches them from a loopback HTTP server (python3 -m http.server).
#    `label`: (time for N) − (time for 1), so model loading is left out.
#    worker: from its /health turning 200 (model loaded, connected) until
#    `collect --expect N` has all N results.
# 2. Peak RSS (VmHWM) of one worker with QUEUED jobs (default 10000) in the
#    stream: idle after loading, and after it has labelled 1000 and 3000.
#
# Uses the release binary (cargo build --release; CARGO_TARGET_DIR is
# honoured), or $PHOTOLABEL_BIN. Streams are named after this shell's pid and deleted at the end.
set -eu

N=${1:-300}
QUEUED=${2:-10000}
NATS=${NATS:-nats://127.0.0.1:4222}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${PHOTOLABEL_BIN:-$TARGET/release/photolabel}
DATA=${DATA:-$ROOT/../shared/data/photos}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
now() { date +%s.%N; }

# The photos: N of shared/data spread evenly over its sorted list (so all
# sources and sizes are in), linked (not copied) into one folder that both
# `label` and the HTTP server read.
mkdir -p "$WORK/photos"
python3 - "$DATA" "$N" "$WORK/photos" <<'EOF'
import os, sys
data, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
photos = sorted(os.path.join(d, f) for d, _, fs in os.walk(data) for f in fs if f.endswith(".jpg"))
for i, path in enumerate(photos[:: max(1, len(photos) // n)][:n]):
    os.symlink(os.path.abspath(path), os.path.join(out, f"{i:06d}.jpg"))
EOF
count=$(ls "$WORK/photos" | wc -l)
first=$(ls "$WORK/photos" | head -n1)
echo "photos: $count from $DATA"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 "$PORT" --directory "$WORK/photos" >/dev/null 2>&1 &
PIDS+=($!)
sleep 1

echo "== photolabel label from disk"
t0=$(now); "$BIN" label "$WORK/photos/$first" --format jsonl >/dev/null 2>&1; t1=$(now)
"$BIN" label "$WORK"/photos/*.jpg --format jsonl >/dev/null 2>&1; t2=$(now)
label_one=$(echo "$t1 - $t0" | bc -l)
label_all=$(echo "$t2 - $t1" | bc -l)
label_rate=$(echo "($count - 1) / ($label_all - $label_one)" | bc -l)
printf 'label: 1 photo %.2f s, %d photos %.2f s => %.1f photos/s (model loading left out)\n' \
    "$label_one" "$count" "$label_all" "$label_rate"

jobs_file() { # $1 = how many jobs, cycling through the photos
    ls "$WORK/photos" | awk -v n="$1" -v port="$PORT" '
        { f[NR] = $0 } END { for (i = 0; i < n; i++) printf "bench-%06d,http://127.0.0.1:%s/%s\n", i, port, f[i % NR + 1] }'
}
pipeline() { # $1 = tag
    echo "--nats $NATS --jobs-stream QBENCH_$$_$1_JOBS --results-stream QBENCH_$$_$1_RESULTS"
}
wait_health() { # $1 = port
    until curl -fs "http://127.0.0.1:$1/health" >/dev/null 2>&1; do sleep 0.05; done
}
delete_streams() { # $1 = tag; via a worker-less helper: python's NATS text protocol
    python3 - "$1" <<'EOF'
import socket, sys
tag = sys.argv[1]
s = socket.create_connection(("127.0.0.1", 4222))
s.recv(4096)
for kind in ("JOBS", "RESULTS"):
    s.sendall(f"CONNECT {{}}\r\nPUB $JS.API.STREAM.DELETE.{tag}_{kind} 0\r\n\r\n".encode())
s.sendall(b"PING\r\n"); s.recv(4096)
EOF
}

echo "== photolabel worker, photos fetched from loopback HTTP"
jobs_file "$count" > "$WORK/jobs.csv"
"$BIN" enqueue $(pipeline rate) "$WORK/jobs.csv" 2>&1 | tail -n1
MPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" worker $(pipeline rate) --allow-private-urls --metrics-bind "127.0.0.1:$MPORT" 2>"$WORK/worker.log" &
WPID=$!; PIDS+=($WPID)
wait_health "$MPORT"; t0=$(now)
"$BIN" collect $(pipeline rate) --expect "$count" --out "$WORK/results.jsonl" 2>/dev/null; t1=$(now)
worker_all=$(echo "$t1 - $t0" | bc -l)
worker_rate=$(echo "$count / $worker_all" | bc -l)
errors=$(grep -c '"error"' "$WORK/results.jsonl" || true)
printf 'worker: %d photos %.2f s => %.1f photos/s (%s error results)\n' "$count" "$worker_all" "$worker_rate" "$errors"
printf 'overhead per photo: %.1f %%\n' "$(echo "($label_rate / $worker_rate - 1) * 100" | bc -l)"
kill -TERM "$WPID"; wait "$WPID" || true
delete_streams "QBENCH_$$_rate"

echo "== memory of a worker with $QUEUED jobs queued"
jobs_file "$QUEUED" > "$WORK/many.csv"
"$BIN" enqueue $(pipeline mem) "$WORK/many.csv" 2>&1 | tail -n1
MPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Loaded but not pulling yet is not observable from outside, so measure the
# idle figure on an empty pipeline first.
"$BIN" worker $(pipeline idle) --metrics-bind "127.0.0.1:$MPORT" 2>/dev/null &
IPID=$!; PIDS+=($IPID)
wait_health "$MPORT"; sleep 1
idle=$(awk '/VmHWM/ {print $2}' "/proc/$IPID/status")
kill -TERM "$IPID"; wait "$IPID" || true
delete_streams "QBENCH_$$_idle"
"$BIN" worker $(pipeline mem) --allow-private-urls --metrics-bind "127.0.0.1:$MPORT" 2>/dev/null &
WPID=$!; PIDS+=($WPID)
wait_health "$MPORT"
printf 'worker idle (empty queue): peak RSS %d MiB\n' $((idle / 1024))
for mark in 1000 3000; do
    until [ "$(curl -fs "http://127.0.0.1:$MPORT/metrics" | awk '/^photolabel_queue_jobs_done_total/ {print $2}')" -ge "$mark" ] 2>/dev/null; do sleep 0.5; done
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$WPID/status")
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$WPID/status")
    lag=$(curl -fs "http://127.0.0.1:$MPORT/metrics" | awk '/^photolabel_queue_lag/ {print $2}')
    printf 'worker after %d of %d jobs (lag %s): peak RSS %d MiB, RSS now %d MiB\n' \
        "$mark" "$QUEUED" "$lag" $((hwm / 1024)) $((rss / 1024))
done
kill -TERM "$WPID"; wait "$WPID" || true
delete_streams "QBENCH_$$_mem"
