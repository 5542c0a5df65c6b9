#!/usr/bin/env python3
"""Writes the hostile-upload corpus into tests/fixtures/hostile/.

Every file is what a careless or malicious client might upload to
POST /labelling/img; crates/service/tests/hostile.rs posts each one to the
real endpoint (with the real model) and asserts its documented response.
The table of files, what each is and the expected response is in
tests/fixtures/hostile/README.md.

Deterministic: the same Pillow (13.0.0 wrote the committed files) gives the
same bytes. Tests never run this script; rerun it only to change the corpus:

    pip install pillow==13.0.0
    python3 tools/hostile_corpus.py

Sources are the committed fixture photos (tests/fixtures/photos/). The
multi-megabyte trailing-garbage upload is not a file here: the test builds it
at run time from `trailing_base.jpg`.
"""

import io
import struct
import zipfile
import zlib
from pathlib import Path

from PIL import Image, ImageChops, ImageOps

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "tests" / "fixtures" / "photos"
OUT = ROOT / "tests" / "fixtures" / "hostile"

# Small but still clearly labelled by the model: 288x192 keeps the whole
# corpus at a few hundred KB.
JPEG_SIZE = (288, 192)
PNG_SIZE = (144, 96)


def source(name, size):
    image = Image.open(PHOTOS / name).convert("RGB")
    return image.resize(size, Image.BICUBIC)


def jpeg(image, **options):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=options.pop("quality", 90), **options)
    return buffer.getvalue()


def png(image, **options):
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True, **options)
    return buffer.getvalue()


def marker_offset(data, marker):
    """Offset of the first JPEG marker `marker` (0xFFxx) in the header."""
    i = 2
    while i + 4 <= len(data):
        assert data[i] == 0xFF, "not at a marker"
        kind = data[i + 1]
        if kind == marker:
            return i
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        i += 2 + length
    raise ValueError(f"marker {marker:#x} not found")


def patched_sof(data, marker=None, width=None, height=None):
    """A copy of baseline JPEG `data` with its SOF0 marker, width or height
    replaced (the frame header: FF C0, length, precision, height, width)."""
    data = bytearray(data)
    sof = marker_offset(data, 0xC0)
    if marker is not None:
        data[sof + 1] = marker
    if height is not None:
        data[sof + 5 : sof + 7] = struct.pack(">H", height)
    if width is not None:
        data[sof + 7 : sof + 9] = struct.pack(">H", width)
    return bytes(data)


# Stored pixels for each EXIF orientation, such that applying the tag (as
# Pillow's ImageOps.exif_transpose does) gives back the upright photo.
STORED_FOR_ORIENTATION = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def exif_variant(upright, orientation):
    transform = STORED_FOR_ORIENTATION[orientation]
    stored = upright if transform is None else upright.transpose(transform)
    exif = Image.Exif()
    exif[0x0112] = orientation
    # 4:4:4 at high quality: the eight encodings differ as little as JPEG
    # allows, so the labels can be compared closely.
    data = jpeg(stored, quality=95, subsampling=0, exif=exif.tobytes())
    # Self-check: displayed upright, it is the photo.
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert shown.size == upright.size, orientation
    diff = ImageChops.difference(shown, upright).convert("L")
    mean = sum(i * n for i, n in enumerate(diff.histogram())) / (
        upright.size[0] * upright.size[1]
    )
    assert mean < 2.0, (orientation, mean)
    return data


def bomb_png():
    """A complete, valid 1-bit PNG of 20000x20000 pixels (400 megapixels,
    1.2 GB as 8-bit RGB) that deflate squeezes to a few tens of KB."""
    image = Image.new("1", (20000, 20000), 0)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()


def animated_png(first, second):
    buffer = io.BytesIO()
    first.save(
        buffer,
        "PNG",
        save_all=True,
        append_images=[second],
        duration=500,
        loop=0,
    )
    data = buffer.getvalue()
    assert b"acTL" in data and b"fcTL" in data, "not an APNG"
    return data


def alpha_png(image):
    """Opaque photo with fully transparent corners and a half-transparent
    band: exercises the alpha compositing without hiding the photo."""
    rgba = image.convert("RGBA")
    width, height = rgba.size
    alpha = Image.new("L", rgba.size, 255)
    corner = 16
    for x0, y0 in [(0, 0), (width - corner, 0), (0, height - corner),
                   (width - corner, height - corner)]:
        alpha.paste(0, (x0, y0, x0 + corner, y0 + corner))
    alpha.paste(128, (0, height // 2 - 4, width, height // 2 + 4))
    rgba.putalpha(alpha)
    return png(rgba)


def sixteen_bit_png(image):
    """16 bits per channel RGB, written by hand (Pillow writes 16-bit only
    for gray): each 8-bit value v becomes v * 257."""
    width, height = image.size
    pixels = image.tobytes()
    raw = bytearray()
    for y in range(height):
        raw.append(0)  # filter: none
        row = pixels[y * width * 3 : (y + 1) * width * 3]
        for v in row:
            raw += struct.pack(">H", v * 257)

    def chunk(kind, body):
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(raw), 9))
        + chunk(b"IEND", b"")
    )


def zip_file():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("photos/kitchen.txt", date_time=(2024, 1, 1, 0, 0, 0))
        archive.writestr(info, "not a photo\n" * 20)
    return buffer.getvalue()


HTML = b"""<!DOCTYPE html>
<html><head><title>404 Not Found</title></head>
<body><h1>Not Found</h1><p>The requested photo was not found.</p></body></html>
"""


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    kitchen = source("kitchen.jpg", JPEG_SIZE)
    kitchen_small = source("kitchen.jpg", PNG_SIZE)
    facade_small = source("facade.jpg", PNG_SIZE)
    baseline = jpeg(kitchen)

    files = {
        "zero_bytes.jpg": b"",
        "truncated.jpg": baseline[: len(baseline) // 2],
        "huge_65535x65535.jpg": patched_sof(baseline, width=65535, height=65535),
        "bomb_20000x20000.png": bomb_png(),
        "cmyk.jpg": jpeg(kitchen.convert("CMYK")),
        "grayscale.jpg": jpeg(kitchen.convert("L")),
        "progressive.jpg": jpeg(kitchen, progressive=True),
        "arithmetic.jpg": patched_sof(baseline, marker=0xC9),
        "rgb16.png": sixteen_bit_png(kitchen_small),
        "palette.png": png(kitchen_small.quantize(colors=64, dither=Image.Dither.NONE)),
        "alpha.png": alpha_png(kitchen_small),
        "animated.png": animated_png(kitchen_small, facade_small),
        "html.jpg": HTML,
        "zip.jpg": zip_file(),
        "trailing_base.jpg": baseline,
    }
    for orientation in range(1, 9):
        files[f"exif_orientation_{orientation}.jpg"] = exif_variant(kitchen, orientation)

    for old in OUT.glob("*"):
        if old.name != "README.md":
            old.unlink()
    for name, data in sorted(files.items()):
        (OUT / name).write_bytes(data)
        print(f"{len(data):>8}  {name}")


if __name__ == "__main__":
    main()
