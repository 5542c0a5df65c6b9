#!/usr/bin/env bash
# The device run. From the repository root, with carry [".carry/finetune"]:
#   bash tools/finetune/run_on_device.sh
# Trains three fine-tunes from the same ImageNet start, with the real listing
# photos and their degradations (issue 11): A (seed 0, the defaults) and B
# (seed 1, a little more training, listing and Houses photos three times an
# epoch), whose weight average ("model soup") and its interpolations with the
# start (WiSE-FT) are measured here afterwards (tools/finetune/after_device.py);
# and C, A with the 2026-11-28 augmentation (--augment mild), to measure what
# the degradations do. Returns each run's delta.npz (the change of every folded
# convolution, ~12 MB), one SHA256SUMS and logs.tar.gz (logs, console output,
# torch heads): 5 files, within the 8 files and 64 MiB that come back from
# $OUT. Each run's loop is capped at 2 minutes, so the three end well inside a
# call's 10.
# Extra arguments are appended to every run (later ones win), e.g. a CPU test:
#   OUT=/tmp/ftout bash tools/finetune/run_on_device.sh --device cpu --limit 64 --minutes 0.5 --batch 16 --threads 1
set -uo pipefail
: "${OUT:?OUT must be set}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
du -sb .carry/finetune 2>/dev/null || true
work=$(mktemp -d)
rc=0
run() {  # name, finetune.py arguments...
  local name=$1; shift
  mkdir -p "$work/$name"
  python3 -W ignore tools/finetune/finetune.py --data .carry/finetune --out "$work/$name" \
    --minutes 2 "$@" 2>&1 | tee "$work/$name/finetune_stdout.txt"
  local r=${PIPESTATUS[0]}
  [ "$r" = 0 ] || rc=$r
  # the convolutions' change, or where the export failed the fp16 weights (see README)
  for f in delta.npz backbone_ft_fp16.pt; do
    [ -e "$work/$name/$f" ] && mv "$work/$name/$f" "$OUT/$name-$f"
  done
  [ -e "$work/$name/SHA256SUMS" ] && sed "s/  /  $name-/" "$work/$name/SHA256SUMS" >>"$OUT/SHA256SUMS"
}
run A --seed 0 "$@"
run B --seed 1 --epochs 12 --houses-repeat 3 --listing-repeat 3 "$@"
run C --seed 0 --augment mild "$@"
tar -C "$work" -czf "$OUT/logs.tar.gz" .
ls -l "$OUT"
exit "$rc"
