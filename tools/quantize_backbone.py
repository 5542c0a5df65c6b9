"""Static int8 quantisation of the backbone (issue 4's experiment).

    python3 -m venv .cache/quant && .cache/quant/bin/pip install onnxruntime==1.32.0 onnx numpy pillow
    .cache/quant/bin/python tools/quantize_backbone.py models/efficientnet-lite2.onnx /tmp/lite2-int8.onnx

Calibrates on 300 photos of the `train` split of ../shared/data (never val),
preprocessed like the product's heads expect (whole photo squashed to
260×260, bicubic, (x/255 − 0.498)/0.502, plus the mirrored view), and writes
a QDQ model with per-channel int8 weights. The result is measured with
`photolabel bench --backbone` and, for accuracy, heads retrained on it
(`photolabel train --backbone … --out …`, then `photolabel eval --backbone …
--heads …`); see BENCHMARKS.md for the outcome.
"""
import csv
import os
import random
import sys

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def tensor(path):
    img = Image.open(path).convert("RGB").resize((260, 260), Image.BICUBIC)
    x = (np.asarray(img, np.float32) / 255.0 - 0.498) / 0.502
    x = x.transpose(2, 0, 1)
    return np.stack([x, x[:, :, ::-1]])


class Photos(CalibrationDataReader):
    def __init__(self, input_name, count=300):
        rows = [r for r in csv.DictReader(open(os.path.join(DATA, "labels.csv"))) if r["split"] == "train"]
        random.Random(0).shuffle(rows)
        self.items = iter([{input_name: tensor(os.path.join(DATA, r["path"]))} for r in rows[:count]])

    def get_next(self):
        return next(self.items, None)


def main(src, dst):
    import onnx

    prepped = dst + ".pre.onnx"
    quant_pre_process(src, prepped, skip_symbolic_shape=True)
    input_name = onnx.load(prepped).graph.input[0].name
    quantize_static(
        prepped,
        dst,
        Photos(input_name),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    os.remove(prepped)
    print("wrote", dst)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
