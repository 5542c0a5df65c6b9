#!/usr/bin/env python3
"""From what the device run returned to measured candidate files, on the CPU.

    python3 tools/finetune/after_device.py FILES WORK [--alphas 0.2,0.3,0.4,0.5,0.7,1.0]

FILES holds what `run_on_device.sh` put in $OUT (each run's NAME-delta.npz,
SHA256SUMS, logs.tar.gz); WORK receives everything made here. Run from the
repository root after `cargo build --release` and `scripts/setup-onnxruntime.sh`,
with a Python that has onnx, onnxruntime, numpy and Pillow (the versions of
models/README.md). Every step is skipped when its output exists, so an
interrupted run resumes where it stopped.

1. Checks each run's delta against SHA256SUMS.
2. For each alpha: the soup of the --soup runs moved back towards the ImageNet
   start (interpolate.py), the mid-level context (add_context_features.py),
   and `photolabel train` on it (fp32).
3. Chooses alpha by the rule of 2026-11-28, fixed before any figure: the lowest
   sum of the image, room and scene heads' hold-out NLLs (photos neither the
   fine-tune nor the head fit saw; `photolabel train` writes them in the
   heads file's notes).
4. Quantises the chosen soup (quantize_backbone.py, 7-bit weights), gives it
   the context, and trains its heads: the candidate default pair.
5. Measures with `photolabel eval --split val|val_real --json`: both
   candidates, each --extra run alone at the chosen alpha (fp32), and the
   shipped pairs side by side in the same run. Prints the table the model
   card needs and writes WORK/summary.json.

It commits nothing: shipping means copying the two ONNX and the two heads
files into models/ (see models/README.md), then regenerating the golden
embeddings (tools/reference_embeddings.py) and the floors.

Time on the 2-core VM: about 12 minutes per alpha (embedding the train split
in fp32, then fitting), 7 to quantise, about 10 for the int8 heads and 3 per
evaluation.
"""
import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TOOLS = REPO / "tools"
sys.path.insert(0, str(HERE))
from common import sha256  # noqa: E402
DELTA = "delta.npz"
IMAGENET_COMMIT = "c6270f1"  # the last commit that shipped the ImageNet export
LISTING = ("es_gray", "vn_listings_dev", "zind_empty_home")


def say(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd, log=None):
    """Runs cmd from the repository root; with `log`, its standard output goes
    there, and only once it has succeeded (a resumed run skips existing files)."""
    say(" ".join(map(str, cmd)))
    if log is None:
        subprocess.run(list(map(str, cmd)), cwd=REPO, check=True)
        return
    tmp = Path(f"{log}.tmp")
    with open(tmp, "w") as f:
        subprocess.run(list(map(str, cmd)), cwd=REPO, check=True, stdout=f)
    tmp.replace(log)


def delta_file(files, name):
    """Run NAME's delta.npz, checked against SHA256SUMS."""
    path = files / f"{name}-{DELTA}"
    if not path.exists():
        fallback = files / f"{name}-backbone_ft_fp16.pt"
        hint = (f"; its export failed on the device: export {fallback} with tools/export_backbone.py "
                "--finetuned and pass the ONNX instead (interpolate.py takes either)") if fallback.exists() else ""
        raise SystemExit(f"no {path}{hint}")
    want = {}
    for line in (files / "SHA256SUMS").read_text().splitlines():
        digest, fname = line.split()
        want[fname.lstrip("*")] = digest
    got = sha256(path)
    if want.get(path.name) != got:
        raise SystemExit(f"{path}: sha256 {got} is not the one in SHA256SUMS")
    return path


def holdout_nll(heads):
    """Sum of the image, room and scene hold-out NLLs in a heads file's notes."""
    notes = json.loads(Path(heads).read_text())["training"]["notes"]
    total = {}
    for note in notes:
        m = re.match(r"(image|room|scene): .*hold-out NLL ([0-9.]+)", note)
        if m:
            total[m.group(1)] = float(m.group(2))
    if set(total) != {"image", "room", "scene"}:
        raise SystemExit(f"{heads}: no hold-out NLLs in its notes (a photolabel built before they were written?)")
    return total


def figures(val, real):
    """The model card's row: val levels and the listing sources of val_real."""
    v = json.loads(Path(val).read_text())
    r = json.loads(Path(real).read_text())
    room = r["leaf"]["per_class"].get("room", {})
    row = {
        "val_image": v["image_class"]["accuracy"], "val_room": v["room"]["accuracy"],
        "val_scene": v["scene"]["accuracy"], "val_leaf": v["leaf"]["accuracy"],
        "val_houses": v["by_source"]["houses_dataset"]["leaf"]["accuracy"], "val_ece": v["ece"],
        "real_leaf": r["leaf"]["accuracy"], "real_ece": r["ece"],
        "empty_room_precision": room.get("precision"), "empty_room_recall": room.get("recall"),
        "passes_val": v["views_per_photo"], "passes_real": r["views_per_photo"],
    }
    for s in LISTING:
        g = r["by_source"][s]
        row[s] = g["leaf"]["accuracy"]
        row[s + "_worst_level_ece"] = max(g[k]["ece"] for k in ("image_class", "room", "subclass", "scene", "leaf")
                                          if g[k]["count"])
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--alphas", default="0.2,0.3,0.4,0.5,0.7,1.0")
    ap.add_argument("--soup", default="A,B", help="the runs averaged before the interpolation")
    ap.add_argument("--extra", default="C", help="runs also measured alone at the chosen alpha (fp32); "
                    "missing ones are skipped")
    ap.add_argument("--bin", default="target/release/photolabel")
    ap.add_argument("--labels", default="../shared/data/labels.csv")
    args = ap.parse_args()
    py = sys.executable
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "emb"
    labels = args.labels

    soup = [delta_file(args.files, n) for n in args.soup.split(",")]
    extra_files = {n: delta_file(args.files, n) for n in args.extra.split(",")
                   if n and (args.files / f"{n}-{DELTA}").exists()}
    imagenet = work / "imagenet.onnx"
    if not imagenet.exists():
        imagenet.write_bytes(subprocess.run(["git", "show", f"{IMAGENET_COMMIT}:models/efficientnet-lite2.onnx"],
                                            cwd=REPO, check=True, capture_output=True).stdout)

    def fp32_pair(tag, inputs, alpha):
        pre, ctx, heads = work / f"{tag}-pre.onnx", work / f"{tag}.onnx", work / f"{tag}-heads.json"
        if not pre.exists():
            run([py, HERE / "interpolate.py", "--base", imagenet, "--alpha", alpha, "--out", pre, *inputs])
        if not ctx.exists():
            run([py, TOOLS / "add_context_features.py", pre, ctx])
        if not heads.exists():
            run([args.bin, "train", "--labels", labels, "--backbone", ctx, "--out", heads, "--cache", cache])
        return pre, ctx, heads

    def evaluate(tag, backbone, heads):
        out = {}
        for split in ("val", "val_real"):
            path = work / f"eval-{tag}-{split}.json"
            if not path.exists():
                cmd = [args.bin, "eval", labels, "--split", split, "--json", "--cache", cache]
                cmd += ["--backbone", backbone] + (["--heads", heads] if heads else [])
                run(cmd, log=path)
            out[split] = path
        return figures(out["val"], out["val_real"])

    nll = {}
    for a in args.alphas.split(","):
        _, _, heads = fp32_pair(f"soup-{a}", soup, a)
        nll[a] = holdout_nll(heads)
        say(f"alpha {a}: hold-out NLL {nll[a]} sum {sum(nll[a].values()):.4f}")
    best = min(nll, key=lambda a: sum(nll[a].values()))
    say(f"chosen alpha {best}")
    pre, ctx, heads = fp32_pair(f"soup-{best}", soup, best)

    int8_pre, int8 = work / "int8-pre.onnx", work / "int8.onnx"
    int8_heads = work / "int8-heads.json"
    if not int8_pre.exists():
        run([py, TOOLS / "quantize_backbone.py", pre, int8_pre])
    if not int8.exists():
        run([py, TOOLS / "add_context_features.py", int8_pre, int8])
    if not int8_heads.exists():
        run([args.bin, "train", "--labels", labels, "--backbone", int8, "--out", int8_heads, "--cache", cache])

    rows = {
        "shipped int8": evaluate("shipped-int8", "int8", None),
        "shipped fp32": evaluate("shipped-fp32", "fp32", None),
        f"soup α {best}, int8": evaluate("int8", int8, int8_heads),
        f"soup α {best}, fp32": evaluate(f"soup-{best}", ctx, heads),
    }
    for n, f in extra_files.items():
        _, c, h = fp32_pair(f"{n}-{best}", [f], best)
        rows[f"{n} alone α {best}, fp32"] = evaluate(f"{n}-{best}", c, h)

    summary = {"alphas": nll, "chosen_alpha": best, "rows": rows,
               "files": {p.name: sha256(p) for p in [int8, ctx, heads, int8_heads]}}
    (work / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    cols = ["val_image", "val_room", "val_scene", "val_leaf", "val_houses", "val_ece", "real_leaf", *LISTING,
            "empty_room_precision", "empty_room_recall", "real_ece", "passes_val", "passes_real"]
    print("| | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join("–" if row[c] is None else f"{row[c]:.4f}" for c in cols) + " |")
    say(f"wrote {work / 'summary.json'}")


if __name__ == "__main__":
    main()
