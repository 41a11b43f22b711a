#!/usr/bin/env bash
# Run every fuzz target for SECONDS (default 60) each, all at once, starting from the corpora in
# fuzz/corpus; `scripts/fuzz.sh build` only builds them. Installs cargo-fuzz if missing. A crash fails the run and leaves the input in
# fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/ once fixed, so the tests
# replay it for good.
set -euo pipefail
build_only=0
[ "${1:-}" = build ] && build_only=1
secs=${1:-60}
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked --quiet cargo-fuzz
# cargo-fuzz passes nightly-only flags (sanitizer coverage); this lets a stable toolchain take them.
export RUSTC_BOOTSTRAP=1
targets=(rpc_decode nfs_record key_codec)
cargo fuzz build --fuzz-dir fuzz --sanitizer none
[ $build_only = 1 ] && exit 0
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
pids=()
for t in "${targets[@]}"; do
  # A scratch copy of the corpus: inputs found here are not committed by accident.
  mkdir -p "$scratch/$t"
  cp -r "fuzz/corpus/$t/." "$scratch/$t/"
  echo "fuzzing $t for ${secs}s"
  cargo fuzz run --fuzz-dir fuzz --sanitizer none "$t" "$scratch/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$scratch/$t.log" 2>&1 &
  pids+=($!)
done
failed=0
for i in "${!targets[@]}"; do
  t=${targets[$i]}
  if wait "${pids[$i]}"; then
    echo "$t: $(grep -E '^Done [0-9]+ runs' "$scratch/$t.log" || echo done)"
  else
    tail -n 40 "$scratch/$t.log"
    echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/" >&2
    failed=1
  fi
done
exit $failed
