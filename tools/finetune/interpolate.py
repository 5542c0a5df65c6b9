#!/usr/bin/env python3
"""Weight-space interpolation of fine-tuned backbones with the ImageNet start.

    python3 tools/finetune/interpolate.py --base IMAGENET.onnx --alpha 0.3 --out X.onnx FT_A.onnx [FT_B.onnx ...]

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


def conv_initializers(model):
    """Names of (weight, bias) of each Conv node, in graph order."""
    return [(n.input[1], n.input[2]) for n in model.graph.node if n.op_type == "Conv"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("finetuned", nargs="+", help="fine-tuned ONNX files (finetune.py's export)")
    ap.add_argument("--alpha", type=float, required=True, help="0 = base, 1 = (mean of the) fine-tune(s)")
    ap.add_argument("--base", required=True, help="the ImageNet ONNX the fine-tunes started from")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    base = onnx.load(args.base)
    inits = {i.name: i for i in base.graph.initializer}
    names = conv_initializers(base)
    fts = [onnx.load(p) for p in args.finetuned]
    ft_arrays = []
    for path, ft in zip(args.finetuned, fts):
        ft_inits = {i.name: numpy_helper.to_array(i) for i in ft.graph.initializer}
        ft_names = conv_initializers(ft)
        if len(ft_names) != len(names):
            raise SystemExit(f"{path}: {len(ft_names)} Conv nodes, base has {len(names)}")
        for k in ("net._fc.weight", "net._fc.bias"):
            if not np.array_equal(ft_inits[k], numpy_helper.to_array(inits[k])):
                raise SystemExit(f"{path}: {k} differs from the base")
        ft_arrays.append([(ft_inits[w], ft_inits[b]) for w, b in ft_names])

    moved = 0.0
    for i, (wn, bn) in enumerate(names):
        for j, name in enumerate((wn, bn)):
            b0 = numpy_helper.to_array(inits[name]).astype(np.float32)
            tuned = [a[i][j].astype(np.float32) for a in ft_arrays]
            if any(t.shape != b0.shape for t in tuned):
                raise SystemExit(f"Conv {i}: shapes differ from the base")
            mean = np.mean(tuned, axis=0)
            new = (b0 + np.float32(args.alpha) * (mean - b0)).astype(np.float32)
            moved = max(moved, float(np.abs(new - b0).max()))
            inits[name].CopyFrom(numpy_helper.from_array(new, name))
    onnx.checker.check_model(base)
    onnx.save(base, args.out)
    print(f"{args.out}: alpha {args.alpha}, {len(fts)} fine-tune(s), {len(names)} convolutions, "
          f"largest change {moved:.4g}, sha256 {common.sha256(args.out)}")


if __name__ == "__main__":
    main()
