#!/usr/bin/env bash
# The test command (README, .ci/run): fetches the pinned ONNX Runtime library,
# installs what the browser tests need (Debian's chromium, playwright-core),
# then runs the whole workspace's tests. Tests that need ../shared/data, a
# server or the browser print why they skip when those are absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-onnxruntime.sh
bash scripts/setup-browser.sh
cargo test --workspace --all-targets "$@"
