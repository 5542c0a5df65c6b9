#!/usr/bin/env bash
# The whole benchmark (issues 4 and 16), in one command. Not a test: CI does not run it.
#
#   scripts/bench.sh            # the full run: ~6 minutes after the first build
#   scripts/bench.sh --smoke    # the harness end to end: ~1 minute
#
# Installs what it needs (wrk from apt, ONNX Runtime, a release build, a
# Python venv for the peers under .cache/bench-venv). The photos are 200 real
# listing photos of ../shared/data (the 48 vn_listings_dev val_real photos,
# the 150 Houses val photos, 2 zind_empty_home val_real photos) where it is
# there, otherwise 200 generated 1440×960 JPEGs (bench/make_photos.py). Then
# it prints:
#   1. the engine-only ceiling: inference alone, one backbone pass per photo,
#      at batch 1, 2, 4, 8, for one model replica on every core and for one
#      replica per core (divided by the passes per photo measured in 4);
#   2. CLI throughput: `photolabel label` on the folder against the plain
#      Python loop (bench/python_loop.py: Pillow draft, onnxruntime, the same
#      fp32 backbone and heads, one pass per photo), alternating, twice each;
#   3. label agreement: photolabel's HTTP answers against its CLI (must be
#      ≥ 99 %: the same model) and against the peer's (reported: the peer
#      runs one view on every photo, photolabel a second one where unsure);
#   4. HTTP throughput and latency of the upload endpoint at concurrency
#      1, 4 and 16, photolabel and the FastAPI peer (bench/peer/, one fp32
#      view per photo) in turn in the same run, with ratios, each server's
#      peak RSS under c16, and photolabel's backbone passes per photo.
# The report also goes to .cache/bench-results/. Run it on an otherwise idle
# machine: the two servers and wrk share its cores.
#
# Environment: DURATION (per HTTP run, default 30s), WARMUP (default 5s),
# ITERATIONS (engine timing, default 20), TUNE (per peer shape, default 10s),
# PEER_WORKERS + PEER_ORT_THREADS (both set: that peer shape, no tuning),
# PHOTOLABEL_* (read by `photolabel serve` and the CLI as usual).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

smoke=0
case "${1:-}" in
  "") ;;
  --smoke) smoke=1 ;;
  *) echo "usage: scripts/bench.sh [--smoke]" >&2; exit 2 ;;
esac

cores=$(nproc)
if [ $smoke = 1 ]; then
  duration=${DURATION:-3s} warmup=${WARMUP:-1s} iterations=${ITERATIONS:-2}
  batch_sizes=1,2 photo_count=12
else
  duration=${DURATION:-30s} warmup=${WARMUP:-5s} iterations=${ITERATIONS:-20}
  batch_sizes=1,2,4,8 photo_count=200
fi
# The peer's shape: uvicorn worker processes × ONNX Runtime intra-op threads
# per worker. What suits a Python service best depends on the machine, so
# unless PEER_WORKERS and PEER_ORT_THREADS are both set, the run first tries
# cores×1 (a process per core, the usual advice), 1×cores (one process, the
# model using every core) and cores×cores for TUNE (10s) each at c16, and
# compares photolabel against the fastest. Measured on the 2-core VM while
# other jobs loaded it (so only indicative): 1×2 led at c1, 1×2 and 2×2 at
# c4, 2×2 at c16 — see the tuning table of the full run for the real answer.
tune=${TUNE:-$([ $smoke = 1 ] && echo 2s || echo 10s)}
peer_shapes="$cores:1 1:$cores $cores:$cores"
if [ -n "${PEER_WORKERS:-}" ] && [ -n "${PEER_ORT_THREADS:-}" ]; then
  peer_shapes="$PEER_WORKERS:$PEER_ORT_THREADS"
fi

say() { printf '\n== %s\n' "$*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
forget() { # PID: stopped by now, so never signalled again (its number may be reused)
  local kept=() pid
  for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
  pids=("${kept[@]}")
}
trap 'exit 130' INT TERM

# --- What it needs ---------------------------------------------------------
if ! command -v wrk >/dev/null; then
  say "installing wrk"
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get install -y wrk >/dev/null || { $sudo apt-get update >/dev/null && $sudo apt-get install -y wrk >/dev/null; }
fi
scripts/setup-onnxruntime.sh
say "building photolabel (release)"
cargo build --release --bin photolabel
bin=$root/target/release/photolabel

venv=.cache/bench-venv
stamp=$(sha256sum bench/peer/requirements.txt | cut -c1-16)
if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$stamp" ]; then
  say "installing the peer's Python packages into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet -r bench/peer/requirements.txt
  echo "$stamp" > "$venv/.requirements"
fi
python=$root/$venv/bin/python

labels=$root/../shared/data/labels.csv
if [ -f "$labels" ]; then
  photo_kind="real listing photos from ../shared/data"
  python3 - "$labels" > "$work/all-photos.txt" <<'PY'
import csv, os, sys
rows = list(csv.DictReader(open(sys.argv[1])))
def pick(source, split, n=None):
    return [r for r in rows if r["source"] == source and r["split"] == split][:n]
base = os.path.dirname(os.path.abspath(sys.argv[1]))
for r in pick("vn_listings_dev", "val_real") + pick("houses_dataset", "val") + pick("zind_empty_home", "val_real", 2):
    print(os.path.join(base, r["path"]))
PY
else
  photo_kind="generated 1440×960 photos"
  photos_dir=.cache/bench-photos
  stamp=$(sha256sum bench/make_photos.py | cut -c1-16)
  if [ "$(cat "$photos_dir/.generator" 2>/dev/null)" != "$stamp" ]; then
    say "generating 200 photos into $photos_dir"
    rm -rf "$photos_dir"
    "$python" bench/make_photos.py "$photos_dir" --count 200
    echo "$stamp" > "$photos_dir/.generator"
  fi
  find "$root/$photos_dir" -name '*.jpg' | sort > "$work/all-photos.txt"
fi
awk -v n="$photo_count" 'NR <= n' "$work/all-photos.txt" > "$work/photos.txt"
mkdir -p "$work/folder"
xargs -a "$work/photos.txt" -d '\n' cp -t "$work/folder"  # `label` skips symlinks

mkdir -p .cache/bench-results
report=.cache/bench-results/$(date +%Y%m%d-%H%M%S)$([ $smoke = 0 ] || echo -smoke).md
exec > >(tee "$report")

# --- Helpers ---------------------------------------------------------------
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_healthy() { # URL PID LOG
  for _ in $(seq 1 240); do
    curl -sf "$1/health" >/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { tail -20 "$3" >&2; die "server behind $1 exited"; }
    sleep 0.5
  done
  tail -20 "$3" >&2
  die "no healthy server at $1 after 120 s"
}

tree_pids() { # PID: the process and all its descendants
  echo "$1"
  local child
  for child in $(pgrep -P "$1" || true); do tree_pids "$child"; done
}

rss_kb() { # PID: resident memory of the process tree, kB
  local total=0 pid kb
  for pid in $(tree_pids "$1"); do
    kb=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}

load() { # NAME URL CONCURRENCY DURATION -> RESULT line in $work/NAME-c.txt
  local threads=$(( $3 < 2 ? 1 : 2 ))
  PHOTOS=$work/photos.txt KEY=$key wrk -t"$threads" -c"$3" -d"$4" --timeout 60s \
    -s bench/upload.lua "$2/labelling/img" > "$work/$1-$3.txt"
  grep -q '^RESULT ' "$work/$1-$3.txt" || { cat "$work/$1-$3.txt" >&2; die "wrk gave no result"; }
}

field() { # FILE KEY
  grep '^RESULT ' "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k {print $2}'
}

start_peer() { # WORKERS THREADS: sets peer_pid and peer (its URL)
  local port
  port=$(free_port)
  PEER_API_KEYS=$key PEER_ORT_THREADS=$2 PEER_VIEWS=1 \
    "$root/$venv/bin/uvicorn" app:app --app-dir bench/peer --host 127.0.0.1 --port "$port" \
    --workers "$1" --loop uvloop --http httptools --no-access-log --log-level warning \
    > "$work/peer.log" 2>&1 &
  peer_pid=$!
  pids+=("$peer_pid")
  peer=http://127.0.0.1:$port
  wait_healthy "$peer" "$peer_pid" "$work/peer.log"
}

stop_peer() {
  kill "$peer_pid" 2>/dev/null || true
  wait "$peer_pid" 2>/dev/null || true
  forget "$peer_pid"
}

calc() { awk "BEGIN { printf \"$1\", $2 }"; }

# --- The machine -----------------------------------------------------------
echo "# photolabel benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')$([ $smoke = 1 ] && echo ' — SMOKE RUN, figures not meaningful')"
echo
echo "- machine: $(lscpu | awk -F: '/^Model name/ {gsub(/^ +/, "", $2); print $2; exit}'), $cores CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r)"
echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- $(rustc --version), $("$python" --version), $(wrk --version 2>&1 | awk 'NR == 1 {print $1, $2}'), onnxruntime 1.32.0 for both"
echo "- command: scripts/bench.sh$([ $smoke = 1 ] && echo ' --smoke'); HTTP runs of $duration after a $warmup warm-up, $(wc -l < "$work/photos.txt") $photo_kind cycled"

# --- 1. Engine-only ceiling --------------------------------------------------
say "engine-only: inference alone"
# One replica using every core, and one replica per core (what `serve`
# runs by default on a small machine): the ceiling is the better of all.
# One pass per photo here; the passes photolabel really runs per photo
# (the mirrored view where unsure) are counted in 4 and divide it.
replica_layouts=$(printf '%s\n' 1 "$cores" | awk '!seen[$0]++' | paste -sd,)
"$bin" bench --engines ort --second-view never --iterations "$iterations" --batch-sizes "$batch_sizes" \
  --replicas "$replica_layouts" \
  "$(sed -n 1p "$work/photos.txt")" > "$work/engine.txt" 2> "$work/engine.log" \
  || { cat "$work/engine.log" >&2; die "photolabel bench failed"; }
# Rows of the batch table:
# | engine | replicas × threads | batch | ms per batch | ms per photo | photos/s |
awk -F'|' 'NF == 8 && $4 + 0 > 0 {gsub(/ /, ""); print $3, $4, $5, $6, $7}' "$work/engine.txt" > "$work/batches.txt"
[ -s "$work/batches.txt" ] || { cat "$work/engine.txt" >&2; die "no batch table from photolabel bench"; }
read -r best_layout best_batch _ best_ms pass_ceiling < <(sort -k4 -g "$work/batches.txt")
read -r _ _ _ batch1_ms _ < <(awk '$1 == "1×'"$cores"'" && $2 == 1' "$work/batches.txt")
echo
echo "## 1. Engine-only ceiling (inference of 1 view per photo, ONNX Runtime, $cores cores)"
echo
echo "| replicas × threads | batch | ms per batch (median) | ms per photo | photos/s |"
echo "|---|---|---|---|---|"
awk '{printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5}' "$work/batches.txt"
echo
echo "One pass per photo: $pass_ceiling photos/s ($best_ms ms, $best_layout at batch $best_batch); one replica on every core at batch 1: $batch1_ms ms. The ceiling of the shipped model divides this by its passes per photo (headline)."

# --- 2. CLI throughput -----------------------------------------------------
say "CLI: photolabel label against the plain Python loop"
mapfile -t photos < "$work/photos.txt"
timed() { # OUT CMD...: runs CMD > OUT, prints the seconds
  local out=$1 start end
  shift
  start=$(date +%s.%N)
  "$@" > "$out" 2> "$out.log" || { cat "$out.log" >&2; die "$1 failed"; }
  end=$(date +%s.%N)
  calc '%.2f' "$end - $start"
}
echo
echo "## 2. CLI throughput (model loading included; alternating, twice each)"
echo
echo "| round | photolabel label s | Python loop s | photolabel photos/s | Python loop photos/s |"
echo "|---|---|---|---|---|"
count=$(wc -l < "$work/photos.txt")
ours_total=0 loop_total=0
for round in 1 2; do
  o=$(timed "$work/cli.jsonl" "$bin" label "$work/folder" --format jsonl)
  l=$(timed "$work/loop.jsonl" "$python" bench/python_loop.py "${photos[@]}")
  echo "| $round | $o | $l | $(calc '%.1f' "$count / $o") | $(calc '%.1f' "$count / $l") |"
  ours_total=$(calc '%.3f' "$ours_total + $o") loop_total=$(calc '%.3f' "$loop_total + $l")
done
cli_ratio=$(calc '%.2f' "$loop_total / $ours_total")
echo
echo "photolabel / Python loop: ${cli_ratio}× ($(calc '%.1f' "2 * $count / $ours_total") against $(calc '%.1f' "2 * $count / $loop_total") photos/s over both rounds)"

# --- The two servers ---------------------------------------------------------
say "starting photolabel serve"
mkdir -p "$work/data"
key=$("$bin" keys --data-dir "$work/data" create --name bench 2> "$work/keys.log") \
  || { cat "$work/keys.log" >&2; die "cannot create a key"; }
ours_port=$(free_port)
"$bin" serve --data-dir "$work/data" --bind "127.0.0.1:$ours_port" --log warn > "$work/ours.log" 2>&1 &
ours_pid=$!
pids+=("$ours_pid")
ours=http://127.0.0.1:$ours_port
wait_healthy "$ours" "$ours_pid" "$work/ours.log"
engine=$(curl -s "$ours/health")
case $engine in *onnxruntime*) ;; *) die "photolabel is not running on ONNX Runtime: $engine" ;; esac

# --- The peer's best shape ----------------------------------------------------
echo
echo "## Peer shape (uvicorn workers × ONNX Runtime threads; c16 for $tune each, the fastest is used)"
echo
echo "| workers × threads | photos/s at c16 | p50 / p99 ms |"
echo "|---|---|---|"
best_rate=0 peer_workers=$cores peer_threads=1
for shape in $(printf '%s\n' $peer_shapes | awk '!seen[$0]++'); do
  workers=${shape%:*} threads=${shape#*:}
  say "peer shape ${workers}×${threads}"
  start_peer "$workers" "$threads"
  load "tune-warmup" "$peer" 4 "$warmup"
  load "tune-$workers-$threads" "$peer" 16 "$tune"
  stop_peer
  t=$work/tune-$workers-$threads-16.txt
  echo "| $workers × $threads | $(field "$t" rps) | $(field "$t" p50_ms) / $(field "$t" p99_ms) |"
  if awk "BEGIN { exit !($(field "$t" rps) > $best_rate) }"; then
    best_rate=$(field "$t" rps) peer_workers=$workers peer_threads=$threads
  fi
done
start_peer "$peer_workers" "$peer_threads"

# --- 3. Label agreement ------------------------------------------------------
say "label agreement"
echo
echo "## 3. Label agreement (every photo through both servers, and the CLI)"
echo
if ! "$python" bench/compare_labels.py --key "$key" --ours "$ours" --peer "$peer" \
  --cli "$work/cli.jsonl" --min 99 "${photos[@]}" > "$work/agreement.txt"; then
  cat "$work/agreement.txt"
  die "FAIL: photolabel's HTTP and CLI answers agree on fewer than 99 % of the photos"
fi
cat "$work/agreement.txt"
agreement=$(awk -F'[()]' 'NR == 1 {sub(/ %/, "", $2); print $2}' "$work/agreement.txt")

# --- 4. HTTP load --------------------------------------------------------------
for name in ours peer; do
  url=$ours; [ $name = peer ] && url=$peer
  say "warming up $name"
  load "warmup-$name" "$url" 4 "$warmup"
done
for c in 1 4 16; do
  for name in ours peer; do
    url=$ours pid=$ours_pid
    [ $name = peer ] && url=$peer pid=$peer_pid
    say "HTTP: $name at concurrency $c for $duration"
    sampler=
    if [ "$c" = 16 ]; then
      (while :; do rss_kb "$pid"; sleep 0.2; done) > "$work/rss-$name.txt" &
      sampler=$!
      pids+=("$sampler")
    fi
    load "$name" "$url" "$c" "$duration"
    if [ -n "$sampler" ]; then
      kill "$sampler" 2>/dev/null || true
      wait "$sampler" 2>/dev/null || true
      forget "$sampler"
    fi
  done
done

peak_mb() { sort -n "$work/rss-$1.txt" | tail -1 | awk '{printf "%.0f", $1 / 1024}'; }
echo
echo "## 4. HTTP upload endpoint (\`POST /labelling/img\`, wrk, photolabel and the peer in turn)"
echo
echo "photolabel: \`photolabel serve\` with its defaults. Peer: FastAPI + uvicorn, $peer_workers worker(s) × $peer_threads ONNX Runtime thread(s)."
echo
echo "| concurrency | photolabel photos/s | peer photos/s | ratio | photolabel p50 / p99 ms | peer p50 / p99 ms | errors (photolabel / peer) |"
echo "|---|---|---|---|---|---|---|"
for c in 1 4 16; do
  o=$work/ours-$c.txt p=$work/peer-$c.txt
  errors_o=$(( $(field "$o" non2xx) + $(field "$o" socket_errors) ))
  errors_p=$(( $(field "$p" non2xx) + $(field "$p" socket_errors) ))
  echo "| $c | $(field "$o" rps) | $(field "$p" rps) | $(calc '%.2f×' "$(field "$o" rps) / $(field "$p" rps)") | $(field "$o" p50_ms) / $(field "$o" p99_ms) | $(field "$p" p50_ms) / $(field "$p" p99_ms) | $errors_o / $errors_p |"
done
echo
echo "| server | peak RSS under c16 |"
echo "|---|---|"
echo "| photolabel | $(peak_mb ours) MB |"
echo "| peer ($peer_workers workers + supervisor, summed) | $(peak_mb peer) MB |"
# Every photo photolabel's server labelled in this run (warm-ups and the
# agreement check included), and the backbone passes they took.
curl -s "$ours/metrics" > "$work/metrics.txt"
passes=$(awk '$1 == "photolabel_backbone_passes_total" {print $2}' "$work/metrics.txt")
labelled=$(awk '/^photolabel_requests_total/ && /labelling\/img/ && /status="200"/ {s += $2} END {print s + 0}' "$work/metrics.txt")
passes_per_photo=$(calc '%.3f' "${passes:-0} / $labelled")
ceiling=$(calc '%.1f' "$pass_ceiling / $passes_per_photo")
echo
echo "photolabel's backbone passes: $passes for $labelled photos, $passes_per_photo per photo; engine-only ceiling of the shipped model: $pass_ceiling / $passes_per_photo = $ceiling photos/s."

# --- Headline ----------------------------------------------------------------
o16=$(field "$work/ours-16.txt" rps) p16=$(field "$work/peer-16.txt" rps)
ratio=$(calc '%.2f' "$o16 / $p16")
share=$(calc '%.0f' "100 * $o16 / $ceiling")
spread=$(calc '%.2f' "$(field "$work/ours-4.txt" p99_ms) / $(field "$work/ours-4.txt" p50_ms)")
verdict() { awk "BEGIN { print ($1) ? \"met\" : \"NOT met\" }"; }
echo
echo "## Headline$([ $smoke = 1 ] && echo ' (smoke run: not meaningful)')"
echo
echo "| criterion | target | result | |"
echo "|---|---|---|---|"
echo "| \`photolabel label\` / plain Python loop (one fp32 view) | ≥ 1.5× | ${cli_ratio}× | $(verdict "$cli_ratio >= 1.5") |"
echo "| HTTP throughput at c16, photolabel / one-view FastAPI peer | ≥ 1.5× | ${ratio}× ($o16 vs $p16 photos/s) | $(verdict "$ratio >= 1.5") |"
echo "| HTTP throughput at c16 / engine-only ceiling | ≥ 85 % | $share % ($o16 of $ceiling photos/s) | $(verdict "$share >= 85") |"
echo "| photolabel p99 / p50 at c4 | ≤ 3 | $spread | $(verdict "$spread <= 3") |"
echo "| peak RSS under c16, photolabel vs peer | below | $(peak_mb ours) MB vs $(peak_mb peer) MB | $(verdict "$(peak_mb ours) < $(peak_mb peer)") |"
echo "| identical leaf labels, photolabel vs one-view peer | reported | $agreement % | |"
bad=$(cat "$work"/ours-*.txt "$work"/peer-*.txt | grep '^RESULT' | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^(non2xx|socket_errors)=/) {split($i, kv, "="); s += kv[2]}} END {print s + 0}')
[ "$bad" = 0 ] || echo "WARNING: $bad requests failed or got a status other than 2xx; see the errors column"
echo
echo "Report saved to $report" >&2
