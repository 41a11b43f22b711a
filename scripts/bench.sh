#!/usr/bin/env bash
# Run the same workloads on the local disk (the limit) and on sealfs through FUSE (3 storage
# nodes on loopback), then print one table of figures with each one's ratio to the local disk,
# and write it as JSON. Needs root (FUSE mount, dropping the page cache).
#   scripts/bench.sh [--small] [OUT]      (OUT: results folder, default bench-results)
# --small is a quick run of every workload at a tiny size (what CI checks); the default sizes
# are the ones the README's table comes from.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
small=0
if [ "${1:-}" = "--small" ]; then small=1; shift; fi
out=$(realpath -m "${1:-bench-results}")
mkdir -p "$out"
export PATH="$HOME/.cargo/bin:$PATH"
cd "$top"
cargo build --release --quiet --bins
bin="$top/target/release"
if [ $small = 1 ]; then
  args=(--files 100 --workers 1,2 --seq-mib 32 --rand-mib 8 --rand-secs 1)
else
  args=(--files 2000 --workers 1,4 --seq-mib 2048 --rand-mib 256 --rand-secs 10)
fi
work=$(mktemp -d /var/tmp/sealfs-bench.XXXXXX)
up_pid=""
cleanup() {
  if [ -n "$up_pid" ]; then kill -INT "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== local disk ($work/local)"
"$bin/sealfs-bench" run --dir "$work/local" --label local --drop-caches "${args[@]}" --json "$out/local.json"

echo "== sealfs through FUSE: 3 storage nodes, replication 3, on loopback"
"$bin/sealfs" up --dir "$work/sealfs" --nodes 3 --manager 127.0.0.1:0 --nfs-port 0 >"$work/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 1 600); do
  "$bin/sealfs" health --mount "$work/sealfs/mnt" >/dev/null 2>&1 && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$work/up.log"; exit 1; }
  sleep 0.1
done
pids=$(pgrep -f "$work/sealfs" | grep -v "^$up_pid$" | paste -sd, -)
"$bin/sealfs-bench" run --dir "$work/sealfs/mnt/bench" --label sealfs-fuse --drop-caches --pids "$pids" \
  "${args[@]}" --json "$out/sealfs-fuse.json"
kill -INT "$up_pid"; wait "$up_pid" || true; up_pid=""

echo
"$bin/sealfs-bench" compare "$out/local.json" "$out/sealfs-fuse.json" --json "$out/compare.json" | tee "$out/table.txt"
