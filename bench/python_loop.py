"""The plainest Python a team would write instead of `photolabel label`:
a loop over the files, Pillow with JPEG `draft`, onnxruntime on every core,
photolabel's fp32 backbone and heads, one backbone pass per photo
(bench/peer/model.py). scripts/bench.sh times it side by side with
`photolabel label`.

  python bench/python_loop.py [--views 1|2] [--backbone F] [--heads F] PHOTO... > out.jsonl

Writes one JSON line per photo, `{"path": …, "Output": {…}}` like
`photolabel label --format jsonl`, or `{"path": …, "error": …}`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "peer"))
from model import Model, prepare  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", type=Path, default=ROOT / "models/efficientnet-lite2.onnx")
    parser.add_argument("--heads", type=Path, default=ROOT / "models/heads.json")
    parser.add_argument("--views", type=int, choices=(1, 2), default=1)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: every core)")
    parser.add_argument("photos", type=Path, nargs="+")
    args = parser.parse_args()
    model = Model(args.backbone, args.heads, threads=args.threads, views=args.views)
    out = sys.stdout
    for path in args.photos:
        try:
            record = {"path": str(path), **model.label(prepare(path.read_bytes()))}
        except Exception as e:  # one bad file must not stop the loop
            record = {"path": str(path), "error": str(e)}
        out.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
