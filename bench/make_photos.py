"""Generates the benchmark's photos: COUNT 1440×960 JPEGs made from the
fixture photos in tests/fixtures (crops, mirror images, exposure and colour
shifts, sensor-like noise, a few stored rotated with an EXIF orientation),
deterministic for a given seed. Nothing from ../shared/data is used.

  python bench/make_photos.py OUT_DIR [--count 200] [--seed 4]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
# Photos with one clear label each (tests/fixtures/README.md); the tiled
# 1440×960 fixture is left out because it mixes several rooms.
SOURCES = sorted((ROOT / "tests/fixtures/photos").glob("*.jpg")) + [
    ROOT / "tests/fixtures/bench/kitchen_640x480.jpg"
]
WIDTH, HEIGHT = 1440, 960
ORIENTATION = 0x0112


def variation(source: Image.Image, rng: random.Random, nprng: np.random.Generator) -> Image.Image:
    # A crop keeping 85–100 % of each side, anywhere in the frame.
    w, h = source.size
    cw, ch = int(w * rng.uniform(0.85, 1.0)), int(h * rng.uniform(0.85, 1.0))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    image = source.crop((x, y, x + cw, y + ch)).resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.9, 1.1))
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.9, 1.1))
    # Fine noise, so the JPEG carries as much detail as a camera photo does.
    pixels = np.asarray(image, dtype=np.int16) + nprng.normal(0, 4, (HEIGHT, WIDTH, 3)).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    nprng = np.random.default_rng(args.seed)
    sources = [(p.stem, Image.open(p).convert("RGB")) for p in SOURCES]
    for i in range(args.count):
        name, source = sources[i % len(sources)]
        image = variation(source, rng, nprng)
        exif = Image.Exif()
        if i % 10 == 3:
            # Stored rotated, displayed upright 1440×960 by its EXIF orientation.
            image = image.transpose(Image.Transpose.ROTATE_270)
            exif[ORIENTATION] = 6
        image.save(args.out / f"{i:03d}_{name}.jpg", quality=rng.choice([85, 88, 90, 92]), exif=exif)
    print(f"{args.count} photos in {args.out}")


if __name__ == "__main__":
    main()
