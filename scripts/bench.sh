#!/usr/bin/env bash
# Run the same workloads, in one go on this machine, against
#   local        a local directory (the limit)
#   sealfs-fuse  sealfs through FUSE: 3 storage nodes on loopback, replication 3 (the default)
#   glusterfs    GlusterFS from Debian: a distributed volume of 3 bricks on this host, FUSE mount
#   sealfs-nfs   sealfs through its NFSv3 gateway          } both measured with the same client:
#   ganesha      NFS-Ganesha with its VFS export (NFSv3)   } a Linux kernel booted under qemu
# (sealfs-bench's workloads, and Debian's fio on the host's three: the VM has no fio), then print
# one table of figures with each one's ratio to the local directory, one of the two NFS servers,
# one of the NFS calls the guest's client sent to each (count, mean round trip), and write JSON;
# and how long this host's disk took to make a 4 KiB write durable (alone, and three at once), at
# the start and at the end.
# Needs root (mounts, dropping the page cache).
#   scripts/bench.sh [--small] [--no-peers] [--no-nfs] [OUT]     (OUT: results, default bench-results)
#   scripts/bench.sh --prepare       only install fio and the peers and build the VM's static benchmark
# --small runs every workload at a tiny size (what CI checks); the default sizes are the ones the
# README's table comes from. --no-peers leaves out GlusterFS and Ganesha, --no-nfs the NFS rows.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
small=0 peers=1 nfs=1 prepare=0
while [ $# -gt 0 ]; do
  case "$1" in
    --small) small=1 ;;
    --prepare) prepare=1 ;;
    --no-peers) peers=0 ;;
    --no-nfs) nfs=0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
out=$(realpath -m "${1:-bench-results}")
export PATH="$HOME/.cargo/bin:$PATH"
cd "$top"
# fio runs the "fio" workload on this host's file systems; tcpdump times the NFS servers' answers;
# the peers are Debian's packages too.
pkgs=(fio tcpdump)
[ $peers = 1 ] && pkgs+=(glusterfs-server nfs-ganesha nfs-ganesha-vfs rpcbind)
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || { echo "installing ${pkgs[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
    break; }
done
# The benchmark for the NFS rows runs inside the VM: a static build.
build_static() {
  RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --quiet -p sealfs-bench \
    --target x86_64-unknown-linux-gnu --target-dir "$top/target/static"
}
if [ $prepare = 1 ]; then
  build_static
  exit 0
fi
mkdir -p "$out"
rm -f "$out"/*.json
cargo build --release --quiet --bins
bin="$top/target/release"
if [ $small = 1 ]; then
  args=(--files 100 --workers 1,2 --seq-mib 32 --rand-mib 8 --rand-secs 1)
  vm_args=(--files 20 --workers 1 --seq-mib 8 --rand-mib 2 --rand-secs 1)
else
  args=(--files 2000 --workers 1,4 --seq-mib 2048 --rand-mib 256 --rand-secs 10)
  vm_args=(--files 300 --workers 1,2 --seq-mib 128 --rand-mib 32 --rand-secs 5)
fi
work=$(mktemp -d /var/tmp/sealfs-bench.XXXXXX)
. "$top/scripts/local-cluster.sh"
. "$top/scripts/gluster.sh"
stop_ganesha() {
  pkill -x ganesha.nfsd 2>/dev/null || true
  pkill -x rpcbind 2>/dev/null || true
}
drop_server=
cleanup() {
  [ -n "$drop_server" ] && kill "$drop_server" 2>/dev/null
  stop_sealfs
  if [ $peers = 1 ]; then stop_gluster sealfsbench "$work/gluster/mnt"; stop_ganesha; fi
  rm -rf "$work" /dev/shm/sealfs-bench.*.pcap
}
trap cleanup EXIT
# Before each system: write back what the one before left dirty and wait until the disk has been
# idle for a second (at most 60 s; 3 s at --small, whose figures are not compared), so that no
# system's first phases share the disk with the last one's write-back.
# Sectors written so far and requests in flight, over all disks.
disk_activity() { awk '{ w += $7; f += $9 } END { print w, f }' /sys/block/*/stat; }
settle() {
  sync
  local before now wait=60
  [ $small = 1 ] && wait=3
  before=$(disk_activity)
  for _ in $(seq 1 $wait); do
    sleep 1
    now=$(disk_activity)
    [ "$now" = "$before" ] && [ "${now#* }" = 0 ] && return
    before=$now
  done
}

# How fast this host's disk makes a 4 KiB write durable, alone and three at once (a change's
# replicas, all on this one disk), at the start of the run and at its end: every synced metadata
# change waits on it, and on a shared host it moves between runs (and within one), so the table
# comes with it.
disk_probe() {
  local n=1000 jobs
  [ $small = 1 ] && n=100
  for jobs in 1 3; do
    echo "disk $1: $("$bin/sealfs-bench" sync-probe --dir "$work" --count $n --jobs $jobs)"
  done
}
settle
disk_probe "at the start" | tee "$out/disk.txt"

echo "== local directory ($work/local)"
settle
"$bin/sealfs-bench" run --dir "$work/local" --label local --drop-caches "${args[@]}" --json "$out/local.json"

echo "== sealfs through FUSE: 3 storage nodes, replication 3, on loopback"
settle
start_sealfs "$work/sealfs" 3 0
"$bin/sealfs-bench" run --dir "$work/sealfs/mnt/bench" --label sealfs-fuse --drop-caches --pids "$pids" \
  "${args[@]}" --json "$out/sealfs-fuse.json"
stop_sealfs
rm -rf "$work/sealfs"

if [ $peers = 1 ]; then
  echo "== GlusterFS: distributed volume, 3 bricks on this host, FUSE mount"
  stop_gluster sealfsbench
  settle
  start_gluster "$work/gluster" sealfsbench
  mkdir -p "$work/gluster/mnt"
  mount -t glusterfs "$gluster_host:/sealfsbench" "$work/gluster/mnt"
  gpids=$(pgrep -x 'glusterfsd|glusterfs' | paste -sd, -)
  "$bin/sealfs-bench" run --dir "$work/gluster/mnt/bench" --label glusterfs --drop-caches --pids "$gpids" \
    "${args[@]}" --json "$out/glusterfs.json"
  stop_gluster sealfsbench "$work/gluster/mnt"
fi

if [ $nfs = 1 ]; then
  # The same kernel NFS client for both servers: Debian's kernel under qemu (tests/nfsvm), running
  # a static build of the benchmark. Software emulation bounds the guest (tens of MiB/s, some
  # hundred operations a second), so these rows compare the two servers with each other only.
  build_static
  mkdir -p "$work/vm/bin"
  cp "$top/target/static/x86_64-unknown-linux-gnu/release/sealfs-bench" "$work/vm/bin/"
  nfs_port=$((20000 + RANDOM % 10000))
  # The servers run on the host, so where the guest drops its page cache before reads, the host
  # drops its own too (the guest asks this server at 10.0.2.2): reads reach the servers' disks,
  # as in the FUSE rows, instead of whatever each server's writes left in the host's cache.
  drop_port=$((nfs_port + 9))
  "$bin/sealfs-bench" drop-server --listen "127.0.0.1:$drop_port" &
  drop_server=$!
  vm_args+=(--drop-caches-host "10.0.2.2:$drop_port")
  # Runs the benchmark in the guest; $label comes from the host.
  vm_bench() {
    local label=$1 json=$2
    cat >"$work/vm/guest.sh" <<EOF
#!/bin/sh
/bin/sealfs-bench run --dir "\$1/bench" --label $label --drop-caches ${vm_args[*]} --json /tmp/r.json || exit 1
echo BENCH_JSON_BEGIN; cat /tmp/r.json; echo; echo BENCH_JSON_END
echo NFS_OPS_BEGIN; sed -n '/per-op statistics/,\$p' /proc/self/mountstats; echo NFS_OPS_END
EOF
    settle
    # How long the server took to answer each call (from a call's first packet to its reply's):
    # set beside the client's round trips, it splits a call's time into the server's and the
    # way's. Only each packet's start is kept, in memory (not to share the disk with the server).
    local pcap
    pcap=$(mktemp /dev/shm/sealfs-bench.XXXXXX.pcap)
    tcpdump -Z root -i lo -s 8400 -B 32768 -w "$pcap" "tcp port $PORT" 2>"$work/vm/$label.tcpdump" &
    local capture=$!
    sleep 1
    EXTRA_DIR="$work/vm" MEM=1024 TIMEOUT=3000 "$top/tests/nfsvm/run.sh" "$work/vm/guest.sh" >"$work/vm/$label.log" 2>&1 ||
      { kill "$capture"; tail -30 "$work/vm/$label.log"; echo "the $label run in the VM failed" >&2; exit 1; }
    sleep 0.5
    kill "$capture" && wait "$capture" || true
    grep -h "dropped by kernel" "$work/vm/$label.tcpdump" | grep -v "^0 " >&2 || true
    "$bin/sealfs-bench" nfs-times --pcap "$pcap" --port "$PORT" >"$out/$label-server.txt" ||
      echo "no server times for $label" >&2
    rm -f "$pcap"
    tr -d '\r' <"$work/vm/$label.log" | sed -n '/^BENCH_JSON_BEGIN$/,/^BENCH_JSON_END$/p' | sed '1d;$d' >"$json"
    # The client's own count of each NFS call and its round trips (ms in all, from sending the
    # call to its reply): "CALL: ops transmissions timeouts bytes-sent bytes-received queue rtt
    # execute ...".
    tr -d '\r' <"$work/vm/$label.log" | sed -n '/^NFS_OPS_BEGIN$/,/^NFS_OPS_END$/p' |
      awk '$1 ~ /^[A-Z_0-9]+:$/ && $2 > 0 { sub(":", "", $1); printf "%s %d %.3f\n", $1, $2, $8 / $2 }' |
      sort >"$out/$label-calls.txt"
    grep -E 'workers +[0-9]+:' "$work/vm/$label.log" | tr -d '\r' || true
  }
  echo "== sealfs through the NFS gateway (kernel client in a VM)"
  start_sealfs "$work/sealfs" 3 "$nfs_port"
  PORT=$nfs_port vm_bench sealfs-nfs "$out/sealfs-nfs.json"
  "$bin/sealfs-bench" rss --report "$out/sealfs-nfs.json" --pids "$pids"
  stop_sealfs
  if [ $peers = 1 ]; then
    echo "== NFS-Ganesha, VFS export (kernel client in a VM)"
    mkdir -p "$work/ganesha/export"
    cat >"$work/ganesha/ganesha.conf" <<EOF
NFS_CORE_PARAM { NFS_Port = $((nfs_port + 1)); MNT_Port = $((nfs_port + 2)); NLM_Port = $((nfs_port + 3));
  Rquota_Port = $((nfs_port + 4)); Protocols = 3; Enable_NLM = false; Enable_RQUOTA = false; }
NFSV4 { Graceless = true; }
EXPORT { Export_Id = 1; Path = $work/ganesha/export; Pseudo = /; Access_Type = RW; Squash = No_Root_Squash;
  Protocols = 3; Transports = TCP; SecType = sys; FSAL { Name = VFS; } }
LOG { Default_Log_Level = EVENT; }
EOF
    # Ganesha registers with a portmapper and will not start without one.
    stop_ganesha
    rpcbind -w
    ganesha.nfsd -f "$work/ganesha/ganesha.conf" -L "$work/ganesha/ganesha.log" -N NIV_EVENT -p "$work/ganesha/pid"
    for _ in $(seq 1 100); do ss -ltn | grep -q ":$((nfs_port + 1)) " && break; sleep 0.1; done
    PORT=$((nfs_port + 1)) MOUNTPORT=$((nfs_port + 2)) EXPORT="$work/ganesha/export" vm_bench ganesha "$out/ganesha.json"
    "$bin/sealfs-bench" rss --report "$out/ganesha.json" --pids "$(pgrep -x ganesha.nfsd | paste -sd, -)"
    stop_ganesha
  fi
fi

settle
disk_probe "at the end" | tee -a "$out/disk.txt"

echo
files=("$out/local.json" "$out/sealfs-fuse.json")
[ -f "$out/glusterfs.json" ] && files+=("$out/glusterfs.json")
[ -f "$out/sealfs-nfs.json" ] && files+=("$out/sealfs-nfs.json")
[ -f "$out/ganesha.json" ] && files+=("$out/ganesha.json")
"$bin/sealfs-bench" compare "${files[@]}" --json "$out/compare.json" | tee "$out/table.txt"
cat "$out/disk.txt"
if [ -f "$out/ganesha.json" ]; then
  echo
  echo "The NFS gateway against NFS-Ganesha (same kernel client in a VM):"
  "$bin/sealfs-bench" compare "$out/ganesha.json" "$out/sealfs-nfs.json" --json "$out/compare-nfs.json" | tee "$out/table-nfs.txt"
  if [ -s "$out/ganesha-calls.txt" ] && [ -s "$out/sealfs-nfs-calls.txt" ]; then
    echo
    echo "The NFS calls the kernel client sent over the whole run, each call's mean round trip as the client"
    echo "timed it, and the mean time the server took to answer it (from a capture on this host):"
    touch "$out/ganesha-server.txt" "$out/sealfs-nfs-server.txt"
    join -a1 -a2 -e 0 -o 0,1.2,2.2,1.3,2.3 "$out/ganesha-calls.txt" "$out/sealfs-nfs-calls.txt" |
      join -a1 -e - -o 0,1.2,1.3,1.4,1.5,2.3 - "$out/ganesha-server.txt" |
      join -a1 -e - -o 0,1.2,1.3,1.4,1.5,1.6,2.3 - "$out/sealfs-nfs-server.txt" |
      awk 'BEGIN { printf "%-12s %8s %10s %11s %10s %7s %12s %11s\n", "call", "ganesha", "sealfs-nfs", "ganesha ms", "sealfs ms", "time", "in ganesha", "in sealfs" }
        { printf "%-12s %8d %10d %11.3f %10.3f %7s %12s %11s\n", $1, $2, $3, $4, $5, ($4 > 0 ? sprintf("%.2fx", $5 / $4) : "-"), $6, $7 }' |
      tee "$out/calls-nfs.txt"
  fi
fi
