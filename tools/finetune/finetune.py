#!/usr/bin/env python3
"""Fine-tunes the EfficientNet-Lite2 backbone with three linear heads and exports it to ONNX.

Run from the repository root (on the lent GPU machine):
    python3 tools/finetune/finetune.py --data .carry/finetune --out "$OUT" --minutes 4
Test on the CPU (tiny subset):
    python tools/finetune/finetune.py --data .carry/finetune --out /tmp/ftout \
        --device cpu --limit 64 --minutes 0.5 --batch 16 --threads 1

Model: extract_features(x).mean((2,3)) -> 1280-d embedding -> linear heads
image (3, every row), room (5, rows with a room), scene (6, rows with a scene);
loss = sum over the heads that apply to a row of the label-smoothed cross-entropy,
averaged over the batch. The ImageNet _fc is never trained: it is exported
unchanged as `logits`. Stem + first --freeze-blocks blocks are frozen (their
BatchNorm too); the other BatchNorms train.

Data: every photo is decoded once into memory at the inference view (squashed
to 260x260, bicubic) and moved to the GPU; augmentation runs on the GPU: random
resized crop (area 0.7-1, aspect 0.8-1.25, 20 % of samples uncropped) + flip
via one affine grid_sample, and mild brightness/contrast/saturation jitter.

Outputs in --out (each file < 16 MiB):
    efficientnet-lite2-ft.onnx.part00, .part01   cat them in order -> the ONNX
    SHA256SUMS                                   sha256 of the reassembled ONNX
    backbone_ft_fp16.pt   state dict for tools/export_backbone.py --finetuned
                          (fp16 except _fc, which stays the exact fp32 original)
    heads.json            the torch-trained heads (on `embedding`), for comparison
    finetune_log.json     args, versions, data counts, training curve, checks
"""
import argparse
import csv
import hashlib
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
from common import SIZE, IMAGE_CLASSES, ROOM_CLASSES, SCENE_CLASSES, MEAN, STD  # noqa: E402

ONNX_NAME = "efficientnet-lite2-ft.onnx"
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
    ap.add_argument("--device", default="auto", help="auto, cuda or cpu")
    ap.add_argument("--limit", type=int, default=0, help="use only this many photos (testing)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    ap.add_argument("--workers", type=int, default=0, help="decoding threads (0: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    ap.add_argument("--base-onnx", default=str(REPO / common.BASE_ONNX))
    ap.add_argument("--part-mib", type=int, default=15, help="size of the ONNX parts")
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

def in_calibration_holdout(name, percent=15):
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 100 < percent


def load_index(data_dir, limit, seed):
    with open(Path(data_dir) / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # The calibration hold-out: photos the fine-tuning never sees, so that
    # `photolabel train` can fit the temperature on honest logits. The rule
    # (first 32 bits of sha256(file name) mod 100 < 15) is the same in Rust.
    rows = [r for r in rows if not in_calibration_holdout(r["name"])]
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
    return y_img, y_room, y_scene


def augment(torch, F, xb):
    """xb: [B,H,W,3] uint8 on the device -> normalised float [B,3,SIZE,SIZE], channels_last."""
    dev = xb.device
    B = xb.shape[0]
    x = xb.permute(0, 3, 1, 2).float().div_(255.0)

    def U(lo, hi):
        return torch.empty(B, device=dev).uniform_(lo, hi)

    area = U(0.7, 1.0)
    ratio = torch.exp(U(math.log(0.8), math.log(1.25)))
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    full = torch.rand(B, device=dev) < 0.2
    w = torch.where(full, torch.ones_like(w), w)
    h = torch.where(full, torch.ones_like(h), h)
    cx = (torch.rand(B, device=dev) * 2 - 1) * (1 - w)
    cy = (torch.rand(B, device=dev) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(B, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(B, 2, 3, device=dev)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [B, 3, SIZE, SIZE], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # mild colour jitter: brightness, contrast, saturation (each factor in [0.8, 1.2])
    def v(lo, hi):
        return U(lo, hi).view(B, 1, 1, 1)

    x = x * v(0.8, 1.2)
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    m = gray.mean((2, 3), keepdim=True)
    x = (x - m) * v(0.8, 1.2) + m
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray) * v(0.8, 1.2) + gray
    x = x.clamp_(0.0, 1.0).sub_(MEAN).div_(STD)
    return x.contiguous(memory_format=torch.channels_last)


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


def ort_session(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


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
        say(f"WARNING: {args.base_onnx} sha256 differs from the one packed; relying on the onnxruntime check")

    # ---- data
    rows = load_index(args.data, args.limit, args.seed)
    images, pil_webp = decode_all(args.data, rows, workers)
    y_img, y_room, y_scene = labels(rows)
    is_house = np.array([r["source"] == "houses_dataset" for r in rows])
    log["data"] = {"photos": len(rows), "houses": int(is_house.sum()), "rooms": int((y_room >= 0).sum()),
                   "scenes": int((y_scene >= 0).sum()), "pillow_webp": pil_webp,
                   "packed": {k: meta[k] for k in ("rows", "dropped_total")}}
    say(f"decoded {len(rows)} photos ({images.nbytes / 1e9:.2f} GB) with {workers} threads")

    # ---- model: weights rebuilt from the repository's ONNX, checked against it
    net = build_net(args, args.data, torch)
    g = torch.Generator().manual_seed(0)
    x_rand = torch.randn(2, 3, SIZE, SIZE, generator=g)
    x_real = plain_view(torch, torch.from_numpy(images[: min(4, len(rows))]))
    d = check_against_onnx(torch, net, args.base_onnx, [x_rand, x_real], threads)
    log["rebuilt_vs_base_onnx_max_abs_diff"] = d
    say(f"weights rebuilt from {args.base_onnx}: max abs diff vs onnxruntime {d:.2e}")
    if d > 1e-4:
        log["status"] = "failed: rebuilt weights do not match the base ONNX"
        log.write()
        sys.exit(log["status"])
    fc_ref = (net._fc.weight.detach().clone(), net._fc.bias.detach().clone())

    heads = torch.nn.ModuleDict({
        "image": torch.nn.Linear(1280, len(IMAGE_CLASSES)),
        "room": torch.nn.Linear(1280, len(ROOM_CLASSES)),
        "scene": torch.nn.Linear(1280, len(SCENE_CLASSES)),
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
        heads.train()
        drop.train()
        for m in frozen:
            m.eval()

    net.to(device).to(memory_format=torch.channels_last)
    heads.to(device)

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
    base = np.arange(len(rows))
    epoch_pool = np.concatenate([base] + [base[is_house]] * max(0, args.houses_repeat - 1))
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
    step = 0
    t_start = time.time()
    stop = False
    set_train()
    for epoch in range(args.epochs):
        if stop:
            break
        perm = torch.from_numpy(rng.permutation(epoch_pool)).to(device)
        stats = torch.zeros(7, device=device)  # loss, img ok, img n, room ok, room n, scene ok, scene n
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
            x = augment(torch, F, data[idx])
            yi, yr, ys = t_img[idx], t_room[idx], t_scene[idx]
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                emb = net.extract_features(x).mean((2, 3))
            emb = drop(emb.float())
            li = heads["image"](emb)
            lr_ = heads["room"](emb)
            ls = heads["scene"](emb)
            loss = (ce(li, yi) + ce(lr_, yr) + ce(ls, ys)) / idx.numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += idx.numel()
            with torch.no_grad():
                rm, sm = yr >= 0, ys >= 0
                stats += torch.stack([
                    loss.detach().float() * idx.numel(),
                    (li.argmax(1) == yi).sum().float(), torch.ones_like(stats[0]) * idx.numel(),
                    ((lr_.argmax(1) == yr) & rm).sum().float(), rm.sum().float(),
                    ((ls.argmax(1) == ys) & sm).sum().float(), sm.sum().float()])
        if seen:
            st = stats.tolist()  # syncs
            ep_s = time.time() - t_ep
            rec = {"epoch": epoch + 1, "steps": step, "elapsed_s": round(time.time() - t_start, 1),
                   "lr_backbone_end": opt.param_groups[0]["lr"],
                   "loss": round(st[0] / seen, 4),
                   "acc_image": round(st[1] / max(1, st[2]), 4),
                   "acc_room": round(st[3] / max(1, st[4]), 4),
                   "acc_scene": round(st[5] / max(1, st[6]), 4),
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
    assert torch.equal(net._fc.weight, fc_ref[0]) and torch.equal(net._fc.bias, fc_ref[1]), "_fc changed"
    heads_json = {name: {"classes": cls, "weight": heads[name].weight.tolist(), "bias": heads[name].bias.tolist()}
                  for name, cls in (("image", IMAGE_CLASSES), ("room", ROOM_CLASSES), ("scene", SCENE_CLASSES))}
    (out / "heads.json").write_text(json.dumps(heads_json) + "\n")

    sd = {k: (v if k.startswith("_fc.") or not v.is_floating_point() else v.half()) for k, v in net.state_dict().items()}
    sd_path = out / "backbone_ft_fp16.pt"
    torch.save(sd, sd_path)
    if sd_path.stat().st_size >= 16 * 2**20:
        sd_path.unlink()
        say("fp16 state dict over 16 MiB: not kept")
    else:
        log["state_dict"] = {"file": sd_path.name, "bytes": sd_path.stat().st_size, "sha256": common.sha256(sd_path)}

    tmp_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"finetune_{os.getpid()}"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = tmp_dir / ONNX_NAME
    try:
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
        # same interface as the base model
        import onnx
        m = onnx.load(str(onnx_path))
        io_names = ([i.name for i in m.graph.input], [o.name for o in m.graph.output])
        if io_names != (["input"], ["embedding", "logits"]):
            raise RuntimeError(f"unexpected graph interface {io_names}")
        fc = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer if i.name.startswith("net._fc")}
        if not (np.array_equal(fc["net._fc.weight"], fc_ref[0].numpy())
                and np.array_equal(fc["net._fc.bias"], fc_ref[1].numpy())):
            raise RuntimeError("_fc in the exported ONNX differs from the original")
        digest = common.sha256(onnx_path)
        part = args.part_mib * 2**20
        blob = onnx_path.read_bytes()
        parts = []
        for i in range(0, len(blob), part):
            p = out / f"{ONNX_NAME}.part{i // part:02d}"
            p.write_bytes(blob[i:i + part])
            parts.append(p.name)
        (out / "SHA256SUMS").write_text(f"{digest}  {ONNX_NAME}\n")
        log["onnx"] = {"file": ONNX_NAME, "bytes": len(blob), "sha256": digest, "parts": parts,
                       "reassemble": f"cat {ONNX_NAME}.part* > {ONNX_NAME} && sha256sum -c SHA256SUMS"}
        log["status"] = "ok"
        say(f"wrote {parts} ({len(blob)} bytes), sha256 {digest}")
    except Exception as e:  # noqa: BLE001 - keep the weights if the export fails
        log["status"] = f"export failed: {type(e).__name__}: {e}"
        say(log["status"])
        fp32 = tmp_dir / "backbone_ft_fp32.pt"
        torch.save(net.state_dict(), fp32)
        blob = fp32.read_bytes()
        part = args.part_mib * 2**20
        for i in range(0, len(blob), part):
            (out / f"backbone_ft_fp32.pt.part{i // part:02d}").write_bytes(blob[i:i + part])
        fp32_sha = common.sha256(fp32)
        (out / "SHA256SUMS").write_text(f"{fp32_sha}  backbone_ft_fp32.pt\n")
        log["fallback"] = {"file": "backbone_ft_fp32.pt", "sha256": fp32_sha,
                           "use": "cat backbone_ft_fp32.pt.part* > backbone_ft_fp32.pt; "
                                  "python3 tools/export_backbone.py --weights PTH --finetuned backbone_ft_fp32.pt --out X.onnx"}
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
