#!/usr/bin/env bash
# Creates in one folder from several mounts at once: a kernel client sends one create at a time
# per folder, so how creates from many clients in one folder go (the storage nodes commit those
# that arrive together as one batch) shows only with several mounts. Starts one sealfs cluster,
# adds FUSE mounts of it up to the largest count, and runs `sealfs-bench shared-create` with 1,
# 2, ... of them on a new folder each time; then the same against GlusterFS (the distributed
# volume of bench.sh, mounted as many times) where it is installed (`bench.sh --prepare`), unless
# --no-peers. Prints each figure with its ratio to one mount, and sealfs's to GlusterFS's at the
# same count. Needs root.
#   scripts/shared-folder.sh [--no-peers] [MOUNTS...] [-- SHARED-CREATE ARGS]   default: 1 2 4
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
peers=1
[ "${1:-}" = "--no-peers" ] && { peers=0; shift; }
counts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do counts+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#counts[@]} -gt 0 ] || counts=(1 2 4)
extra=("$@")
[ ${#extra[@]} -gt 0 ] || extra=(--files 1000)
most=$(printf '%s\n' "${counts[@]}" | sort -n | tail -1)
command -v glusterd >/dev/null 2>&1 || peers=0
export PATH="$HOME/.cargo/bin:$PATH"
cd "$top"
cargo build --release --quiet --bins
bin="$top/target/release"
work=$(mktemp -d /var/tmp/sealfs-shared.XXXXXX)
mounts=()
mount_pids=()
gmounts=()
. "$top/scripts/local-cluster.sh"
. "$top/scripts/gluster.sh"
cleanup() {
  for m in "${mounts[@]:1}"; do umount "$m" 2>/dev/null || true; done
  for p in "${mount_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  stop_sealfs
  [ $peers = 1 ] && stop_gluster sealfsshared "${gmounts[@]}"
  rm -rf "$work"
}
trap cleanup EXIT
declare -A rate

# run_counts LABEL MOUNT...: shared-create through the first 1, 2, ... of the mounts.
run_counts() {
  local label=$1 base="" n dirs line r
  shift
  local ms=("$@")
  for n in "${counts[@]}"; do
    dirs=$(printf "%s/s$n\n" "${ms[@]:0:$n}" | paste -sd, -)
    mkdir -p "${ms[0]}/s$n"
    line=$("$bin/sealfs-bench" shared-create --dirs "$dirs" "${extra[@]}")
    r=$(sed -n 's/.*: \([0-9]*\) per second.*/\1/p' <<<"$line")
    [ -n "$base" ] || base=$r
    rate[$label,$n]=$r
    echo "$label: $line, $(awk -v r="$r" -v b="$base" 'BEGIN { printf "%.2fx", r / b }') of ${counts[0]} mount(s)"
  done
}

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
run_counts sealfs "${mounts[@]}"
for m in "${mounts[@]:1}"; do umount "$m"; done
for p in "${mount_pids[@]}"; do wait "$p" 2>/dev/null || true; done
mounts=()
mount_pids=()
stop_sealfs

[ $peers = 1 ] || exit 0
stop_gluster sealfsshared
start_gluster "$work/gluster" sealfsshared
for i in $(seq 1 "$most"); do
  mkdir -p "$work/g$i"
  mount -t glusterfs "$gluster_host:/sealfsshared" "$work/g$i"
  gmounts+=("$work/g$i")
done
run_counts glusterfs "${gmounts[@]}"
for n in "${counts[@]}"; do
  echo "$n mount(s): sealfs $(awk -v s="${rate[sealfs,$n]}" -v g="${rate[glusterfs,$n]}" \
    'BEGIN { printf "%.2fx", s / g }') of GlusterFS"
done
