#!/usr/bin/env python3
"""Fine-tunes the EfficientNet-Lite2 backbone with linear heads; returns the change of its weights.

Run from the repository root (on the lent GPU machine):
    python3 tools/finetune/finetune.py --data .carry/finetune --out "$OUT" --minutes 4
Test on the CPU (tiny subset):
    python tools/finetune/finetune.py --data .carry/finetune --out /tmp/ftout \
        --device cpu --limit 64 --minutes 0.5 --batch 16 --threads 1

Model: the product's embedding -- extract_features(x).mean((2,3)) (1280), then
the spatial means of the inputs of blocks 14 and 20 (328; tools/add_context_features.py
adds the same to the exported graph; --no-context for the 1280 alone) --
standardised by a BatchNorm without affine, then linear heads: image (3, every
row), room (5, rows with a room), room subclass (3: hall_corridor, room,
scullery; rows with one) and scene (6, rows with a scene). Loss = sum over the
heads that apply to a row of the label-smoothed cross-entropy, averaged over
the batch. The ImageNet _fc is never trained: it is exported unchanged as
`logits`. Stem + first --freeze-blocks blocks are frozen (their BatchNorm too);
the other BatchNorms train.

Data: every photo is decoded once into memory at the inference view (squashed
to 260x260, bicubic) and moved to the GPU. Houses photos come --houses-repeat
times per epoch and the real listing photos (es_gray, vn_listings_dev,
zind_empty_home) --listing-repeat times. Augmentation runs on the GPU: every
sample gets a crop keeping 75-100 % of each side, a flip (p 0.5) and a tilt of
up to 5 degrees (p 0.3) in one affine grid_sample; a --degrade share of them
(default 0.5) also gets what crates/vision/src/augment.rs gives `photolabel
train`'s augmented copies -- colour jitter (p 0.8), a line of blocky watermark
"text" (p 0.5), grayscale (p 0.2), a downscale to 128-320 px (p 0.4) and a
4:2:0 JPEG quantisation at quality 35-90 -- the others only a mild jitter.
(--augment mild: the 2026-11-28 recipe, area/aspect crops and mild jitter.)

Outputs in --out (each file < 16 MiB):
    delta.npz             what the fine-tune changed: every folded convolution minus
                          the base's (common.conv_delta; weights in float16, ~12 MB);
                          interpolate.py takes it in place of an ONNX export, and
                          the base plus it is checked against torch before it is kept
    SHA256SUMS            sha256 of delta.npz
    backbone_ft_fp16.pt   only if the export failed: the state dict for
                          tools/export_backbone.py --finetuned (fp16 except _fc,
                          which stays the exact fp32 original)
    heads.json            the torch-trained heads, for comparison (on the embedding with
                          the context, i.e. after tools/add_context_features.py)
    finetune_log.json     args, versions, data counts, training curve, checks
"""
import argparse
import csv
import io
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tools"))
import common  # noqa: E402
from common import (SIZE, IMAGE_CLASSES, ROOM_CLASSES, SCENE_CLASSES, SUBCLASSES,  # noqa: E402
                    LISTING_SOURCES, MEAN, STD, in_holdout)
from add_context_features import BLOCKS as CONTEXT_BLOCKS, POOLED, CONTEXT_WIDTHS  # noqa: E402

DELTA_NAME = "delta.npz"
FALLBACK_NAME = "backbone_ft_fp16.pt"
T0 = time.time()


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder made by pack_data.py")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=4.0, help="time budget of the training loop")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=192)
    ap.add_argument("--lr", type=float, default=1e-4, help="backbone learning rate")
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=1e-4, help="AdamW weight decay (not on BN/bias)")
    ap.add_argument("--warmup", type=float, default=0.05, help="warm-up, fraction of the run")
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.2, help="on the embedding, before the heads")
    ap.add_argument("--freeze-blocks", type=int, default=4,
                    help="freeze the stem and this many first MBConv blocks (-1: nothing frozen)")
    ap.add_argument("--houses-repeat", type=int, default=2,
                    help="times each Houses (real listing) photo appears per epoch")
    ap.add_argument("--listing-repeat", type=int, default=2,
                    help="times each es_gray, vn_listings_dev, zind_empty_home photo appears per epoch")
    ap.add_argument("--augment", choices=("full", "mild"), default="full",
                    help="full: the listing degradations of photolabel train; mild: the 2026-11-28 recipe")
    ap.add_argument("--degrade", type=float, default=0.5,
                    help="with --augment full, the share of samples that get the degradations")
    ap.add_argument("--no-context", action="store_true",
                    help="heads on the 1280 pooled values only (the 2026-11-28 recipe)")
    ap.add_argument("--device", default="auto", help="auto, cuda or cpu")
    ap.add_argument("--limit", type=int, default=0, help="use only this many photos (testing)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    ap.add_argument("--workers", type=int, default=0, help="decoding threads (0: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    ap.add_argument("--base-onnx", default=str(REPO / common.BASE_ONNX))
    return ap.parse_args()


class Log:
    def __init__(self, out):
        self.path = Path(out) / "finetune_log.json"
        self.d = {"status": "started", "epochs": []}

    def __setitem__(self, k, v):
        self.d[k] = v

    def __getitem__(self, k):
        return self.d[k]

    def write(self):
        self.d["wall_s"] = round(time.time() - T0, 1)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.d, indent=1) + "\n")
        os.replace(tmp, self.path)


def say(msg):
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def versions(torch, device):
    import PIL
    v = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
         "pillow": PIL.__version__}
    for name in ("torchvision", "onnx", "onnxruntime"):
        try:
            v[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001
            v[name] = f"unavailable: {e}"
    if device.type == "cuda":
        v["cuda"] = torch.version.cuda
        v["cudnn"] = torch.backends.cudnn.version()
        v["gpu"] = torch.cuda.get_device_name(0)
    v["cpu_count"] = os.cpu_count()
    return v


# ---------------------------------------------------------------- data

def load_index(data_dir, limit, seed):
    with open(Path(data_dir) / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # Packs since issue 11 leave the hold-out out already; older ones do not.
    rows = [r for r in rows if not in_holdout(r["name"])]
    if limit and limit < len(rows):
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(rows), limit, replace=False))
        rows = [rows[i] for i in keep]
    return rows


def decode_all(data_dir, rows, workers):
    """Every photo at the inference view: RGB, squashed to SIZE x SIZE (bicubic). NHWC uint8."""
    from PIL import Image, features

    blob = (Path(data_dir) / "images.bin").read_bytes()
    pil_webp = features.check("webp")
    arr = np.empty((len(rows), SIZE, SIZE, 3), np.uint8)

    def one(i):
        r = rows[i]
        b = blob[int(r["offset"]): int(r["offset"]) + int(r["length"])]
        if pil_webp:
            im = Image.open(io.BytesIO(b))
            im = im.convert("RGB")
        else:  # Pillow without WebP: torchvision's decoder
            import torch
            import torchvision.io as tio
            t = tio.decode_image(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=tio.ImageReadMode.RGB)
            im = Image.fromarray(t.permute(1, 2, 0).numpy())
        if im.size != (SIZE, SIZE):
            im = im.resize((SIZE, SIZE), Image.BICUBIC)
        arr[i] = np.asarray(im)

    with ThreadPoolExecutor(max_workers=workers) as ex:
        list(ex.map(one, range(len(rows)), chunksize=64))
    return arr, pil_webp


def labels(rows):
    def idx(classes, v):
        return classes.index(v) if v else -1
    y_img = np.array([IMAGE_CLASSES.index(r["image_class"]) for r in rows], np.int64)
    y_room = np.array([idx(ROOM_CLASSES, r["room_class"]) for r in rows], np.int64)
    y_scene = np.array([idx(SCENE_CLASSES, r["scene_class"]) for r in rows], np.int64)
    # packs before issue 11 have no subclass column
    y_sub = np.array([idx(SUBCLASSES, r.get("room_subclass", "")) for r in rows], np.int64)
    return y_img, y_room, y_scene, y_sub


def augment(torch, F, xb, args, prng):
    """xb: [B,H,W,3] uint8 on the device -> normalised float [B,3,SIZE,SIZE], channels_last."""
    dev = xb.device
    B = xb.shape[0]
    x = xb.permute(0, 3, 1, 2).float().div_(255.0)

    def U(lo, hi):
        return torch.empty(B, device=dev).uniform_(lo, hi)

    def chance(p):
        return torch.rand(B, device=dev) < p

    if args.augment == "mild":
        area = U(0.7, 1.0)
        ratio = torch.exp(U(math.log(0.8), math.log(1.25)))
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        full = chance(0.2)
        w = torch.where(full, torch.ones_like(w), w)
        h = torch.where(full, torch.ones_like(h), h)
        angle = torch.zeros(B, device=dev)
    else:
        w, h = U(0.75, 1.0), U(0.75, 1.0)
        angle = torch.where(chance(0.3), U(-5.0, 5.0), torch.zeros(B, device=dev)) * (math.pi / 180)
    cx = (torch.rand(B, device=dev) * 2 - 1) * (1 - w)
    cy = (torch.rand(B, device=dev) * 2 - 1) * (1 - h)
    flip = torch.where(chance(0.5), -1.0, 1.0)
    # A tilt zooms in just enough that no corner from outside the photo shows.
    cos, sin = torch.cos(angle), torch.sin(angle)
    zoom = cos + sin.abs()
    theta = torch.zeros(B, 2, 3, device=dev)
    theta[:, 0, 0] = cos * w * flip / zoom
    theta[:, 0, 1] = -sin * h / zoom
    theta[:, 1, 0] = sin * w * flip / zoom
    theta[:, 1, 1] = cos * h / zoom
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [B, 3, SIZE, SIZE], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # Colour jitter, one pass: the degraded samples get augment.rs's ranges
    # (brightness and contrast x0.75-1.25, saturation x0.6-1.3) with p 0.8,
    # the others the mild x0.8-1.2 of 2026-11-28 always.
    degrade = chance(args.degrade) if args.augment == "full" else torch.zeros(B, dtype=torch.bool, device=dev)

    def factor(strong_lo, strong_hi):
        lo = torch.where(degrade, strong_lo, 0.8)
        hi = torch.where(degrade, strong_hi, 1.2)
        return (lo + (hi - lo) * torch.rand(B, device=dev)).view(B, 1, 1, 1)

    def luma(t):
        return 0.299 * t[:, 0:1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:3]

    g = luma(x)
    y = g + (x - g) * factor(0.6, 1.3)
    m = luma(y).mean((2, 3), keepdim=True)
    y = (m + (y - m) * factor(0.75, 1.25)) * factor(0.75, 1.25)
    on = (~degrade | chance(0.8)).view(B, 1, 1, 1)
    x = torch.where(on, y.clamp(0.0, 1.0), x)

    if args.augment == "full":
        picked = degrade.cpu().numpy()
        for i in np.flatnonzero(picked & (prng.random(B) < 0.5)):
            watermark(torch, x[i], prng)
        gray = (degrade & chance(0.2)).view(B, 1, 1, 1)
        x = torch.where(gray, luma(x).expand(-1, 3, -1, -1), x)
        for i in np.flatnonzero(picked & (prng.random(B) < 0.4)):
            side = int(prng.uniform(128, 320))
            if side < SIZE:  # the backbone sees 260 px: only a smaller upload loses detail
                small = F.interpolate(x[i:i + 1], size=(side, side), mode="bilinear", antialias=True,
                                      align_corners=False)
                x[i:i + 1] = F.interpolate(small, size=(SIZE, SIZE), mode="bicubic",
                                           align_corners=False).clamp(0.0, 1.0)
        sel = torch.from_numpy(np.flatnonzero(picked & (prng.random(B) < 0.5))).to(dev)
        if len(sel):
            quality = torch.randint(35, 91, (len(sel),), device=dev).float()
            x[sel] = jpeg_like(torch, F, x[sel], quality)
    x = x.sub_(MEAN).div_(STD)
    return x.contiguous(memory_format=torch.channels_last)


def watermark(torch, img, prng):
    """A semi-transparent line of blocky "text" in the centre or a corner,
    sometimes on a banner -- augment.rs's watermark on one [3,S,S] image, in place."""
    S = img.shape[-1]
    cell = max(1, int(S * prng.uniform(0.012, 0.03)))
    glyphs = 4 + int(prng.integers(12))
    tw, th = glyphs * 4 * cell, 5 * cell
    if tw + 2 * cell >= S or th + 2 * cell >= S:
        return
    centred = prng.random() < 0.5
    if centred:
        x0, y0 = (S - tw) // 2, (S - th) // 2
    else:
        x0 = 2 * cell if prng.random() < 0.5 else S - tw - 2 * cell
        y0 = 2 * cell if prng.random() < 0.5 else S - th - 2 * cell
    ink = 1.0 if prng.random() < 0.7 else 0.0
    alpha = prng.uniform(0.3, 0.7)
    if not centred and prng.random() < 0.3:  # a banner in the opposite colour
        box = img[:, y0 - cell:y0 + th + cell, x0 - cell:x0 + tw + cell]
        box.mul_(0.2).add_(0.8 * (1.0 - ink))
    bits = torch.rand(5, glyphs, 4, device=img.device) < 0.5  # 3x5 glyphs and a blank column
    bits[:, :, 3] = False
    mask = bits.reshape(5, glyphs * 4).float().repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    box = img[:, y0:y0 + th, x0:x0 + tw]
    box.mul_(1.0 - alpha * mask).add_(alpha * ink * mask)


# JPEG's example quantisation tables (ITU-T T.81, Annex K), scaled by quality as libjpeg does.
JPEG_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
             14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
             49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
JPEG_CHROMA = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
               47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32


def jpeg_like(torch, F, x, quality):
    """x [n,3,S,S] in [0,1] -> what saving it as a baseline 4:2:0 JPEG at `quality`
    ([n], 1-100) and decoding it gives, up to the 8-bit rounding: YCbCr, chroma
    halved, each 8x8 block's DCT quantised with the scaled tables, and back."""
    n, _, S, _ = x.shape
    P = -(-S // 16) * 16  # whole 16x16 macroblocks, as the encoder pads
    xp = F.pad(x, (0, P - S, 0, P - S), mode="replicate") * 255.0
    r, g, b = xp[:, 0], xp[:, 1], xp[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    scale = torch.where(quality < 50, 5000.0 / quality, 200.0 - 2.0 * quality)[:, None]

    def table(base):
        t = torch.tensor(base, dtype=torch.float32, device=x.device)[None]
        return torch.floor((t * scale + 50.0) / 100.0).clamp(1.0, 255.0).view(n, 1, 1, 8, 8)

    k = torch.arange(8, dtype=torch.float32, device=x.device)
    d = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] = d[0] / math.sqrt(2)  # orthonormal DCT-II: coefficients = d @ block @ d.T

    def blocks(plane, q):
        m, H, W = plane.shape
        t = plane.reshape(m, H // 8, 8, W // 8, 8).permute(0, 1, 3, 2, 4)
        c = d @ t @ d.T
        c = torch.round(c / q) * q
        t = d.T @ c @ d
        return t.permute(0, 1, 3, 2, 4).reshape(m, H, W)

    def chroma(c):
        small = F.avg_pool2d(c[:, None], 2)[:, 0]
        small = blocks(small, table(JPEG_CHROMA))
        return F.interpolate(small[:, None], scale_factor=2, mode="bilinear", align_corners=False)[:, 0]

    y = blocks(y - 128.0, table(JPEG_LUMA)) + 128.0
    cb, cr = chroma(cb), chroma(cr)
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1)
    return (rgb[:, :, :S, :S] / 255.0).clamp(0.0, 1.0)


def plain_view(torch, xb):
    x = xb.permute(0, 3, 1, 2).float().div(255.0).sub(MEAN).div(STD)
    return x.contiguous()


# ---------------------------------------------------------------- model

def build_net(args, data_dir, torch):
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite2")
    bn = dict(np.load(Path(data_dir) / "bn.npz"))
    net.load_state_dict(common.state_dict_from_onnx(net, args.base_onnx, bn))
    return net.eval()


def ort_session(model, threads):
    """model: a path, or a serialised ModelProto (bytes)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=["CPUExecutionProvider"])


def check_against_onnx(torch, net, onnx_path, inputs, threads):
    """max abs diff of (embedding, logits) between torch (CPU, fp32, eval) and onnxruntime."""
    from export_backbone import Backbone

    model = Backbone(net).eval()
    sess = ort_session(onnx_path, threads)
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            e, lg = model(x)
        ge, gl = sess.run(None, {"input": x.numpy()})
        worst = max(worst, float(np.abs(ge - e.numpy()).max()), float(np.abs(gl - lg.numpy()).max()))
    return worst


def embed(torch, net, x, context):
    """The product's embedding: the last layer's 1280 pooled values, then (with
    context) the spatial means of the inputs of blocks 14 and 20, in the order
    tools/add_context_features.py gives the exported graph."""
    x = net._swish(net._bn0(net._conv_stem(x)))
    parts = []
    rate = net._global_params.drop_connect_rate
    for idx, block in enumerate(net._blocks):
        if context and idx in CONTEXT_BLOCKS:
            parts.append(x.mean((2, 3)))
        x = block(x, drop_connect_rate=rate * idx / len(net._blocks) if rate else rate)
    x = net._swish(net._bn1(net._conv_head(x)))
    return torch.cat([x.mean((2, 3))] + parts, 1)


def check_context(torch, net, onnx_path, inputs, threads):
    """max abs diff between embed() with the context (torch, CPU, fp32, eval) and
    the base ONNX given the context by tools/add_context_features.py: the heads
    here must train on what the product computes."""
    import onnx
    from add_context_features import widen

    sess = ort_session(widen(onnx.load(str(onnx_path))).SerializeToString(), threads)
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            e = embed(torch, net, x, True)
        worst = max(worst, float(np.abs(sess.run(["embedding"], {"input": x.numpy()})[0] - e.numpy()).max()))
    return worst


def frozen_modules(net, k):
    if k < 0:
        return []
    return [net._conv_stem, net._bn0] + list(net._blocks[:k])


def main():
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out)
    log["args"] = vars(args)
    common.add_pylib(args.data)

    import torch
    import torch.nn.functional as F

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    workers = args.workers or min(32, os.cpu_count() or 1)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    log["versions"] = versions(torch, device)
    say(f"device {device}, versions {log['versions']}")
    log.write()

    meta = json.loads((Path(args.data) / "meta.json").read_text())
    base_sha = common.sha256(args.base_onnx)
    log["base_onnx_sha256"] = base_sha
    if base_sha != meta.get("base_onnx_sha256"):
        # Any folded ONNX passes the rebuild check below, so this is what keeps a
        # run from starting at the shipped (already fine-tuned) backbone instead
        # of the ImageNet weights that interpolate.py moves back towards.
        log["status"] = (f"failed: {args.base_onnx} is not the ImageNet export that was packed "
                         "(tools/finetune/README.md, 'Running it again')")
        log.write()
        sys.exit(log["status"])

    # ---- data
    rows = load_index(args.data, args.limit, args.seed)
    images, pil_webp = decode_all(args.data, rows, workers)
    y_img, y_room, y_scene, y_sub = labels(rows)
    is_house = np.array([r["source"] == "houses_dataset" for r in rows])
    is_listing = np.array([r["source"] in LISTING_SOURCES for r in rows])
    per_source = {}
    for r in rows:
        per_source[r["source"]] = per_source.get(r["source"], 0) + 1
    log["data"] = {"photos": len(rows), "per_source": per_source, "rooms": int((y_room >= 0).sum()),
                   "subclasses": int((y_sub >= 0).sum()), "scenes": int((y_scene >= 0).sum()),
                   "pillow_webp": pil_webp, "packed": {k: meta[k] for k in ("rows", "dropped_total")}}
    say(f"decoded {len(rows)} photos ({images.nbytes / 1e9:.2f} GB) with {workers} threads")

    # ---- model: weights rebuilt from the repository's ONNX, checked against it
    net = build_net(args, args.data, torch)
    g = torch.Generator().manual_seed(0)
    x_rand = torch.randn(2, 3, SIZE, SIZE, generator=g)
    x_real = plain_view(torch, torch.from_numpy(images[: min(4, len(rows))]))
    def require(key, d, what, failure):  # a start-up check: logged, and fatal over 1e-4
        log[key] = d
        say(f"{what}: max abs diff {d:.2e}")
        if d > 1e-4:
            log["status"] = f"failed: {failure}"
            log.write()
            sys.exit(log["status"])

    require("rebuilt_vs_base_onnx_max_abs_diff",
            check_against_onnx(torch, net, args.base_onnx, [x_rand, x_real], threads),
            f"weights rebuilt from {args.base_onnx} vs onnxruntime", "rebuilt weights do not match the base ONNX")
    require("context_vs_onnx_max_abs_diff", check_context(torch, net, args.base_onnx, [x_rand, x_real], threads),
            "embedding with the context vs tools/add_context_features.py",
            "the context features differ from the product's")
    fc_ref = (net._fc.weight.detach().clone(), net._fc.bias.detach().clone())

    context = not args.no_context
    width = POOLED + (sum(CONTEXT_WIDTHS.values()) if context else 0)
    # The context means are on another scale than the pooled values; the Rust
    # heads standardise their inputs, and so does this BatchNorm.
    norm = torch.nn.BatchNorm1d(width, affine=False)
    heads = torch.nn.ModuleDict({
        "image": torch.nn.Linear(width, len(IMAGE_CLASSES)),
        "room": torch.nn.Linear(width, len(ROOM_CLASSES)),
        "subclass": torch.nn.Linear(width, len(SUBCLASSES)),
        "scene": torch.nn.Linear(width, len(SCENE_CLASSES)),
    })
    drop = torch.nn.Dropout(args.dropout)

    frozen = frozen_modules(net, args.freeze_blocks)
    for p in net.parameters():
        p.requires_grad_(True)
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    for p in net._fc.parameters():
        p.requires_grad_(False)  # exported unchanged as `logits`; not in the training graph anyway

    def set_train():
        net.train()
        norm.train()
        heads.train()
        drop.train()
        for m in frozen:
            m.eval()

    net.to(device).to(memory_format=torch.channels_last)
    heads.to(device)
    norm.to(device)

    decay, no_decay = [], []
    for n, p in net.named_parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    head_decay = [p for n, p in heads.named_parameters() if n.endswith("weight")]
    head_no_decay = [p for n, p in heads.named_parameters() if n.endswith("bias")]
    groups = [
        {"params": decay, "lr": args.lr, "base_lr": args.lr, "weight_decay": args.wd},
        {"params": no_decay, "lr": args.lr, "base_lr": args.lr, "weight_decay": 0.0},
        {"params": head_decay, "lr": args.head_lr, "base_lr": args.head_lr, "weight_decay": args.wd},
        {"params": head_no_decay, "lr": args.head_lr, "base_lr": args.head_lr, "weight_decay": 0.0},
    ]
    try:
        opt = torch.optim.AdamW(groups, fused=(device.type == "cuda"))
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(groups)
    n_train = sum(p.numel() for grp in groups for p in grp["params"])
    log["trainable_params"] = n_train
    say(f"trainable parameters {n_train} (frozen: stem + {max(args.freeze_blocks, 0)} blocks, _fc)")

    # ---- data on the device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    data = torch.from_numpy(images).to(device)
    t_img = torch.from_numpy(y_img).to(device)
    t_room = torch.from_numpy(y_room).to(device)
    t_scene = torch.from_numpy(y_scene).to(device)
    t_sub = torch.from_numpy(y_sub).to(device)
    base = np.arange(len(rows))
    epoch_pool = np.concatenate([base] + [base[is_house]] * max(0, args.houses_repeat - 1)
                                + [base[is_listing]] * max(0, args.listing_repeat - 1))
    batch = min(args.batch, len(epoch_pool))
    steps_per_epoch = len(epoch_pool) // batch
    total_steps = steps_per_epoch * args.epochs
    budget_s = args.minutes * 60.0
    amp = device.type == "cuda" and not args.no_amp
    ce = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing, ignore_index=-1, reduction="sum")
    log["schedule"] = {"batch": batch, "steps_per_epoch": steps_per_epoch, "planned_steps": total_steps,
                       "budget_s": budget_s, "amp_bf16": amp, "photos_per_epoch": len(epoch_pool)}
    say(f"training: {args.epochs} epochs x {steps_per_epoch} steps of {batch}, budget {budget_s:.0f}s, "
        f"bf16 {amp}")
    log.write()

    rng = np.random.default_rng(args.seed)
    prng = np.random.default_rng(args.seed + 1000)  # the augmentation's host-side choices
    step = 0
    t_start = time.time()
    stop = False
    set_train()
    for epoch in range(args.epochs):
        if stop:
            break
        perm = torch.from_numpy(rng.permutation(epoch_pool)).to(device)
        # loss, img ok, img n, room ok, room n, scene ok, scene n, subclass ok, subclass n
        stats = torch.zeros(9, device=device)
        seen = 0
        t_ep = time.time()
        for s in range(steps_per_epoch):
            elapsed = time.time() - t_start
            progress = max(step / max(1, total_steps), elapsed / budget_s)
            if progress >= 1.0:
                stop = True
                break
            if progress < args.warmup:
                f = progress / args.warmup
            else:
                f = 0.5 * (1 + math.cos(math.pi * (progress - args.warmup) / (1 - args.warmup)))
            for grp in opt.param_groups:
                grp["lr"] = grp["base_lr"] * f
            idx = perm[s * batch:(s + 1) * batch]
            x = augment(torch, F, data[idx], args, prng)
            yi, yr, ys, yb = t_img[idx], t_room[idx], t_scene[idx], t_sub[idx]
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                emb = embed(torch, net, x, context)
            emb = drop(norm(emb.float()))
            li = heads["image"](emb)
            lr_ = heads["room"](emb)
            ls = heads["scene"](emb)
            lb = heads["subclass"](emb)
            loss = (ce(li, yi) + ce(lr_, yr) + ce(ls, ys) + ce(lb, yb)) / idx.numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += idx.numel()
            with torch.no_grad():
                rm, sm, bm = yr >= 0, ys >= 0, yb >= 0
                stats += torch.stack([
                    loss.detach().float() * idx.numel(),
                    (li.argmax(1) == yi).sum().float(), torch.ones_like(stats[0]) * idx.numel(),
                    ((lr_.argmax(1) == yr) & rm).sum().float(), rm.sum().float(),
                    ((ls.argmax(1) == ys) & sm).sum().float(), sm.sum().float(),
                    ((lb.argmax(1) == yb) & bm).sum().float(), bm.sum().float()])
        if seen:
            st = stats.tolist()  # syncs
            ep_s = time.time() - t_ep
            rec = {"epoch": epoch + 1, "steps": step, "elapsed_s": round(time.time() - t_start, 1),
                   "lr_backbone_end": opt.param_groups[0]["lr"],
                   "loss": round(st[0] / seen, 4),
                   "acc_image": round(st[1] / max(1, st[2]), 4),
                   "acc_room": round(st[3] / max(1, st[4]), 4),
                   "acc_scene": round(st[5] / max(1, st[6]), 4),
                   "acc_subclass": round(st[7] / max(1, st[8]), 4),
                   "img_per_s": round(seen / max(ep_s, 1e-6), 1)}
            log["epochs"].append(rec)
            log.write()
            say("epoch " + " ".join(f"{k}={v}" for k, v in rec.items()))
    train_s = time.time() - t_start
    log["training_s"] = round(train_s, 1)
    log["steps_done"] = step
    log["stopped_by"] = "time budget" if stop else "epochs"
    say(f"training done: {step} steps in {train_s:.1f}s ({log['stopped_by']})")

    # ---- results (CPU, fp32)
    del data
    net = net.float().cpu().eval()
    net = net.to(memory_format=torch.contiguous_format)
    heads = heads.float().cpu().eval()
    norm = norm.float().cpu().eval()
    assert torch.equal(net._fc.weight, fc_ref[0]) and torch.equal(net._fc.bias, fc_ref[1]), "_fc changed"
    # the BatchNorm's running statistics folded in, so the heads read `embedding` itself
    inv = 1.0 / torch.sqrt(norm.running_var + norm.eps)
    heads_json = {"embedding_width": width}
    for name, cls in (("image", IMAGE_CLASSES), ("room", ROOM_CLASSES), ("subclass", SUBCLASSES),
                      ("scene", SCENE_CLASSES)):
        wgt = heads[name].weight.detach() * inv[None, :]
        bias = heads[name].bias.detach() - wgt @ norm.running_mean
        heads_json[name] = {"classes": cls, "weight": wgt.tolist(), "bias": bias.tolist()}
    (out / "heads.json").write_text(json.dumps(heads_json) + "\n")

    tmp_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"finetune_{os.getpid()}"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = tmp_dir / "efficientnet-lite2-ft.onnx"
    try:
        import onnx
        from export_backbone import Backbone

        model = Backbone(net).eval()
        torch.onnx.export(
            model, (x_rand,), str(onnx_path),
            input_names=["input"], output_names=["embedding", "logits"],
            dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=13, do_constant_folding=True, dynamo=False,
        )
        d = check_against_onnx(torch, net, onnx_path, [x_rand, x_real], threads)
        log["export_max_abs_diff"] = d
        say(f"ONNX export: max abs diff vs torch {d:.2e}")
        if d > 1e-4:
            raise RuntimeError(f"exported ONNX differs from torch by {d:.2e}")
        m = onnx.load(str(onnx_path))
        io_names = ([i.name for i in m.graph.input], [o.name for o in m.graph.output])
        if io_names != (["input"], ["embedding", "logits"]):
            raise RuntimeError(f"unexpected graph interface {io_names}")
        # What comes back: the change of every folded convolution (a third of
        # the ONNX's size, so three runs fit in one call's 64 MiB).
        base = onnx.load(str(args.base_onnx))
        np.savez_compressed(out / DELTA_NAME, **common.conv_delta(base, onnx_path))
        rebuilt = common.with_convs(base, common.tuned_convs(base, out / DELTA_NAME))
        d = check_against_onnx(torch, net, rebuilt.SerializeToString(), [x_rand, x_real], threads)
        log["delta_rebuilt_max_abs_diff"] = d
        say(f"{DELTA_NAME} applied to the base: max abs diff vs torch {d:.2e}")
        if d > 1e-2:
            raise RuntimeError(f"the base plus {DELTA_NAME} differs from torch by {d:.2e}")
        digest = common.sha256(out / DELTA_NAME)
        (out / "SHA256SUMS").write_text(f"{digest}  {DELTA_NAME}\n")
        log["delta"] = {"file": DELTA_NAME, "bytes": (out / DELTA_NAME).stat().st_size, "sha256": digest,
                        "use": "python3 tools/finetune/interpolate.py --base IMAGENET.onnx --alpha A --out X.onnx "
                               f"{DELTA_NAME} [...]"}
        log["status"] = "ok"
        say(f"wrote {DELTA_NAME} ({(out / DELTA_NAME).stat().st_size} bytes), sha256 {digest}")
    except Exception as e:  # noqa: BLE001 - keep the weights if the export fails
        log["status"] = f"export failed: {type(e).__name__}: {e}"
        say(log["status"])
        # fp16 (15 MB) so that it comes back; _fc stays the exact fp32 original
        sd = {k: (v if k.startswith("_fc.") or not v.is_floating_point() else v.half())
              for k, v in net.state_dict().items()}
        torch.save(sd, out / FALLBACK_NAME)
        digest = common.sha256(out / FALLBACK_NAME)
        (out / "SHA256SUMS").write_text(f"{digest}  {FALLBACK_NAME}\n")
        log["fallback"] = {"file": FALLBACK_NAME, "sha256": digest,
                           "use": "python3 tools/export_backbone.py --weights PTH --finetuned "
                                  f"{FALLBACK_NAME} --out X.onnx"}
    finally:
        for f in tmp_dir.iterdir():
            f.unlink()
        tmp_dir.rmdir()
    log.write()
    ep = log["epochs"][-1] if log["epochs"] else {}
    say(f"SUMMARY status={log['status']} steps={step} train_s={train_s:.0f} last_epoch={ep} "
        f"total_wall_s={time.time() - T0:.0f}")
    for f in sorted(out.iterdir()):
        say(f"  {f.name} {f.stat().st_size}")
    if log["status"] != "ok":
        sys.exit(1)


if __name__ == "__main__":
    main()
