#!/usr/bin/env python3
"""Pillow + ONNX Runtime reference for the Rust preprocessing and backbone.

Writes, under tests/fixtures/:
  - golden_embeddings.json: the backbone embedding of the Squash view (no
    flip) of the three golden photos, computed with Pillow preprocessing and
    ONNX Runtime, for the Rust engines to be compared against; and under
    "int8", the int8 backbone's embedding of the same Pillow pixels with
    ONNX Runtime's graph optimisations off, i.e. its quantise/dequantise
    arithmetic done in float: what the fused integer kernels of any CPU must
    reproduce (they did not on AVX2 CPUs without VNNI while the weights had
    8 bits; tools/quantize_backbone.py);
  - reference/*.png: the 260x260 RGB uint8 images Pillow produced, for the
    Rust preprocessing agreement tests (crates/vision/src/image/tests.rs);
  - bench/*.jpg: generated benchmark photos (tiled/upscaled fixtures, q=90);
  - formats/kitchen_cmyk.jpg: a small CMYK (Adobe) JPEG made from the kitchen photo,
    to check colour conversion of CMYK JPEGs against Pillow;
  - formats/old_layout_backbone.onnx: a tiny graph with the outputs of a backbone
    export before the mid-level context (embedding 1280 wide), which photolabel
    must refuse at load (needs `onnx` too).

Pinned versions this was run with: Pillow 13.0.0, numpy 2.4.6,
onnxruntime 1.32.0 (Python 3.11). Other versions may change the generated
bytes slightly; rerun and re-measure the Rust tolerances if you upgrade.

Tests do not run this script; its outputs are committed. Run from anywhere:
    python3 tools/reference_embeddings.py   # in a venv with the versions above

Rerun whenever a backbone in models/ changes (last: 2026-12-03, the int8
file requantised with 7-bit weights; only golden_embeddings.json changed).
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
PHOTOS = FIXTURES / "photos"
REFERENCE = FIXTURES / "reference"
BENCH = FIXTURES / "bench"
FORMATS = FIXTURES / "formats"
MODEL = ROOT / "models" / "efficientnet-lite2.onnx"
INT8_MODEL = ROOT / "models" / "efficientnet-lite2-int8.onnx"

SIZE = 260
GOLDEN = ["kitchen.jpg", "facade.jpg", "floorplan.jpg"]


def load_upright_rgb(path):
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def squash(im):
    return im.resize((SIZE, SIZE), Image.BICUBIC)


def centre_crop(im):
    # Crops the exact (fractional) centred square and resizes it in one step.
    return ImageOps.fit(im, (SIZE, SIZE), Image.BICUBIC)


def normalise(im):
    x = np.asarray(im, dtype=np.float32) / np.float32(255.0)
    x = (x - np.float32(0.498)) / np.float32(0.502)
    return x.transpose(2, 0, 1)[None, ...].astype(np.float32)  # NCHW


def make_bench():
    BENCH.mkdir(parents=True, exist_ok=True)
    # 1440x960: a 2x2 tiling of four listing photos, each upscaled 1.25x
    # (576x384 -> 720x480), so the content keeps photo-like detail.
    tiles = ["kitchen.jpg", "facade.jpg", "bathroom.jpg", "bedroom.jpg"]
    big = Image.new("RGB", (1440, 960))
    for i, name in enumerate(tiles):
        tile = load_upright_rgb(PHOTOS / name).resize((720, 480), Image.BICUBIC)
        big.paste(tile, ((i % 2) * 720, (i // 2) * 480))
    big.save(BENCH / "tiled_1440x960.jpg", quality=90)
    # 640x480: the kitchen upscaled to 720x480 and centre-cropped.
    kitchen = load_upright_rgb(PHOTOS / "kitchen.jpg").resize((720, 480), Image.BICUBIC)
    kitchen.crop((40, 0, 680, 480)).save(BENCH / "kitchen_640x480.jpg", quality=90)


def make_cmyk():
    FORMATS.mkdir(parents=True, exist_ok=True)
    # Small on purpose: CMYK JPEGs are not chroma-subsampled and grow fast.
    im = load_upright_rgb(PHOTOS / "kitchen.jpg").resize((144, 96), Image.BICUBIC)
    im.convert("CMYK").save(FORMATS / "kitchen_cmyk.jpg", quality=92)


def make_old_layout_backbone():
    """A tiny stand-in for a backbone export without the mid-level context:
    the right input, `embedding` [N, 1280] and `logits` [N, 1000], made of
    a mean and two constant matrices. photolabel must refuse it at load."""
    import onnx
    from onnx import TensorProto, helper

    ones = lambda name, cols: helper.make_tensor(name, TensorProto.FLOAT, [3, cols], [1.0] * (3 * cols))
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["rgb"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["rgb", "to_embedding"], ["embedding"]),
         helper.make_node("MatMul", ["rgb", "to_logits"], ["logits"])],
        "old_layout",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 260, 260])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 1280]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
        [ones("to_embedding", 1280), ones("to_logits", 1000)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, FORMATS / "old_layout_backbone.onnx")


def main():
    make_bench()
    make_cmyk()
    make_old_layout_backbone()
    REFERENCE.mkdir(parents=True, exist_ok=True)

    # Pillow's preprocessing, stored as the 8-bit images it produced.
    references = {
        "kitchen_squash.png": squash(load_upright_rgb(PHOTOS / "kitchen.jpg")),
        "facade_squash.png": squash(load_upright_rgb(PHOTOS / "facade.jpg")),
        "floorplan_squash.png": squash(load_upright_rgb(PHOTOS / "floorplan.jpg")),
        "kitchen_centre_crop.png": centre_crop(load_upright_rgb(PHOTOS / "kitchen.jpg")),
        "tiled_1440x960_squash.png": squash(load_upright_rgb(BENCH / "tiled_1440x960.jpg")),
        "kitchen_cmyk_squash.png": squash(load_upright_rgb(FORMATS / "kitchen_cmyk.jpg")),
    }
    for name, im in references.items():
        im.save(REFERENCE / name, optimize=True)

    # Both backbones see the same Pillow pixels that the PNGs above store,
    # which the Rust tests feed back through their own pipeline.
    model_sha256 = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    unfused = ort.InferenceSession(str(INT8_MODEL), options, providers=["CPUExecutionProvider"])
    photos, int8 = {}, {}
    for name in GOLDEN:
        png = f"{Path(name).stem}_squash.png"
        x = normalise(references[png])
        (embedding,) = session.run(["embedding"], {"input": x})
        photos[name] = [round(float(v), 6) for v in embedding.reshape(-1)]
        assert len(photos[name]) == 1608, name  # tools/add_context_features.py
        (embedding,) = unfused.run(["embedding"], {"input": x})
        int8[png] = [round(float(v), 6) for v in embedding.reshape(-1)]

    out = {
        "model_sha256": model_sha256,
        "preprocessing": "squash, Pillow BICUBIC, (x/255-0.498)/0.502",
        "photos": photos,
        "int8": {
            "model_sha256": hashlib.sha256(INT8_MODEL.read_bytes()).hexdigest(),
            "arithmetic": "QDQ graph unfused (ORT_DISABLE_ALL), on the reference/*_squash.png pixels",
            "photos": int8,
        },
    }
    (FIXTURES / "golden_embeddings.json").write_text(json.dumps(out) + "\n")
    for path in sorted(FIXTURES.rglob("*")):
        if path.is_file() and path.parent.name != "photos":
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
