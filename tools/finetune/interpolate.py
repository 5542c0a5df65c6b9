#!/usr/bin/env python3
"""Weight-space interpolation of fine-tuned backbones with the ImageNet start.

    python3 tools/finetune/interpolate.py --base IMAGENET.onnx --alpha 0.3 --out X.onnx FT_A [FT_B ...]

Each FT is a fine-tune's ONNX export or the delta file (.npz) that finetune.py
returns since issue 11 (common.conv_delta: the change of every folded
convolution against the same base).

Writes base + alpha * (mean(FT) - base) for every convolution's weight and
bias, where base is the ImageNet export the fine-tunes started from
(tools/export_backbone.py; sha256 80e15a54..., in git as
`git show c6270f1:models/efficientnet-lite2.onnx`): alpha = 1 with one file is
that fine-tune, with several their average (a "model soup", Wortsman et al.
2022); alpha < 1 moves it back towards the ImageNet weights (WiSE-FT,
Wortsman et al. 2022), which keeps what fine-tuning gained on the training
distribution while losing less of the start's generality.

The interpolation is of the ONNX's folded convolutions (BatchNorm already
folded in, W' = W*gamma/sqrt(var+eps)), i.e. of each layer's effective affine
map, not of the raw weights and BatchNorm statistics separately. The graph is
the base file's, so the result has exactly its interface (and runs wherever the
base runs); the ImageNet `_fc` (output `logits`) is kept and must be identical
in every input. Needs numpy and onnx only.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("finetuned", nargs="+", help="fine-tunes: ONNX exports or finetune.py's delta.npz files")
    ap.add_argument("--alpha", type=float, required=True, help="0 = base, 1 = (mean of the) fine-tune(s)")
    ap.add_argument("--base", required=True, help="the ImageNet ONNX the fine-tunes started from")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    base = onnx.load(args.base)
    inits = {i.name: i for i in base.graph.initializer}
    names = common.conv_initializers(base)
    ft_arrays = []
    for path in args.finetuned:
        try:
            ft_arrays.append(common.tuned_convs(base, path))
        except ValueError as e:
            raise SystemExit(str(e))

    moved = 0.0
    new = []
    for i, pair in enumerate(names):
        arrays = []
        for j, name in enumerate(pair):
            b0 = numpy_helper.to_array(inits[name]).astype(np.float32)
            mean = np.mean([a[i][j] for a in ft_arrays], axis=0)  # shapes checked by tuned_convs
            arrays.append((b0 + np.float32(args.alpha) * (mean - b0)).astype(np.float32))
            moved = max(moved, float(np.abs(arrays[-1] - b0).max()))
        new.append(tuple(arrays))
    common.with_convs(base, new)
    onnx.checker.check_model(base)
    onnx.save(base, args.out)
    print(f"{args.out}: alpha {args.alpha}, {len(ft_arrays)} fine-tune(s), {len(names)} convolutions, "
          f"largest change {moved:.4g}, sha256 {common.sha256(args.out)}")


if __name__ == "__main__":
    main()
