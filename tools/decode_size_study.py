"""Issue 16, lever 3: what a smaller working size than 260 px does to
accuracy and time (a study tool: the product never runs it).

    .cache/quant/bin/python tools/decode_size_study.py [--sizes 260,224] [--out .cache/size-study]

For each size S it runs the photos of ../shared/data/labels.csv (every val
and val_real one, and --train-photos of train drawn at random, to keep it
to about 10 minutes on 2 cores) through the
same pipeline the Python peers use (bench/peer/model.py): Pillow with JPEG
`draft` at S (the DCT scale that just covers S on the short side), the
whole photo squashed to S×S (bicubic), photolabel's fp32 backbone with its
input made size-free, one view. It then fits the image, room and scene
heads the way `photolabel train` does (standardised features, L2 softmax
regression, L2 chosen by hold-out log-loss on the same sha256 hold-out of
the train split, refit on all train rows) and prints accuracy on val,
val_real per source, and the photos the issue names for the lever, the
vn_listings_dev and Houses ones of val and val_real (it expected a short
side ≥ 480; it prints how many have one). Time is measured on those photos
after the embedding, three rounds per size: decode + resize ms and backbone
ms per photo, median, batch 1, ONNX Runtime on every core. Both sizes go through the identical code, so
the difference between them is the lever's effect, not a port's.

Embeddings are kept under --out (one .npy per size) so a rerun only refits.
"""
import argparse
import csv
import hashlib
import io
import os
import random
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "bench", "peer"))
from model import prepare  # noqa: E402  (the peers' own pipeline, at any size)
DATA = os.path.join(ROOT, "..", "shared", "data")
LARGE_SOURCES = {"vn_listings_dev", "houses_dataset"}


def short_side(data):
    with Image.open(io.BytesIO(data)) as image:
        return min(image.size)


def session():
    model = onnx.load(os.path.join(ROOT, "models", "efficientnet-lite2.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def embed(rows, size, out):
    path = os.path.join(out, f"{size}-{len(rows)}.npz")
    if os.path.exists(path):
        saved = np.load(path)
        return saved["embeddings"], saved["short"]
    sess = session()
    embeddings = None
    short = np.zeros(len(rows), np.int32)
    start = time.time()
    for i, r in enumerate(rows):
        data = open(os.path.join(DATA, r["path"]), "rb").read()
        pixels, short[i] = prepare(data, size), short_side(data)
        (embedding,) = sess.run(["embedding"], {"input": pixels[None]})[0]
        if embeddings is None:  # the backbone's width: 1608 since the mid-level context
            embeddings = np.zeros((len(rows), embedding.shape[0]), np.float32)
        embeddings[i] = embedding
        if i % 1000 == 999:
            print(f"  {size} px: {i + 1}/{len(rows)} photos, {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    np.savez(path, embeddings=embeddings, short=short)
    return embeddings, short


def in_holdout(name):
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % 100 < 15


def fit_head(z, y, fit, hold):
    """L2 chosen on the hold-out by log-loss, then refit on all train rows."""
    best = None
    for c in (0.003, 0.01, 0.03, 0.1):
        clf = LogisticRegression(C=c, max_iter=2000).fit(z[fit], y[fit])
        loss = log_loss(y[hold], clf.predict_proba(z[hold]), labels=clf.classes_)
        if best is None or loss < best[0]:
            best = (loss, c)
    return LogisticRegression(C=best[1], max_iter=2000).fit(z[fit | hold], y[fit | hold])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="260,224")
    parser.add_argument("--out", default=os.path.join(ROOT, ".cache", "size-study"))
    parser.add_argument("--train-photos", type=int, default=4500,
                        help="train rows to fit on, drawn at random (seed 0)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = list(csv.DictReader(open(os.path.join(DATA, "labels.csv"))))
    train = [r for r in rows if r["split"] == "train"]
    random.Random(0).shuffle(train)
    rows = [r for r in rows if r["split"] != "train"] + train[:args.train_photos]
    split = np.array([r["split"] for r in rows])
    source = np.array([r["source"] for r in rows])
    hold = np.array([in_holdout(os.path.basename(r["path"])) for r in rows]) & (split == "train")
    fit = (split == "train") & ~hold
    image = np.array([r["image_class"] for r in rows])
    room = np.array([r["room_class"] for r in rows])
    scene = np.array([r["scene_class"] for r in rows])
    has_room = (image == "indoor") & (room != "")
    has_scene = (image == "outdoor") & (scene != "")

    timed = []
    for size in map(int, args.sizes.split(",")):
        x, short = embed(rows, size, args.out)
        z = StandardScaler().fit(x[fit]).transform(x)
        heads = {
            "image": fit_head(z, image, fit, hold),
            "room": fit_head(z, room, fit & has_room, hold & has_room),
            "scene": fit_head(z, scene, fit & has_scene, hold & has_scene),
        }
        pred_image = heads["image"].predict(z)
        pred_room = heads["room"].predict(z)
        pred_scene = heads["scene"].predict(z)
        # Leaf: the image class right, and the room or scene too where the
        # photo has one (close to `photolabel eval`'s leaf, which also scores
        # the subclass and leaves out photos without a room or scene label).
        leaf = (pred_image == image) & np.where(has_room, pred_room == room, True) \
            & np.where(has_scene, pred_scene == scene, True)
        large = np.isin(source, list(LARGE_SOURCES)) & (split != "train")
        subsets = [("val", split == "val"), ("val_real", split == "val_real")]
        subsets += [(f"val_real {s}", (split == "val_real") & (source == s))
                    for s in sorted(set(source[split == "val_real"]))]
        subsets += [("vn_listings_dev + Houses (val + val_real)", large)]
        print(f"\n## {size} px (one view, fp32)\n")
        print("| photos | n | image | room | scene | leaf |")
        print("|---|---|---|---|---|---|")
        for name, m in subsets:
            def acc(pred, truth, mask):
                mask = m & mask
                return f"{(pred[mask] == truth[mask]).mean():.4f}" if mask.any() else "—"
            print(f"| {name} | {m.sum()} | {acc(pred_image, image, True)} | {acc(pred_room, room, has_room)} "
                  f"| {acc(pred_scene, scene, has_scene)} | {leaf[m].mean():.4f} |")
        print(f"\n{(short[large] >= 480).sum()} of these {large.sum()} photos have a short side of 480 px or more "
              f"(median short side {np.median(short[large]):.0f} px)")
        timed.append((size, large))
    # Timed apart from the embedding, on the same photos for every size,
    # so what else ran during the (long) embedding does not count.
    print("\n| size | decode + resize ms | backbone ms (one view, every core) |\n|---|---|---|")
    for size, large in timed:
        sess = session()
        datas = [open(os.path.join(DATA, rows[i]["path"]), "rb").read() for i in np.flatnonzero(large)]
        decode, infer = [], []
        for _ in range(3):
            for data in datas:
                t0 = time.perf_counter()
                pixels = prepare(data, size)
                t1 = time.perf_counter()
                sess.run(["embedding"], {"input": pixels[None]})
                infer.append(time.perf_counter() - t1)
                decode.append(t1 - t0)
        print(f"| {size} px | {np.median(decode) * 1e3:.2f} | {np.median(infer) * 1e3:.2f} |")


if __name__ == "__main__":
    main()
