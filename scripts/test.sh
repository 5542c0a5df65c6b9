#!/usr/bin/env bash
# The test command (README, .ci/run): fetches the pinned ONNX Runtime library,
# then runs the whole workspace's tests. Tests that need ../shared/data or a
# database server print why they skip when those are absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-onnxruntime.sh
cargo test --workspace --all-targets "$@"
