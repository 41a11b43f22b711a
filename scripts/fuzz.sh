#!/usr/bin/env bash
# Run every fuzz target for SECONDS (default 60) each, starting from the corpora in fuzz/corpus.
# Installs cargo-fuzz if missing. A crash fails the run and leaves the input in
# fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/ once fixed, so the tests
# replay it for good.
set -euo pipefail
secs=${1:-60}
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked --quiet cargo-fuzz
# cargo-fuzz passes nightly-only flags (sanitizer coverage); this lets a stable toolchain take them.
export RUSTC_BOOTSTRAP=1
targets=(rpc_decode nfs_record key_codec)
cargo fuzz build --fuzz-dir fuzz --sanitizer none
for t in "${targets[@]}"; do
  # Run from a scratch copy of the corpus: new inputs found here are not committed by accident.
  work=$(mktemp -d)
  cp -r "fuzz/corpus/$t/." "$work/"
  echo "fuzzing $t for ${secs}s"
  set +e
  cargo fuzz run --fuzz-dir fuzz --sanitizer none "$t" "$work" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$work.log" 2>&1
  rc=$?
  set -e
  tail -n 12 "$work.log"
  rm -f "$work.log"
  rm -rf "$work"
  if [ "$rc" -ne 0 ]; then
    echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/" >&2
    exit "$rc"
  fi
done
