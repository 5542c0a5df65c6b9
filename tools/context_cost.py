#!/usr/bin/env python3
"""Engine-only cost of the mid-level context (BENCHMARKS.md, "Issue 11: the
mid-level context"): a backbone before tools/add_context_features.py against
the same backbone after it, in one process, alternating rounds of 50
inferences of the kitchen fixture on one thread (what each of `serve`'s
replicas runs on under load), batch 1.

    python3 tools/context_cost.py BEFORE.onnx AFTER.onnx [ROUNDS]

e.g. with `git show 8a80cf3:models/efficientnet-lite2-int8.onnx > /tmp/before.onnx`
and `models/efficientnet-lite2-int8.onnx`. Needs numpy, pillow and
onnxruntime==1.32.0.
"""
import os
import sys
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "bench", "peer"))
from model import prepare  # noqa: E402


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def main():
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    rounds = int(sys.argv[3]) if len(sys.argv) == 4 else 6
    x = prepare(open(os.path.join(ROOT, "tests/fixtures/photos/kitchen.jpg"), "rb").read())[None]
    sessions = {"before": session(sys.argv[1]), "after": session(sys.argv[2])}
    times = {name: [] for name in sessions}
    for s in sessions.values():
        for _ in range(10):
            s.run(None, {"input": x})
    for _ in range(rounds):
        for name, s in sessions.items():
            start = time.perf_counter()
            for _ in range(50):
                s.run(None, {"input": x})
            times[name].append((time.perf_counter() - start) / 50 * 1000)
    for name, t in times.items():
        print(f"{name}: median {np.median(t):.2f} ms per inference (rounds {', '.join(f'{v:.2f}' for v in t)})")


if __name__ == "__main__":
    main()
