#!/usr/bin/env bash
# Creates in one folder from several mounts at once: a kernel client sends one create at a time
# per folder, so how creates from many clients in one folder go (the storage nodes commit those
# that arrive together as one batch) shows only with several mounts. Starts one cluster, adds
# FUSE mounts of it up to the largest count, and runs `sealfs-bench shared-create` with 1, 2, ...
# of them on a new folder each time. Needs root.
#   scripts/shared-folder.sh [MOUNTS...] [-- SHARED-CREATE ARGS]    default mounts: 1 2 4
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
counts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do counts+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#counts[@]} -gt 0 ] || counts=(1 2 4)
extra=("$@")
[ ${#extra[@]} -gt 0 ] || extra=(--files 1000)
most=$(printf '%s\n' "${counts[@]}" | sort -n | tail -1)
export PATH="$HOME/.cargo/bin:$PATH"
cd "$top"
cargo build --release --quiet --bins
bin="$top/target/release"
work=$(mktemp -d /var/tmp/sealfs-shared.XXXXXX)
mounts=()
mount_pids=()
. "$top/scripts/local-cluster.sh"
wait_mounts() {
  for p in "${mount_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
cleanup() {
  for m in "${mounts[@]:1}"; do umount "$m" 2>/dev/null || true; done
  wait_mounts
  stop_sealfs
  rm -rf "$work"
}
trap cleanup EXIT
start_sealfs "$work/c" 3 0
mounts=("$work/c/mnt")
for i in $(seq 2 "$most"); do
  m="$work/m$i"
  mkdir -p "$m"
  "$bin/sealfs-fuse" --manager "$(cat "$work/c/manager/addr")" --secret-file "$work/c/secret" "$m" \
    >"$work/m$i.log" 2>&1 &
  mount_pids+=($!)
  for _ in $(seq 1 600); do
    mountpoint -q "$m" && break
    kill -0 "${mount_pids[-1]}" 2>/dev/null || { cat "$work/m$i.log"; exit 1; }
    sleep 0.1
  done
  mounts+=("$m")
done
# Each count's rate, and its ratio to the first count's (the baseline, measured in this run).
base=""
for n in "${counts[@]}"; do
  dirs=$(printf "%s/s$n\n" "${mounts[@]:0:$n}" | paste -sd, -)
  mkdir -p "${mounts[0]}/s$n"
  line=$("$bin/sealfs-bench" shared-create --dirs "$dirs" "${extra[@]}")
  rate=$(sed -n 's/.*: \([0-9]*\) per second.*/\1/p' <<<"$line")
  [ -n "$base" ] || base=$rate
  echo "$line, $(awk -v r="$rate" -v b="$base" 'BEGIN { printf "%.2fx", r / b }') of ${counts[0]} mount(s)"
done
