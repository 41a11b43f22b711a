#!/usr/bin/env bash
# Build sealfs and run every test: unit tests, in-process cluster tests, and the cluster tests that
# start real processes (FUSE mount, pjdfstest, fsx, restarts, kill -9, bad input, `sealfs up`).
# Installs what is missing first. Needs root (FUSE mounts, tmpfs, running as other users).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
"$here/scripts/deps.sh" --test
export PATH="$HOME/.cargo/bin:$PATH"
# The cluster tests start the real binaries, so build them first.
cargo build --release --workspace --bins
cargo test --release --workspace "$@"
