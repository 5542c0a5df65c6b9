#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the three fuzz targets into
fuzz/corpus/<target>/seed_*.

The committed corpora are these seeds plus what fuzzing added (minimised
with `cargo fuzz cmin`); this script only has to be rerun to change the
seeds. Deterministic with Pillow 13.0.0 (pip install pillow==13.0.0):

    python3 fuzz/make_seeds.py

Seeds are small on purpose (a few KB): libFuzzer mutates them byte by byte,
and small inputs run fast.
"""

import io
import json
import struct
import zlib
from pathlib import Path

from PIL import Image

FUZZ = Path(__file__).resolve().parent
PHOTOS = FUZZ.parent / "tests" / "fixtures" / "photos"


def photo(size):
    return Image.open(PHOTOS / "kitchen.jpg").convert("RGB").resize(size, Image.BICUBIC)


def save(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def exif(orientation):
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags.tobytes()


def png_chunk(kind, body):
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def adam7_png(image):
    """An interlaced (Adam7) 8-bit RGB PNG; Pillow only writes
    non-interlaced ones."""
    width, height = image.size
    pixels = image.tobytes()
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4),
              (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = bytearray()
    for x0, y0, dx, dy in passes:
        for y in range(y0, height, dy):
            xs = range(x0, width, dx)
            if not xs:
                continue
            raw.append(0)
            for x in xs:
                raw += pixels[(y * width + x) * 3 : (y * width + x) * 3 + 3]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + png_chunk(b"IEND", b""))


def image_seeds():
    small = photo((40, 30))
    tiny = photo((9, 7))
    apng = io.BytesIO()
    small.save(apng, "PNG", save_all=True, append_images=[tiny.resize((40, 30))])
    rgba = small.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((40, 30)))
    return {
        "jpeg_baseline.jpg": save(small, "JPEG", quality=75),
        "jpeg_progressive.jpg": save(small, "JPEG", quality=75, progressive=True),
        "jpeg_gray.jpg": save(small.convert("L"), "JPEG", quality=75),
        "jpeg_cmyk.jpg": save(small.convert("CMYK"), "JPEG", quality=75),
        "jpeg_444.jpg": save(small, "JPEG", quality=75, subsampling=0),
        "jpeg_exif6.jpg": save(small, "JPEG", quality=75, exif=exif(6)),
        "jpeg_tiny.jpg": save(tiny, "JPEG", quality=50),
        # Shorter side >= 520: decoded at reduced size in the DCT domain.
        "jpeg_dct_scaled.jpg": save(
            Image.new("RGB", (530, 521), (200, 180, 150)), "JPEG", quality=50
        ),
        "jpeg_restart.jpg": save(small, "JPEG", quality=75, restart_marker_blocks=1),
        "png_rgb.png": save(small, "PNG"),
        "png_gray.png": save(small.convert("L"), "PNG"),
        "png_1bit.png": save(small.convert("1"), "PNG"),
        "png_palette.png": save(small.quantize(16), "PNG"),
        "png_rgba.png": save(rgba, "PNG"),
        "png_la.png": save(rgba.convert("LA"), "PNG"),
        "png_gray16.png": save(small.convert("I;16"), "PNG"),
        "png_interlaced.png": adam7_png(small),
        "png_exif8.png": save(small, "PNG", exif=exif(8)),
        "png_animated.png": apng.getvalue(),
        "webp_lossy.webp": save(small, "WEBP", quality=50),
        "webp_lossless.webp": save(small, "WEBP", lossless=True),
        "webp_alpha.webp": save(rgba, "WEBP", quality=50),
        "empty": b"",
        "text": b"<html>not a photo</html>",
        "jpeg_signature_only": b"\xff\xd8\xff",
        "png_signature_only": b"\x89PNG\r\n\x1a\n",
    }


BOUNDARY = "XyZ"


def part(name, data, filename=None, content_type=None):
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"'
    if filename is not None:
        head += f'; filename="{filename}"'
    head += "\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode() + b"\r\n" + data + b"\r\n"


def multipart_seeds(jpeg, png):
    ct = f"multipart/form-data; boundary={BOUNDARY}".encode()
    end = f"--{BOUNDARY}--\r\n".encode()

    def seed(body, content_type=ct):
        return content_type + b"\n" + body

    return {
        "jpeg": seed(part("image", jpeg, "a.jpg", "image/jpeg") + end),
        "png": seed(part("image", png, "a.png", "image/png") + end),
        "other_field_first": seed(part("note", b"hello") + part("image", jpeg, "a.jpg") + end),
        "two_images": seed(part("image", png, "a.png") + part("image", jpeg, "b.jpg") + end),
        "no_image_field": seed(part("photo", jpeg, "a.jpg", "image/jpeg") + end),
        "empty_image": seed(part("image", b"", "a.jpg", "image/jpeg") + end),
        "not_an_image": seed(part("image", b"<html></html>", "a.jpg", "image/jpeg") + end),
        "no_closing_boundary": seed(part("image", jpeg, "a.jpg")),
        "truncated_headers": seed(f'--{BOUNDARY}\r\nContent-Disposition: form-data; na'.encode()),
        "empty_body": seed(b""),
        "preamble_and_epilogue": seed(b"preamble\r\n" + part("image", png, "a.png") + end + b"epilogue"),
        "quoted_boundary": seed(
            part("image", png, "a.png") + end,
            f'multipart/form-data; boundary="{BOUNDARY}"; charset=utf-8'.encode(),
        ),
        "filename_star": seed(
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename*=UTF-8''%E2%82%AC.jpg\r\n\r\n".encode() + jpeg + b"\r\n" + end
        ),
        "lf_only": seed(
            f'--{BOUNDARY}\nContent-Disposition: form-data; name="image"\n\n'.encode()
            + png + f"\n--{BOUNDARY}--\n".encode()
        ),
        "no_boundary_param": seed(part("image", png) + end, b"multipart/form-data"),
        "json_content_type": seed(b'{"image": "x"}', b"application/json"),
        "urlencoded": seed(b"image=abc", b"application/x-www-form-urlencoded"),
        "no_content_type": seed(b"", b""),
    }


def url_seeds():
    def body(url):
        return json.dumps({"url": url}).encode()

    urls = {
        "https": "https://example.com/photo.jpg",
        "http_port_query": "http://example.com:8080/a/b.png?x=1&y=%20#frag",
        "public_ip": "http://93.184.216.34/p.jpg",
        "public_ipv6": "http://[2606:4700:4700::1111]/p.jpg",
        "idn": "https://b\u00fccher.example/\u00e4.jpg",
        "loopback": "http://127.0.0.1/",
        "loopback_decimal": "http://2130706433/",
        "loopback_hex": "http://0x7f.1/",
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "ipv6_loopback": "http://[::1]:8080/",
        "ipv4_mapped": "http://[::ffff:127.0.0.1]/",
        "credentials": "http://user:pw@example.com/",
        "file": "file:///etc/passwd",
        "ftp": "ftp://example.com/a.jpg",
        "no_host": "http:///a.jpg",
        "relative": "/a.jpg",
        "percent_host": "http://%31%32%37.0.0.1/",
        "backslashes": "http:\\\\127.0.0.1\\a",
        "empty": "",
        "long": "https://example.com/" + "a" * 2100,
    }
    seeds = {f"url_{name}": body(url) for name, url in urls.items()}
    seeds.update(
        {
            "not_json": b"url=https://example.com/",
            "empty_object": b"{}",
            "number": b'{"url": 3}',
            "null": b'{"url": null}',
            "array": b'["https://example.com/a.jpg"]',
            "nested": b'{"data": {"url": "https://example.com/a.jpg"}}',
            "duplicate_key": b'{"url": "https://example.com/a.jpg", "url": "http://127.0.0.1/"}',
            "escaped": b'{"url": "http:\\/\\/127.0.0.1\\/\\u0000"}',
            "extra_fields": b'{"url": "https://example.com/a.jpg", "x": [1, {"y": null}]}',
            "empty_body": b"",
        }
    )
    return seeds


def write(target, seeds):
    folder = FUZZ / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("seed_*"):
        old.unlink()
    for name, data in sorted(seeds.items()):
        (folder / f"seed_{name}").write_bytes(data)
    print(f"{target}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")


def main():
    images = image_seeds()
    write("decode", images)
    write("multipart", multipart_seeds(images["jpeg_tiny.jpg"], images["png_palette.png"]))
    write("url_json", url_seeds())


if __name__ == "__main__":
    main()
