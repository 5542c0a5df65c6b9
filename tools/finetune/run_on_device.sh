#!/usr/bin/env bash
# The device run. From the repository root, with carry [".carry/finetune"]:
#   bash tools/finetune/run_on_device.sh
# Trains two fine-tunes from the same ImageNet start (A: the recipe of the first
# run; B: another seed, a little more training) so that their weight averages
# ("model soups") and their interpolations with the start (WiSE-FT) can be
# measured here afterwards (tools/finetune/interpolate.py). Returns both ONNX
# files in 15 MiB parts, one SHA256SUMS and logs.tar.gz (logs, console output,
# torch heads) — 6 files, within the 8 that come back from $OUT.
# Extra arguments are appended to both runs (later ones win), e.g. a CPU test:
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
    --minutes 2.5 "$@" 2>&1 | tee "$work/$name/finetune_stdout.txt"
  local r=${PIPESTATUS[0]}
  [ "$r" = 0 ] || rc=$r
  # the ONNX, or where its export failed the fp32 weights (see README)
  for p in "$work/$name"/efficientnet-lite2-ft.onnx.part* "$work/$name"/backbone_ft_fp32.pt.part*; do
    [ -e "$p" ] && mv "$p" "$OUT/$name-$(basename "$p")"
  done
  [ -e "$work/$name/SHA256SUMS" ] && sed "s/  /  $name-/" "$work/$name/SHA256SUMS" >>"$OUT/SHA256SUMS"
  rm -f "$work/$name"/backbone_ft_fp16.pt
}
run A --seed 0 "$@"
run B --seed 1 --epochs 12 --houses-repeat 3 "$@"
tar -C "$work" -czf "$OUT/logs.tar.gz" .
ls -l "$OUT"
exit "$rc"
