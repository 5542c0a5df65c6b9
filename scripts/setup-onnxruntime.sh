#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library that photolabel's default engine
# loads at run time, pinned by version and checksum, into .cache/onnxruntime/.
#
# Debian has no ONNX Runtime package and the `ort` crate's own download needs
# a CDN this machine cannot reach, so the library comes from the official
# PyPI wheel (a zip): only the one .so inside it is kept. Idempotent.
set -euo pipefail

VERSION=1.32.0
WHEEL=onnxruntime-${VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl
WHEEL_SHA256=5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d
LIB=libonnxruntime.so.${VERSION}
LIB_SHA256=6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f

root=$(cd "$(dirname "$0")/.." && pwd)
dest=$root/.cache/onnxruntime
if [ -f "$dest/$LIB" ] && echo "$LIB_SHA256  $dest/$LIB" | sha256sum -c --quiet - 2>/dev/null; then
  exit 0
fi
if [ "$(uname -m)" != x86_64 ]; then
  echo "setup-onnxruntime: no pinned build for $(uname -m); photolabel will use the tract engine" >&2
  exit 0
fi

mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "setup-onnxruntime: fetching onnxruntime==$VERSION from PyPI" >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp \
  --dest "$tmp" "onnxruntime==$VERSION"
echo "$WHEEL_SHA256  $tmp/$WHEEL" | sha256sum -c --quiet -
python3 - "$tmp/$WHEEL" "$tmp" "$LIB" <<'PY'
import sys, zipfile
wheel, out, lib = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    z.extract(f"onnxruntime/capi/{lib}", out)
PY
echo "$LIB_SHA256  $tmp/onnxruntime/capi/$LIB" | sha256sum -c --quiet -
mv "$tmp/onnxruntime/capi/$LIB" "$dest/$LIB"
ln -sf "$LIB" "$dest/libonnxruntime.so"
echo "setup-onnxruntime: installed $dest/$LIB" >&2
