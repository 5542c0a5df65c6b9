#!/usr/bin/env bash
# The device run. From the repository root, with carry [".carry/finetune"]:
#   bash tools/finetune/run_on_device.sh
# Extra arguments are appended to finetune.py's (later ones win), e.g. a CPU test:
#   OUT=/tmp/ftout bash tools/finetune/run_on_device.sh --device cpu --limit 64 --minutes 0.5 --batch 16 --threads 1
set -uo pipefail
: "${OUT:?OUT must be set}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
du -sb .carry/finetune 2>/dev/null || true
python3 -W ignore tools/finetune/finetune.py --data .carry/finetune --out "$OUT" --minutes 3.5 "$@" 2>&1 \
  | tee "$OUT/finetune_stdout.txt"
rc=${PIPESTATUS[0]}
ls -l "$OUT"
exit "$rc"
