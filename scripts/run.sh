#!/usr/bin/env bash
# Runs the service on its embedded defaults (model and heads built into the
# binary, SQLite in ./photolabel-data, 127.0.0.1:8080). Extra arguments go to
# `photolabel serve`; every flag is also a PHOTOLABEL_* environment variable.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-onnxruntime.sh
cargo build --release --bin photolabel
exec ./target/release/photolabel serve "$@"
