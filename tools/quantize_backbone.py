"""Static int8 quantisation of the backbone (issue 16; issue 4 tried it first).

    python3 -m venv .cache/quant && .cache/quant/bin/pip install onnxruntime==1.32.0 onnx==1.23.2 numpy pillow
    .cache/quant/bin/python tools/quantize_backbone.py models/efficientnet-lite2.onnx /tmp/lite2-int8.onnx \
        [--photos 1200] [--method percentile|entropy|minmax] [--fp32 stem,depthwise,head]

What issue 4's first attempt (300 random train photos, min-max ranges) did
differently, and why:
- Calibration on --photos (default 1,200) photos of the `train` split of
  ../shared/data (never val or val_real), a third of them from the real
  listing sources (es_gray, vn_listings_dev, zind_empty_home, Houses), so the
  activation ranges cover the photos the product is for, not only Places.
- Percentile ranges (99.999 % of a 2,048-bin histogram) by default instead of
  min-max: one extreme activation no longer stretches a tensor's scale and
  crushes its common values into a few int8 steps. `entropy` (KL) is there
  to compare.
- Per-channel int8 weights, uint8 activations, QDQ format.
- Weights on 7 bits (`reduce_range`), since 2026-12-03. On an x86 CPU
  without VNNI (AVX2 only, e.g. the AMD EPYC VMs CI also runs on) ONNX
  Runtime multiplies uint8 activations by int8 weights with VPMADDUBSW,
  whose int16 pair sums saturate once |weight| > 64: the fused graph then
  drifts from its own QDQ arithmetic (embedding cosine 0.87 on average on
  21 val_real photos) and the labels depend on the CPU (val image 0.942 on
  the Xeon with VNNI, 0.925 on the EPYC). With 7-bit weights no pair sum can
  saturate, so every CPU computes the same integers; what is left against
  the float QDQ arithmetic is requantisation rounding (cosine ≥ 0.9998).
- --fp32 leaves the accuracy-sensitive convolutions unquantised: `stem` (the
  first 3×3, which sees raw pixels), `depthwise` (the 21 depthwise 3×3s,
  whose per-channel ranges differ most), `head` (the last 1×1, whose output
  pooled is the embedding the heads read) and `classifier` (the ImageNet
  Gemm). Each one kept costs speed; BENCHMARKS.md has what each variant did.

Photos are preprocessed as the product does for its first view (whole photo
squashed to 260×260, bicubic, (x/255 − 0.498)/0.502); every other photo is
also mirrored, as the second view is. Calibration runs in chunks of 50
photos (`CalibStridedMinMax`, which despite its name chunks any method), so
memory stays at a few GB. About 10 minutes on the 2-core machine.
"""
import argparse
import csv
import os
import random
import tempfile

import numpy as np
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
LISTING_SOURCES = {"es_gray", "vn_listings_dev", "zind_empty_home", "houses_dataset"}
CHUNK = 50


def tensor(path, mirror):
    img = Image.open(path).convert("RGB").resize((260, 260), Image.BICUBIC)
    x = (np.asarray(img, np.float32) / 255.0 - 0.498) / 0.502
    x = x.transpose(2, 0, 1)
    if mirror:
        x = x[:, :, ::-1]
    return np.ascontiguousarray(x[None])


def calibration_rows(count, seed=0):
    """A third from the real-listing sources, the rest from the others."""
    rows = [r for r in csv.DictReader(open(os.path.join(DATA, "labels.csv"))) if r["split"] == "train"]
    rng = random.Random(seed)
    listing = [r for r in rows if r["source"] in LISTING_SOURCES]
    others = [r for r in rows if r["source"] not in LISTING_SOURCES]
    rng.shuffle(listing)
    rng.shuffle(others)
    take = min(len(listing), count // 3)
    chosen = listing[:take] + others[:count - take]
    rng.shuffle(chosen)
    return chosen


class Photos(CalibrationDataReader):
    def __init__(self, input_name, rows):
        self.input_name = input_name
        self.rows = rows
        self.set_range(0, len(rows))

    def __len__(self):
        return len(self.rows)

    def set_range(self, start_index, end_index):
        self.items = iter(range(start_index, min(end_index, len(self.rows))))

    def get_next(self):
        i = next(self.items, None)
        if i is None:
            return None
        return {self.input_name: tensor(os.path.join(DATA, self.rows[i]["path"]), mirror=i % 2 == 1)}


def excluded_nodes(model, keep):
    names = []
    for node in model.graph.node:
        if node.op_type == "Gemm" and "classifier" in keep:
            names.append(node.name)
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if ("stem" in keep and "_conv_stem" in node.name) or ("head" in keep and "_conv_head" in node.name) \
                or ("depthwise" in keep and group > 1):
            names.append(node.name)
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--photos", type=int, default=1200)
    parser.add_argument("--method", choices=["percentile", "entropy", "minmax"], default="percentile")
    parser.add_argument("--percentile", type=float, default=99.999)
    parser.add_argument("--fp32", default="", help="comma-separated: stem, depthwise, head, classifier")
    args = parser.parse_args()
    import onnx

    keep = {k for k in args.fp32.split(",") if k}
    unknown = keep - {"stem", "depthwise", "head", "classifier"}
    if unknown:
        parser.error(f"unknown --fp32 parts {sorted(unknown)}")
    rows = calibration_rows(args.photos)
    count = len(rows) - len(rows) % CHUNK
    rows = rows[:count]
    with tempfile.TemporaryDirectory() as tmp:
        prepped = os.path.join(tmp, "pre.onnx")
        quant_pre_process(args.src, prepped, skip_symbolic_shape=True)
        model = onnx.load(prepped)
        exclude = excluded_nodes(model, keep)
        method = {"percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy,
                  "minmax": CalibrationMethod.MinMax}[args.method]
        quantize_static(
            prepped,
            args.dst,
            Photos(model.graph.input[0].name, rows),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            reduce_range=True,
            nodes_to_exclude=exclude,
            extra_options={"CalibStridedMinMax": CHUNK, "CalibPercentile": args.percentile},
        )
    sources = {}
    for r in rows:
        sources[r["source"]] = sources.get(r["source"], 0) + 1
    print(f"wrote {args.dst}: {args.method} ranges on {len(rows)} train photos {sources}; "
          f"{len(exclude)} nodes left in fp32 ({args.fp32 or 'none'})")


if __name__ == "__main__":
    main()
