"""Label agreement between photolabel and the Python peer: uploads every
photo to both servers and compares the leaf labels (room subclass, room,
scene or `other`) and the whole answers. The peer runs one view per photo
and photolabel a second one where the first is unsure (issue 16), so that
agreement is reported, not required. With --cli, photolabel's server is
checked against `photolabel label --format jsonl` of the same photos — the
same model, so it fails (exit 1) below --min percent of leaf labels.
Standard library only.

  python bench/compare_labels.py --key KEY --ours URL --peer URL PHOTO...
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BOUNDARY = "photolabelcompare"


def leaf(output: dict) -> str:
    for key in ("Room_Subclass", "Room_Class", "Scene_Class1"):
        if key in output:
            return output[key]
    return output["Image_Class"]


def upload(url: str, key: str, photo: Path) -> dict:
    body = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{photo.name}\"\r\n"
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + photo.read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode()
    request = urllib.request.Request(
        url + "/labelling/img",
        data=body,
        headers={"x-api-key": key, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)["Output"]
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{url}: {photo}: HTTP {e.code}: {e.read()[:200]!r}")


def label_all(url: str, key: str, photos: list[Path]) -> list[dict]:
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda p: upload(url, key, p), photos))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", required=True)
    parser.add_argument("--ours", required=True, help="photolabel's base URL")
    parser.add_argument("--peer", required=True, help="the peer's base URL")
    parser.add_argument("--cli", type=Path, help="`photolabel label --format jsonl` output of the same photos")
    parser.add_argument("--min", type=float, default=99.0, help="least leaf agreement, percent")
    parser.add_argument("photos", type=Path, nargs="+")
    args = parser.parse_args()

    ours = label_all(args.ours, args.key, args.photos)
    peer = label_all(args.peer, args.key, args.photos)
    n = len(args.photos)
    same_leaf = [leaf(a) == leaf(b) for a, b in zip(ours, peer)]
    agreement = 100.0 * sum(same_leaf) / n
    identical = sum(a == b for a, b in zip(ours, peer))
    print(f"leaf labels, photolabel vs peer: {sum(same_leaf)}/{n} identical ({agreement:.1f} %); "
          f"whole answers (confidence strings included): {identical}/{n}")
    for photo, a, b, same in zip(args.photos, ours, peer, same_leaf):
        if not same:
            print(f"  differs: {photo.name}: photolabel {json.dumps(a)} | peer {json.dumps(b)}")

    failed = False
    if args.cli:
        by_path = {}
        for line in args.cli.read_text().splitlines():
            record = json.loads(line)
            by_path[Path(record["path"]).name] = record.get("Output")
        cli = [by_path.get(p.name) or {"Image_Class": "missing"} for p in args.photos]
        cli_leaf = sum(leaf(a) == leaf(b) for a, b in zip(ours, cli))
        cli_identical = sum(a == b for a, b in zip(ours, cli))
        print(f"leaf labels, photolabel HTTP vs CLI: {cli_leaf}/{n} identical; whole answers: {cli_identical}/{n}")
        failed |= 100.0 * cli_leaf / n < args.min
    if failed:
        print(f"FAIL: photolabel's HTTP and CLI leaf labels agree on fewer than {args.min} %", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
