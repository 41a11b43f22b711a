#!/usr/bin/env bash
# The scaling curve: the same metadata workload (mdtest "easy", several workers) through FUSE
# against clusters of more and more storage node processes on this one machine, to show where
# aggregate throughput stops growing (on one machine: when the CPU is used up). Prints one column
# per cluster size, and the CPU seconds the cluster's processes used per 1,000 creates (times the
# creates per second: how many CPUs the cluster kept busy). Needs root.
#   scripts/scaling.sh [NODES...] [-- BENCH ARGS]      default nodes: 1 2 3 4 6
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
nodes=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do nodes+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#nodes[@]} -gt 0 ] || nodes=(1 2 3 4 6)
extra=("$@")
[ ${#extra[@]} -gt 0 ] || extra=(--files 1000 --workers 8)
export PATH="$HOME/.cargo/bin:$PATH"
cd "$top"
cargo build --release --quiet --bins
bin="$top/target/release"
work=$(mktemp -d /var/tmp/sealfs-scaling.XXXXXX)
files=()
. "$top/scripts/local-cluster.sh"
cleanup() {
  stop_sealfs
  rm -rf "$work"
}
trap cleanup EXIT
for n in "${nodes[@]}"; do
  start_sealfs "$work/c$n" "$n" 0
  "$bin/sealfs-bench" run --dir "$work/c$n/mnt/bench" --label "nodes-$n" --workloads md-easy \
    --pids "$pids" "${extra[@]}" --json "$work/n$n.json" 2>/dev/null
  stop_sealfs
  files+=("$work/n$n.json")
done
# One column per cluster size, each figure with its ratio to the smallest.
"$bin/sealfs-bench" compare "${files[@]}"
