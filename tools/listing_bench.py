#!/usr/bin/env python3
"""End-to-end benchmark of `photolabel listing`: duplicates, quality flags
and cover choice, measured on generated listings built from the labelled
photos in ../shared/data (labels.csv).

  cargo build --release && python3 tools/listing_bench.py all --out /tmp/listing-bench

Subcommands (each writes its images under --out/<subcommand>/, wiping only
that folder, runs the binary once with every listing directory, and scores
its CSV):

  duplicates  One listing per house (houses_dataset: 4 different rooms of one
              house, the hard negatives), per vn_listings_dev listing, and one
              for zind_empty_home (different angles of the same rooms). Every
              original (upscaled to a 1024 px long side, JPEG q95) sits next to
              its copies: q60 (re-encoded at quality 60), half (50 % resize),
              crop10 (seeded 90 % x 90 % crop), bright / dark (brightness
              x1.15 / x0.85) and watermark (semi-transparent text and a bottom
              banner). Scores pair precision and recall over every unordered
              pair of photos within a listing, per transform and per source,
              lists the worst false-positive pairs, counts merged rooms of one
              house (hard negatives) and which photo of a group was kept.
              Targets: precision >= 0.99 and recall >= 0.95, overall and per
              transform; no two rooms of one house merged.
  quality     ~300 photos with a native long side >= 500 px, resized to
              1024 px, as orig / blur2 / blur3 (Gaussian sigma 2 / 3 px) /
              dark25 (pixel values x0.25). Reports the share of each variant
              flagged blurry, dark, overexposed and small. Targets: blur2 and
              blur3 blurry >= 95 %, orig blurry <= 5 %, dark25 dark >= 95 %,
              nothing at 1024 px flagged small.
  cover       One listing per Houses-dataset house, its photos copied as they
              are. Target: the cover is the frontal photo in >= 97 % of houses
              (also reported for all-val houses and for houses with a train
              photo, since the model was trained on the latter).
  all         The three in turn, then every PASS/MISS line again.

Options: --bin PATH (default target/release/photolabel of this repo),
--photos N (originals for duplicates, default 320, and quality, default 300;
for cover, N/4 houses instead of all of them), --seed S, --jobs J (image
generation processes), --data DIR, --json FILE (all figures and targets).

Deterministic: the same --seed, data and Pillow give the same images. The
exit status is non-zero only on errors (a missing binary, a failed run, a
malformed CSV); a missed target prints MISS and still exits 0. A study tool:
tests never run it; numpy is not needed, Pillow is.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path("/work/shared/data")
DEFAULT_BIN = ROOT / "target" / "release" / "photolabel"

# Marks a folder as ours, so that wiping it can never delete someone's data
# when --out points somewhere unexpected.
MARKER = ".listing-bench"

LONG_SIDE = 1024
REQUIRED_COLUMNS = ("listing", "name", "position", "cover", "duplicate_of", "flags", "leaf", "error")

SOURCE_TAGS = {"houses_dataset": "houses", "zind_empty_home": "zind", "vn_listings_dev": "vn"}


# --------------------------------------------------------------------------
# Data set
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Photo:
    path: Path
    source: str
    source_label: str
    scene_class: str
    split: str
    group: str

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def frontal(self) -> bool:
        return self.source_label == "frontal" or self.scene_class == "facade"


def load_photos(data: Path) -> list[Photo]:
    with open(data / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    photos = [
        Photo(data / r["path"], r["source"], r["source_label"], r["scene_class"], r["split"], r["group"])
        for r in rows
        if r["source"] in SOURCE_TAGS
    ]
    # Sampling must not depend on the order of labels.csv.
    return sorted(photos, key=lambda p: str(p.path))


def by_group(photos: list[Photo], source: str) -> dict[str, list[Photo]]:
    groups: dict[str, list[Photo]] = defaultdict(list)
    for p in photos:
        if p.source == source:
            groups[p.group].append(p)
    return dict(sorted(groups.items()))


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------

def open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def fit_long_side(image: Image.Image, long_side: int = LONG_SIDE) -> Image.Image:
    w, h = image.size
    scale = long_side / max(w, h)
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)


def save_jpeg(image: Image.Image, path: Path, quality: int) -> None:
    image.save(path, "JPEG", quality=quality)


@functools.lru_cache(maxsize=None)
def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def half(image: Image.Image, rng: random.Random) -> Image.Image:
    w, h = image.size
    return image.resize((max(1, w // 2), max(1, h // 2)), Image.LANCZOS)


def crop10(image: Image.Image, rng: random.Random) -> Image.Image:
    # A random offset rather than a centred crop: listing sites crop anywhere.
    w, h = image.size
    cw, ch = round(w * 0.9), round(h * 0.9)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return image.crop((x, y, x + cw, y + ch))


def brighter(image: Image.Image, rng: random.Random) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(1.15)


def darker(image: Image.Image, rng: random.Random) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(0.85)


def watermark(image: Image.Image, rng: random.Random) -> Image.Image:
    """An agency watermark: a faint phone number across the middle and an
    opaque-ish banner along the bottom, together ~8-10 % of the image. It is
    in the same place on every photo, as agencies do, which also makes two
    watermarked rooms of one house look alike: a fair hard negative."""
    w, h = image.size
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    band = max(8, round(h * 0.07))
    draw.rectangle((0, h - band, w, h), fill=(15, 25, 60, 190))
    small = font(max(8, round(band * 0.5)))
    draw.text((round(band * 0.4), h - band // 2), "AGENCY REALTY  ·  www.agency.example  ·  0123 456 789",
              font=small, fill=(255, 255, 255, 235), anchor="lm")
    big = font(max(10, round(w / 15)))
    draw.text((w // 2, h // 2), "© Agency 0123 456 789", font=big, fill=(255, 255, 255, 110), anchor="mm")
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


# name -> (transform, JPEG quality). q60's whole point is the quality; the
# others are re-saved the way a careful uploader would.
COPY_QUALITY = 90
TRANSFORMS = {
    "q60": (lambda image, rng: image, 60),
    "half": (half, COPY_QUALITY),
    "crop10": (crop10, COPY_QUALITY),
    "bright": (brighter, COPY_QUALITY),
    "dark": (darker, COPY_QUALITY),
    "watermark": (watermark, COPY_QUALITY),
}


# --------------------------------------------------------------------------
# Output folders, the binary, its CSV
# --------------------------------------------------------------------------

def fresh_dir(out: Path, name: str) -> Path:
    folder = out / name
    if folder.exists():
        if not (folder / MARKER).exists() and any(folder.iterdir()):
            raise SystemExit(f"{folder}: exists and was not written by listing_bench.py; refusing to wipe it")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("written by tools/listing_bench.py; wiped on every run\n")
    return folder


def resolve_bin(binary: str) -> Path:
    path = Path(binary)
    if path.exists():
        return path
    found = shutil.which(binary)
    if found:
        return Path(found)
    raise SystemExit(f"{binary}: no such binary; run `cargo build --release` or pass --bin")


def run_listing(binary: Path, dirs: list[Path]) -> tuple[list[dict], float]:
    """Runs `photolabel listing DIR... --format csv`; stderr goes to ours."""
    command = [str(binary), "listing", *map(str, dirs), "--format", "csv"]
    print(f"running {binary} listing ({len(dirs)} listings) ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return parse_csv(done.stdout), time.perf_counter() - start


def parse_csv(text: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise SystemExit(f"listing CSV lacks column(s) {', '.join(missing)}; header: {reader.fieldnames}")
    return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def index_rows(rows: list[dict]) -> dict[tuple[str, str], dict]:
    indexed: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row["listing"], row["name"])
        if key in indexed:
            warn(f"CSV has {key[0]}/{key[1]} twice; keeping the first")
            continue
        indexed[key] = row
    return indexed


def flags_of(row: dict | None) -> set[str]:
    if not row:
        return set()
    return {f.strip().lower() for f in row["flags"].split(";") if f.strip()}


def is_true(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes")


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------

def ratio(n: int, d: int) -> float | None:
    return n / d if d else None


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def print_table(title: str, headers: list[str], rows: list[list]) -> None:
    cells = [headers] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        first = row[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        print("  " + "  ".join([first, *rest]))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


@dataclass
class Target:
    name: str
    value: float | None
    op: str  # ">=", "<=" or "=="
    goal: float
    count: bool = False  # an integer count rather than a fraction

    @property
    def passed(self) -> bool:
        if self.value is None:
            return False
        return {">=": self.value >= self.goal, "<=": self.value <= self.goal, "==": self.value == self.goal}[self.op]

    def line(self) -> str:
        show = (lambda v: str(int(v))) if self.count else (lambda v: f"{100 * v:.2f} %")
        value = "no data" if self.value is None else show(self.value)
        return f"{'PASS' if self.passed else 'MISS'}  {self.name}: {value} (target {self.op} {show(self.goal)})"

    def as_json(self) -> dict:
        return {"name": self.name, "value": self.value, "op": self.op, "goal": self.goal, "passed": self.passed}


def print_targets(targets: list[Target]) -> None:
    print()
    for t in targets:
        print(t.line())


@dataclass
class Result:
    figures: dict
    targets: list[Target] = field(default_factory=list)


# --------------------------------------------------------------------------
# duplicates
# --------------------------------------------------------------------------

@dataclass
class Listing:
    name: str
    source: str  # houses / zind / vn
    photos: list[Photo]
    with_copies: set[str]  # stems that get the transformed copies


def split_budget(n: int) -> tuple[int, int, int]:
    """(houses, zind photos, vn photos) for n originals: 5/8 houses (the hard
    negatives), 3/16 each for the zind and vn listings; 320 -> 50, 60, 60."""
    zind = min(125, max(1, round(n * 3 / 16)))
    vn = max(1, round(n * 3 / 16))
    houses = max(1, (n - zind - vn) // 4)
    return houses, zind, vn


def pick_zind(photos: list[Photo], n: int, rng: random.Random) -> list[Photo]:
    # Whole panoramas (5 yaws each), so that the listing holds many
    # overlapping angles of one room: the zind hard negatives.
    panos: dict[str, list[Photo]] = defaultdict(list)
    for p in photos:
        if p.source == "zind_empty_home":
            panos[p.stem.rsplit("_y", 1)[0]].append(p)
    keys = sorted(panos)
    rng.shuffle(keys)
    chosen = [p for k in keys for p in panos[k]][:n]
    return sorted(chosen, key=lambda p: p.stem)


def pick_groups(groups: dict[str, list[Photo]], n: int, rng: random.Random) -> list[tuple[str, list[Photo]]]:
    keys = list(groups)
    rng.shuffle(keys)
    picked, total = [], 0
    for k in keys:
        if total >= n:
            break
        picked.append((k, groups[k]))
        total += len(groups[k])
    return sorted(picked)


def select_duplicates(photos: list[Photo], n: int, rng: random.Random) -> list[Listing]:
    n_houses, n_zind, n_vn = split_budget(n)
    # Only complete houses: four different rooms of one house are the point.
    houses = {k: v for k, v in by_group(photos, "houses_dataset").items()
              if len(v) == 4 and any(p.frontal for p in v)}
    listings = [Listing(k, "houses", v, {p.stem for p in v})
                for k, v in pick_groups(houses, 4 * n_houses, rng)]
    zind = pick_zind(photos, n_zind, rng)
    # Copies for half of the zind views keep its one listing a sane size;
    # the others still take part as negatives.
    with_copies = {p.stem for p in rng.sample(zind, (len(zind) + 1) // 2)}
    listings.append(Listing("zind", "zind", zind, with_copies))
    for k, v in pick_groups(by_group(photos, "vn_listings_dev"), n_vn, rng):
        name = k if k.startswith("vn-") else f"vn-{k}"
        listings.append(Listing(name, "vn", v, {p.stem for p in v}))
    return listings


def make_duplicate_set(job: tuple) -> list[tuple[str, str]]:
    """Writes one original and its copies; returns (name, transform) pairs.
    Runs in a worker process, so its randomness comes from its own seed."""
    src, folder, stem, copies, seed = job
    rng = random.Random(seed)
    image = fit_long_side(open_rgb(src))
    save_jpeg(image, folder / f"{stem}.jpg", 95)
    written = [(f"{stem}.jpg", "orig")]
    if copies:
        for transform, (apply, quality) in TRANSFORMS.items():
            name = f"{stem}__{transform}.jpg"
            save_jpeg(apply(image, rng), folder / name, quality)
            written.append((name, transform))
    return written


def generate_duplicates(out: Path, listings: list[Listing], seed: int, jobs: int) -> list[dict]:
    jobs_list, owners = [], []
    for listing in listings:
        folder = out / listing.name
        folder.mkdir()
        for p in listing.photos:
            copies = p.stem in listing.with_copies
            jobs_list.append((p.path, folder, p.stem, copies, f"{seed}:duplicates:{listing.name}:{p.stem}"))
            owners.append((listing, p))
    manifest = []
    with ProcessPoolExecutor(jobs) as pool:
        for (listing, p), written in zip(owners, pool.map(make_duplicate_set, jobs_list, chunksize=4)):
            for name, transform in written:
                manifest.append({"listing": listing.name, "source": listing.source, "name": name,
                                 "original": p.stem, "transform": transform, "from": str(p.path)})
    return manifest


def group_ids(names: set[str], rows: dict[str, dict]) -> dict[str, str]:
    """The kept photo each photo maps to: its duplicate_of, followed in case
    the binary chains them, else itself. Missing photos stand alone."""
    ids = {}
    for name in names:
        current, seen = name, {name}
        while True:
            target = rows.get(current, {}).get("duplicate_of", "")
            if not target:
                break
            if target in seen:  # a cycle: give all its photos one id
                current = min(seen)
                break
            if target not in names:
                warn(f"{name}: duplicate_of {target!r} is not a photo of its listing")
                current = target
                break
            current = target
            seen.add(target)
        ids[name] = current
    return ids


@dataclass
class PairCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: "PairCounts") -> None:
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn

    @property
    def precision(self) -> float | None:
        return ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        return ratio(self.tp, self.tp + self.fn)


def score_listing(items: list[dict], ids: dict[str, str], acc: dict) -> None:
    """Adds one listing's pairs to the accumulators in `acc`."""
    truth = {i["name"]: i["original"] for i in items}
    transform = {i["name"]: i["transform"] for i in items}
    source, listing = items[0]["source"], items[0]["listing"]
    clusters: dict[str, list[str]] = defaultdict(list)
    for name in sorted(truth):
        clusters[ids[name]].append(name)

    counts = PairCounts()
    for members in clusters.values():
        for a, b in combinations(members, 2):
            same = truth[a] == truth[b]
            counts.tp += same
            counts.fp += not same
            for t in {transform[a], transform[b]}:
                acc["by_transform"][t].tp += same
                acc["by_transform"][t].fp += not same
            if not same:
                kind = "–".join(sorted((transform[a], transform[b])))
                acc["fp_kinds"][(source, kind)] += 1
                key = (listing, *sorted((truth[a], truth[b])))
                acc["fp_originals"][key].append((a, b))

    members_of: dict[str, list[str]] = defaultdict(list)
    for name, original in truth.items():
        members_of[original].append(name)
    truth_pairs = sum(len(m) * (len(m) - 1) // 2 for m in members_of.values())
    counts.fn = truth_pairs - counts.tp
    acc["by_source"][source].add(counts)
    acc["overall"].add(counts)

    for original, members in members_of.items():
        score_group(original, members, transform, ids, acc)


def score_group(original: str, members: list[str], transform: dict, ids: dict, acc: dict) -> None:
    """Per-transform recall (the copy grouped with its original) and which
    photo of the group the binary kept."""
    orig_name = f"{original}.jpg"
    for name in members:
        if name == orig_name:
            continue
        t = transform[name]
        grouped = ids[name] == ids[orig_name]
        acc["copy_grouped"][t][0] += grouped
        acc["copy_grouped"][t][1] += 1
    if len(members) == 1:
        return
    kept = ids[orig_name]
    others = [m for m in members if m != orig_name and ids[m] == kept]
    if not others:
        acc["kept"]["(original not grouped)"] += 1
    elif kept not in transform or kept not in members:
        acc["kept"]["(a photo of another original)"] += 1
    else:
        acc["kept"][transform[kept]] += 1


def score_duplicates(manifest: list[dict], rows: dict[tuple[str, str], dict]) -> dict:
    acc = {
        "overall": PairCounts(),
        "by_source": defaultdict(PairCounts),
        "by_transform": defaultdict(PairCounts),
        "copy_grouped": defaultdict(lambda: [0, 0]),
        "fp_kinds": Counter(),
        "fp_originals": defaultdict(list),
        "kept": Counter(),
    }
    per_listing: dict[str, list[dict]] = defaultdict(list)
    for item in manifest:
        per_listing[item["listing"]].append(item)
    missing = errors = 0
    for listing, items in per_listing.items():
        listing_rows = {}
        for item in items:
            row = rows.get((listing, item["name"]))
            if row is None:
                missing += 1
                continue
            errors += bool(row["error"])
            listing_rows[item["name"]] = row
        score_listing(items, group_ids({i["name"] for i in items}, listing_rows), acc)
    acc["missing"], acc["errors"] = missing, errors
    return acc


FP_KINDS_SHOWN = 8
WORST_SHOWN = 10


def report_duplicates(acc: dict, manifest: list[dict]) -> Result:
    photos = Counter(i["source"] for i in manifest)
    source_of = {i["listing"]: i["source"] for i in manifest}
    originals = Counter(i["source"] for i in manifest if i["transform"] == "orig")
    print(f"\n== duplicates: {len(manifest)} photos from {sum(originals.values())} originals "
          f"in {len({i['listing'] for i in manifest})} listings; "
          f"{acc['missing']} missing from the CSV, {acc['errors']} with an error")

    overall = acc["overall"]
    rows = [["all", sum(originals.values()), len(manifest), overall.tp, overall.fp, overall.fn,
             pct(overall.precision), pct(overall.recall)]]
    for source in ("houses", "zind", "vn"):
        c = acc["by_source"][source]
        rows.append([source, originals[source], photos[source], c.tp, c.fp, c.fn, pct(c.precision), pct(c.recall)])
    print_table("pairs within a listing, by source",
                ["source", "originals", "photos", "TP", "FP", "FN", "precision", "recall"], rows)

    rows = []
    for t in ["orig", *TRANSFORMS]:
        c = acc["by_transform"][t]
        grouped, total = acc["copy_grouped"][t] if t != "orig" else (None, None)
        rows.append([t, c.tp, c.fp, pct(c.precision),
                     "-" if total is None else f"{grouped}/{total}",
                     "-" if total is None else pct(ratio(grouped, total))])
    print_table("by transform (pairs involving a photo of it; recall = copy grouped with its original)",
                ["transform", "TP", "FP", "precision", "grouped", "recall"], rows)

    merges = Counter(source_of[l] for (l, _, _) in acc["fp_originals"])
    print_table("false positives by source", ["source", "photo pairs", "merged originals"],
                [[s, acc["by_source"][s].fp, merges[s]] for s in ("houses", "zind", "vn")])
    kinds = sorted(acc["fp_kinds"].items(), key=lambda kv: (-kv[1], kv[0]))
    if kinds:
        # Which transforms the wrongly paired photos carry: orig–orig is two
        # genuinely different photos, watermark–watermark the shared banner.
        print_table("commonest kinds of false-positive pair", ["source", "kind", "pairs"],
                    [[s, k, n] for (s, k), n in kinds[:FP_KINDS_SHOWN]])
        if len(kinds) > FP_KINDS_SHOWN:
            print(f"  ... and {len(kinds) - FP_KINDS_SHOWN} more kinds (see --json)")

    worst = sorted(acc["fp_originals"].items(), key=lambda kv: (-len(kv[1]), kv[0]))[:WORST_SHOWN]
    if worst:
        print_table("worst merged originals (photo pairs linking two different originals)",
                    ["listing", "original A", "original B", "photo pairs", "originals themselves"],
                    [[l, f"{a}.jpg", f"{b}.jpg", len(p), "merged" if (f"{a}.jpg", f"{b}.jpg") in p else "apart"]
                     for (l, a, b), p in worst])

    house_merges = merges["houses"]
    house_fp = acc["by_source"]["houses"].fp
    print(f"\nhard negatives: {house_merges} pair(s) of different rooms of one house merged ({house_fp} photo pairs)")

    kept_total = sum(acc["kept"].values())
    print_table("kept photo of each original's group", ["kept", "groups", "share"],
                [[k, n, pct(ratio(n, kept_total))] for k, n in acc["kept"].most_common()])

    targets = [
        Target("duplicates pair precision", overall.precision, ">=", 0.99),
        Target("duplicates pair recall", overall.recall, ">=", 0.95),
    ]
    for t in TRANSFORMS:
        grouped, total = acc["copy_grouped"][t]
        targets.append(Target(f"duplicates {t} recall", ratio(grouped, total), ">=", 0.95))
        targets.append(Target(f"duplicates {t} precision", acc["by_transform"][t].precision, ">=", 0.99))
    targets.append(Target("duplicates merged rooms of one house", house_merges, "==", 0, count=True))
    print_targets(targets)

    figures = {
        "photos": len(manifest), "originals": dict(originals), "missing": acc["missing"], "errors": acc["errors"],
        "overall": vars(overall) | {"precision": overall.precision, "recall": overall.recall},
        "by_source": {s: vars(c) | {"precision": c.precision, "recall": c.recall} for s, c in acc["by_source"].items()},
        "by_transform": {t: {"tp": c.tp, "fp": c.fp, "precision": c.precision} for t, c in acc["by_transform"].items()},
        "copy_grouped": {t: {"grouped": g, "total": n} for t, (g, n) in acc["copy_grouped"].items()},
        "fp_kinds": [{"source": s, "kind": k, "pairs": n} for (s, k), n in kinds],
        "worst_merges": [{"listing": l, "a": a, "b": b, "pairs": len(p)} for (l, a, b), p in worst],
        "house_merges": house_merges, "house_fp_pairs": house_fp,
        "kept": dict(acc["kept"]),
    }
    return Result(figures, targets)


def cmd_duplicates(args) -> Result:
    out = fresh_dir(args.out, "duplicates")
    listings = select_duplicates(load_photos(args.data), args.photos or 320, random.Random(f"{args.seed}:duplicates"))
    start = time.perf_counter()
    manifest = generate_duplicates(out, listings, args.seed, args.jobs)
    generated = time.perf_counter() - start
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"duplicates: generated {len(manifest)} photos in {len(listings)} listings under {out} in {generated:.1f} s",
          file=sys.stderr)
    rows, ran = run_listing(args.bin, [out / l.name for l in listings])
    result = report_duplicates(score_duplicates(manifest, index_rows(rows)), manifest)
    print(f"\ntimes: generation {generated:.1f} s, binary {ran:.1f} s")
    result.figures["seconds"] = {"generation": generated, "binary": ran}
    return result


# --------------------------------------------------------------------------
# quality
# --------------------------------------------------------------------------

QUALITY_VARIANTS = {
    "orig": lambda image: image,
    # Pillow's GaussianBlur radius is the standard deviation.
    "blur2": lambda image: image.filter(ImageFilter.GaussianBlur(2)),
    "blur3": lambda image: image.filter(ImageFilter.GaussianBlur(3)),
    "dark25": lambda image: image.point(lambda v: round(v * 0.25)),
}
LISTING_MAX = 60
QUALITY_FLAGS = ("blurry", "dark", "overexposed", "small")
# Shares of the quality sample; houses_dataset would otherwise be 3/4 of it.
QUALITY_SHARES = {"houses_dataset": 0.5, "zind_empty_home": 0.25, "vn_listings_dev": 0.25}


def select_quality(photos: list[Photo], n: int, rng: random.Random) -> list[Photo]:
    # Native size >= 500 px so the 1024 px version is not mostly upscaling blur.
    eligible: dict[str, list[Photo]] = defaultdict(list)
    for p in photos:
        with Image.open(p.path) as image:
            if max(image.size) >= 500:
                eligible[p.source].append(p)
    chosen = []
    for source, share in QUALITY_SHARES.items():
        pool = eligible[source]
        chosen += rng.sample(pool, min(len(pool), round(n * share)))
    return chosen


def make_quality_set(job: tuple) -> None:
    src, targets = job
    image = fit_long_side(open_rgb(src))
    for variant, path in targets:
        save_jpeg(QUALITY_VARIANTS[variant](image), path, 90)


def generate_quality(out: Path, chosen: list[Photo], jobs: int) -> tuple[list[dict], list[Path]]:
    # One variant per listing, so that no listing holds two versions of a
    # photo (the duplicate detector must not get a say in the flags).
    manifest, dirs, jobs_list = [], [], []
    chunks = (len(chosen) + LISTING_MAX - 1) // LISTING_MAX
    for variant in QUALITY_VARIANTS:
        for c in range(chunks):
            folder = out / f"{variant}-{c:02d}"
            folder.mkdir()
            dirs.append(folder)
    for i, p in enumerate(chosen):
        targets = []
        for variant in QUALITY_VARIANTS:
            listing = f"{variant}-{i // LISTING_MAX:02d}"
            name = f"{p.stem}.jpg"
            targets.append((variant, out / listing / name))
            manifest.append({"listing": listing, "name": name, "variant": variant,
                             "source": SOURCE_TAGS[p.source], "from": str(p.path)})
        jobs_list.append((p.path, targets))
    with ProcessPoolExecutor(jobs) as pool:
        list(pool.map(make_quality_set, jobs_list, chunksize=4))
    return manifest, dirs


def score_quality(manifest: list[dict], rows: dict[tuple[str, str], dict]) -> dict:
    """Counts per (variant, source) and per (variant, "all"): photos scored,
    missing, errors and each flag."""
    stats: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for item in manifest:
        row = rows.get((item["listing"], item["name"]))
        for key in ((item["variant"], "all"), (item["variant"], item["source"])):
            if row is None:
                stats[key]["missing"] += 1
            elif row["error"]:
                stats[key]["errors"] += 1
            else:
                stats[key]["n"] += 1
                for flag in flags_of(row) & set(QUALITY_FLAGS):
                    stats[key][flag] += 1
    return stats


def flag_rate(stats: dict, variant: str, flag: str, source: str = "all") -> float | None:
    s = stats.get((variant, source), Counter())
    return ratio(s[flag], s["n"])


def report_quality(stats: dict, manifest: list[dict]) -> Result:
    print(f"\n== quality: {len(manifest)} photos, {len(manifest) // len(QUALITY_VARIANTS)} per variant, "
          f"long side {LONG_SIDE} px (share of photos labelled without error)")
    rows = []
    for variant in QUALITY_VARIANTS:
        for source in ("all", "houses", "zind", "vn"):
            s = stats.get((variant, source), Counter())
            rows.append([variant if source == "all" else "", source, s["n"], s["missing"] + s["errors"],
                         *(pct(ratio(s[f], s["n"])) for f in QUALITY_FLAGS)])
    print_table("flags by variant", ["variant", "source", "n", "missing/err", *QUALITY_FLAGS], rows)

    targets = [
        Target("quality blur2 flagged blurry", flag_rate(stats, "blur2", "blurry"), ">=", 0.95),
        Target("quality blur3 flagged blurry", flag_rate(stats, "blur3", "blurry"), ">=", 0.95),
        Target("quality orig flagged blurry", flag_rate(stats, "orig", "blurry"), "<=", 0.05),
        Target("quality dark25 flagged dark", flag_rate(stats, "dark25", "dark"), ">=", 0.95),
    ]
    small = [flag_rate(stats, v, "small") for v in QUALITY_VARIANTS]
    targets.append(Target("quality 1024 px photos flagged small", max((s for s in small if s is not None), default=None),
                          "<=", 0.0))
    print(f"\noriginals flagged dark: {pct(flag_rate(stats, 'orig', 'dark'))}, "
          f"overexposed: {pct(flag_rate(stats, 'orig', 'overexposed'))} (no target; should be rare)")
    print_targets(targets)
    figures = {f"{v}/{s}": dict(c) for (v, s), c in sorted(stats.items())}
    return Result({"photos": len(manifest), "stats": figures}, targets)


def cmd_quality(args) -> Result:
    out = fresh_dir(args.out, "quality")
    chosen = select_quality(load_photos(args.data), args.photos or 300, random.Random(f"{args.seed}:quality"))
    start = time.perf_counter()
    manifest, dirs = generate_quality(out, chosen, args.jobs)
    generated = time.perf_counter() - start
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"quality: generated {len(manifest)} photos in {len(dirs)} listings under {out} in {generated:.1f} s",
          file=sys.stderr)
    rows, ran = run_listing(args.bin, dirs)
    result = report_quality(score_quality(manifest, index_rows(rows)), manifest)
    print(f"\ntimes: generation {generated:.1f} s, binary {ran:.1f} s")
    result.figures["seconds"] = {"generation": generated, "binary": ran}
    return result


# --------------------------------------------------------------------------
# cover
# --------------------------------------------------------------------------

def select_cover(photos: list[Photo], n: int | None, rng: random.Random) -> dict[str, list[Photo]]:
    houses = by_group(photos, "houses_dataset")
    if n:
        keys = sorted(rng.sample(sorted(houses), min(len(houses), max(1, n // 4))))
        houses = {k: houses[k] for k in keys}
    return houses


def generate_cover(out: Path, houses: dict[str, list[Photo]]) -> list[dict]:
    # Copies, not symlinks: the binary may skip what is not a regular file.
    manifest = []
    for house, photos in houses.items():
        folder = out / house
        folder.mkdir()
        for p in photos:
            shutil.copyfile(p.path, folder / p.path.name)
            manifest.append({"listing": house, "name": p.path.name, "frontal": p.frontal, "split": p.split})
    return manifest


def leaf_shown(row: dict) -> str:
    if not row:
        return "(missing)"
    return "(error)" if row["error"] else row["leaf"] or "(none)"


def house_subset(splits: set[str]) -> str:
    return "val" if splits == {"val"} else "train" if "train" in splits else "other"


def score_cover(manifest: list[dict], rows: dict[tuple[str, str], dict]) -> list[dict]:
    """One record per house that has a frontal photo."""
    houses: dict[str, list[dict]] = defaultdict(list)
    for item in manifest:
        houses[item["listing"]].append(item)
    records = []
    for house, items in sorted(houses.items()):
        frontal = [i for i in items if i["frontal"]]
        if not frontal:
            continue
        front = rows.get((house, frontal[0]["name"]), {})
        covers = [i["name"] for i in items if is_true(rows.get((house, i["name"]), {}).get("cover", ""))]
        cover = covers[0] if len(covers) == 1 else None
        records.append({
            "house": house,
            "subset": house_subset({i["split"] for i in items}),
            "photos": len(items),
            "frontal": frontal[0]["name"],
            "frontal_leaf": leaf_shown(front),
            "frontal_position": front.get("position", ""),
            "covers": len(covers),
            "cover": cover,
            "cover_leaf": rows.get((house, cover), {}).get("leaf", "") if cover else "",
            "ok": cover == frontal[0]["name"],
        })
    return records


def report_cover(records: list[dict], manifest: list[dict]) -> Result:
    houses = len({i["listing"] for i in manifest})
    print(f"\n== cover: {houses} houses, {len(records)} with a frontal photo (the others are not scored)")
    rows, shares = [], {}
    for subset in ("all", "val", "train"):
        rs = [r for r in records if subset == "all" or r["subset"] == subset]
        ok = sum(r["ok"] for r in rs)
        first = sum(r["frontal_position"] == "1" for r in rs)
        shares[subset] = ratio(ok, len(rs))
        rows.append([subset, len(rs), ok, pct(ratio(ok, len(rs))), pct(ratio(first, len(rs)))])
    print_table("cover is the frontal photo (val: every photo of the house in val; train: any in train)",
                ["houses", "n", "cover ok", "share", "frontal at position 1"], rows)

    wrong = [r for r in records if not r["ok"]]
    if wrong:
        print_table("leaf of the frontal photo where the cover is wrong", ["leaf", "houses"],
                    [[k, n] for k, n in Counter(r["frontal_leaf"] for r in wrong).most_common()])
        print_table("failing houses", ["house", "subset", "cover (leaf)", "frontal (leaf, position)"],
                    [[r["house"], r["subset"],
                      f"{r['cover']} ({r['cover_leaf']})" if r["cover"] else f"({r['covers']} covers)",
                      f"{r['frontal']} ({r['frontal_leaf']}, {r['frontal_position'] or '-'})"] for r in wrong])
    targets = [
        Target("cover is the frontal photo, all houses", shares["all"], ">=", 0.97),
        Target("cover is the frontal photo, val houses", shares["val"], ">=", 0.97),
    ]
    print_targets(targets)
    return Result({"houses": houses, "scored": len(records), "share": shares,
                   "failing": wrong}, targets)


def cmd_cover(args) -> Result:
    out = fresh_dir(args.out, "cover")
    houses = select_cover(load_photos(args.data), args.photos, random.Random(f"{args.seed}:cover"))
    start = time.perf_counter()
    manifest = generate_cover(out, houses)
    generated = time.perf_counter() - start
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    rows, ran = run_listing(args.bin, [out / h for h in houses])
    result = report_cover(score_cover(manifest, index_rows(rows)), manifest)
    print(f"\ntimes: generation {generated:.1f} s, binary {ran:.1f} s")
    result.figures["seconds"] = {"generation": generated, "binary": ran}
    return result


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

COMMANDS = {"duplicates": cmd_duplicates, "quality": cmd_quality, "cover": cmd_cover}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=[*COMMANDS, "all"])
    parser.add_argument("--out", type=Path, required=True, help="folder for the generated listings")
    parser.add_argument("--bin", default=str(DEFAULT_BIN), help="the photolabel binary (default: %(default)s)")
    parser.add_argument("--photos", type=int, help="originals: duplicates 320, quality 300, cover all houses")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="image generation processes")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding labels.csv")
    parser.add_argument("--json", type=Path, help="also write the figures and targets here")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    args.bin = resolve_bin(args.bin)  # before minutes of image generation
    names = list(COMMANDS) if args.command == "all" else [args.command]
    results = {}
    try:
        for name in names:
            results[name] = COMMANDS[name](args)
    except subprocess.CalledProcessError as e:
        print(f"error: {e.cmd[0]} listing exited with status {e.returncode}", file=sys.stderr)
        return 2
    targets = [t for r in results.values() for t in r.targets]
    if len(names) > 1:
        print("\n== all targets")
        for t in targets:
            print(t.line())
    if args.json:
        document = {n: r.figures | {"targets": [t.as_json() for t in r.targets]} for n, r in results.items()}
        args.json.write_text(json.dumps(document, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
