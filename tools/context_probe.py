#!/usr/bin/env python3
"""The probe behind the mid-level context (issue 11; MODEL_CARD.md,
"Mid-level context"): does pooling earlier activations of the same backbone
pass help the heads?

1. `dump`: runs the fp32 backbone *before* tools/add_context_features.py
   (the graph with `embedding` [N, 1280]; `git show 8a80cf3:models/efficientnet-lite2.onnx`)
   over every photo of labels.csv (Pillow preprocessing of bench/peer/model.py,
   one upright view) and saves, per photo, the pooled last layer (`mean`), its
   spatial max (`max`), the means of its 2×2 quadrants (`grid`), the pooled
   inputs of blocks 14 and 20 (`b14`, `b20`) and the ImageNet logits.
   About 10 minutes on the 2-core VM.
2. `probe`: for each feature set (`mean`, `mean+b14+b20`, …) fits a
   logistic (or `mlp`) head per level on the train split outside the
   calibration hold-out (photolabel's rule: sha256(file name) % 100 < 15),
   picks the L2 strength by hold-out NLL, and prints the hold-out NLL and
   the accuracy on val and on each val_real source (given the true class
   above, as `photolabel eval` scores the room and scene levels).

    python3 tools/context_probe.py dump OLD_BACKBONE.onnx ../shared/data/labels.csv OUT.npz
    python3 tools/context_probe.py probe ../shared/data/labels.csv OUT.npz mean:lr mean+b14+b20:lr mean:mlp

Needs numpy, pillow, onnx, onnxruntime==1.32.0 and scikit-learn. Not run by
tests; a study, not the product (the product's heads are `photolabel train`'s).
"""
import csv
import hashlib
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench", "peer"))

IMG = ["indoor", "outdoor", "other"]
ROOM = ["living_room", "kitchen", "bathroom", "bedroom", "other_room"]
SCENE = ["facade", "view", "street", "balcony-garden", "building_part", "no_building"]


def dump(backbone, labels, out):
    import onnx

    m = onnx.load(backbone)
    tensors = {}
    for node in m.graph.node:
        for block in (14, 20):
            if node.op_type == "Conv" and node.name.startswith(f"/_blocks.{block}/_expand_conv/"):
                tensors[f"b{block}"] = node.input[0]
    tensors["fmap"] = "/_swish_1/Clip_output_0"
    for name in tensors.values():
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = session_of(m)
    rows = list(csv.DictReader(open(labels)))
    names = ["embedding", "logits", tensors["b14"], tensors["b20"], tensors["fmap"]]
    n = len(rows)
    feats = {}
    ok = np.zeros(n, bool)
    for i, x in each_photo(labels, rows):
        emb, logits, b14, b20, fmap = session.run(names, {"input": x})
        h = fmap.shape[2] // 2 + 1
        parts = {
            "mean": emb[0], "logits": logits[0], "max": fmap[0].max(axis=(1, 2)),
            "grid": np.concatenate([fmap[0, :, :h, :h].mean((1, 2)), fmap[0, :, :h, -h:].mean((1, 2)),
                                    fmap[0, :, -h:, :h].mean((1, 2)), fmap[0, :, -h:, -h:].mean((1, 2))]),
            "b14": b14[0].mean((1, 2)), "b20": b20[0].mean((1, 2)),
        }
        for k, v in parts.items():
            feats.setdefault(k, np.zeros((n, v.shape[0]), np.float32))[i] = v
        ok[i] = True
    np.savez(out, ok=ok, **feats)


def session_of(m):
    """An onnxruntime session (2 threads) on the ONNX model `m`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(m.SerializeToString(), options)


def each_photo(labels, rows):
    """(row index, [1, 3, 260, 260] input) for each photo of `rows`, in
    order, with progress on stderr. An unreadable photo is left out, as
    photolabel does."""
    from model import prepare

    base = os.path.dirname(labels)
    start = time.time()
    for i, row in enumerate(rows):
        try:
            x = prepare(open(os.path.join(base, row["path"]), "rb").read())[None]
        except Exception as e:
            print("skip", row["path"], e, file=sys.stderr)
            continue
        yield i, x
        if i % 1000 == 999:
            print(f"{i + 1}/{len(rows)} photos, {time.time() - start:.0f} s", file=sys.stderr, flush=True)


def in_holdout(path):
    name = path.rsplit("/", 1)[-1]
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 100 < 15


def level_labels(rows, level):
    y = np.full(len(rows), -1)
    for i, r in enumerate(rows):
        if level == "image":
            y[i] = IMG.index(r["image_class"])
        elif level == "room" and r["image_class"] == "indoor" and r["room_class"]:
            y[i] = ROOM.index(r["room_class"])
        elif level == "scene" and r["image_class"] == "outdoor" and r["scene_class"]:
            y[i] = SCENE.index(r["scene_class"])
    return y


def probe(labels, dumped, specs):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    rows = list(csv.DictReader(open(labels)))
    data = np.load(dumped)
    ok = data["ok"]
    split = np.array([r["split"] for r in rows])
    source = np.array([r["source"] for r in rows])
    holdout = np.array([in_holdout(r["path"]) for r in rows])
    train = (split == "train") & ok
    groups = [("val", split == "val")] + [
        (s, (split == "val_real") & (source == s)) for s in ("es_gray", "vn_listings_dev", "zind_empty_home")]
    for spec in specs:
        features, kind = spec.split(":")
        parts = []
        for p in features.split("+"):
            x = data[p]
            if p == "logits":  # log-probabilities, as tools/head_levers.py
                x = x - x.max(1, keepdims=True)
                x = x - np.log(np.exp(x).sum(1, keepdims=True))
            parts.append(x)
        x = np.concatenate(parts, 1)
        z = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
        for level in ("image", "room", "scene"):
            y = level_labels(rows, level)
            fit, cal = train & ~holdout & (y >= 0), train & holdout & (y >= 0)
            best = None
            for strength in ((0.1, 1.0) if kind == "mlp" else (0.03, 0.1, 0.3)):
                if kind == "mlp":
                    model = MLPClassifier((512,), alpha=strength, early_stopping=True, random_state=0, max_iter=200)
                else:
                    model = LogisticRegression(C=strength * 100 / fit.sum(), max_iter=300)
                model.fit(z[fit], y[fit])
                p = model.predict_proba(z[cal])
                nll = -np.log(p[np.arange(cal.sum()), y[cal]] + 1e-12).mean()
                if best is None or nll < best[0]:
                    best = (nll, strength, model)
            nll, strength, model = best
            scores = {name: round(float((model.predict(z[m & ok & (y >= 0)]) == y[m & ok & (y >= 0)]).mean()), 4)
                      for name, m in groups if (m & ok & (y >= 0)).any()}
            print(f"{spec} {level}: strength {strength}, hold-out NLL {nll:.4f}, accuracy {scores}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "dump":
        dump(*sys.argv[2:])
    elif len(sys.argv) >= 5 and sys.argv[1] == "probe":
        probe(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        raise SystemExit(__doc__)
