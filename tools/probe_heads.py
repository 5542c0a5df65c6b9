"""Head-type study on cached embeddings (not used by the product or tests).

Reads the embedding cache that `photolabel train --cache .cache/emb` writes
(records: u32 key length, key, u32 view count, views × 1608 f32) and fits
scikit-learn heads on the train split minus the calibration hold-out (the
same sha256 rule as crates/vision/src/train.rs), printing hold-out NLL and
accuracy (what a choice may be based on) and val accuracy (for the record).

    python3 -m venv .cache/probe && .cache/probe/bin/pip install numpy scikit-learn
    .cache/probe/bin/python tools/probe_heads.py .cache/emb/<sha16>-squash-flip-views.emb MODE KINDS

MODE: mean (views averaged), noflip (first view only), aug (each view a
training row). KINDS, comma-separated: lr (logistic regression), mlp (one
hidden layer of 512), flat (image class as the sum of a 14-class fine head).
"""
import csv
import hashlib
import os
import struct
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

DIM = 1608  # 1280 before tools/add_context_features.py
LABELS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "labels.csv")
ROOMS = {"living_room", "kitchen", "bathroom", "bedroom", "other_room", "indoor_unmapped"}


def read_cache(path):
    out, data, i = {}, open(path, "rb").read(), 0
    while i + 4 <= len(data):
        (n,) = struct.unpack("<I", data[i : i + 4])
        key = data[i + 4 : i + 4 + n].decode()
        (views,) = struct.unpack("<I", data[i + 4 + n : i + 8 + n])
        i += 8 + n
        if i + views * DIM * 4 > len(data):
            break
        out[key.split("\0")[0]] = np.frombuffer(data[i : i + views * DIM * 4], "<f4").reshape(views, DIM)
        i += views * DIM * 4
    return out


def in_holdout(name):
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % 100 < 15


def main(cache_path, mode, kinds):
    cache = read_cache(cache_path)
    rows = [r for r in csv.DictReader(open(LABELS)) if r["path"] in cache]
    views = np.stack([cache[r["path"]] for r in rows])
    x = views[:, 0] if mode == "noflip" else views.mean(1)
    split = np.array([r["split"] for r in rows])
    hold = np.array([in_holdout(os.path.basename(r["path"])) for r in rows])
    fit, cal, val = (split == "train") & ~hold, (split == "train") & hold, split == "val"
    scaler = StandardScaler().fit(x[fit])
    z = scaler.transform(x)

    def fit_rows(mask, y):
        if mode != "aug":
            return z[mask], y[mask]
        zs = [scaler.transform(views[mask, v]) for v in range(views.shape[1])]
        return np.concatenate(zs), np.concatenate([y[mask]] * len(zs))

    def report(name, variant, clf, y, b, c, proba=None):
        p = clf.predict_proba(z[b]) if proba is None else proba(b)
        classes = clf.classes_ if proba is None else np.array(["indoor", "other", "outdoor"])
        pred_c = (clf.predict(z[c]) if proba is None else classes[proba(c).argmax(1)])
        print(f"{mode} {name:6} {variant:16} holdout NLL {log_loss(y[b], p, labels=classes):.4f} "
              f"acc {(classes[p.argmax(1)] == y[b]).mean():.4f}  val acc {(pred_c == y[c]).mean():.4f}", flush=True)

    image = np.array([r["image_class"] for r in rows])
    levels = {
        "image": (image, np.ones(len(rows), bool)),
        "room": (np.array([r["room_class"] for r in rows]), np.array([r["image_class"] == "indoor" and r["room_class"] != "" for r in rows])),
        "scene": (np.array([r["scene_class"] for r in rows]), np.array([r["image_class"] == "outdoor" and r["scene_class"] != "" for r in rows])),
    }
    for name, (y, m) in levels.items():
        a, b, c = fit & m, cal & m, val & m
        if "lr" in kinds:
            for C in [0.001, 0.003, 0.01, 0.03, 0.1]:
                report(name, f"lr C={C:g}", LogisticRegression(C=C, max_iter=3000).fit(*fit_rows(a, y)), y, b, c)
        if "mlp" in kinds:
            for alpha in [0.3, 1.0, 3.0, 10.0]:
                clf = MLPClassifier(hidden_layer_sizes=(512,), alpha=alpha, max_iter=200, random_state=0)
                report(name, f"mlp a={alpha:g}", clf.fit(*fit_rows(a, y)), y, b, c)
    if "flat" in kinds:
        fine = np.array([
            (r["room_class"] or "indoor_unmapped") if r["image_class"] == "indoor"
            else (r["scene_class"] or "outdoor_unmapped") if r["image_class"] == "outdoor" else "other"
            for r in rows])
        for C in [0.001, 0.003, 0.01]:
            clf = LogisticRegression(C=C, max_iter=3000).fit(*fit_rows(fit, fine))
            indoor = np.array([k in ROOMS for k in clf.classes_])
            other = clf.classes_ == "other"

            def proba(mask):
                p = clf.predict_proba(z[mask])
                p_in, p_other = p[:, indoor].sum(1), p[:, other].sum(1)
                return np.stack([p_in, p_other, 1 - p_in - p_other], 1)

            report("image", f"flat C={C:g}", clf, image, cal, val, proba)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3].split(","))
