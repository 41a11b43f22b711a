#!/usr/bin/env bash
# Memory under many files: start a local cluster (3 storage nodes, FUSE mount), create FILES empty
# files (default 1,000,000) in folders of 10,000, drop the kernel's caches (it FORGETs every inode),
# then stat every file again (one LOOKUP each) and drop the caches once more. Prints the resident
# memory (RSS now, and peak) of the FUSE client and of each storage node after every phase: the
# FUSE client must stay small however many files it has looked up (it honours FORGET), a node's
# memory is bounded by its cache setting (RocksDB block cache, `cache_mb`), not by the file count.
# Needs root. Not part of the test suite: it takes a while (creates run at cluster speed).
#   scripts/memory.sh [FILES] [PARALLEL]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
files=${1:-1000000}
par=${2:-4}
export PATH="$HOME/.cargo/bin:$PATH"
cd "$top"
cargo build --release --quiet --bins
bin="$top/target/release"
work=$(mktemp -d /var/tmp/sealfs-memory.XXXXXX)
. "$top/scripts/local-cluster.sh"
trap 'stop_sealfs; rm -rf "$work"' EXIT
start_sealfs "$work/c" 3 0
fuse_pid=$(pgrep -f "sealfs-fuse .*$work/c/mnt" | head -1)
node_pids=$(pgrep -f "sealfs-node .*$work/c/node" | paste -sd' ' -)

report() {
  printf '%-34s' "$1"
  for p in $fuse_pid $node_pids; do
    local name rss hwm
    name=$(tr '\0' ' ' </proc/"$p"/cmdline | grep -q sealfs-fuse && echo fuse || echo node)
    rss=$(awk '/^VmRSS/ {print int($2/1024)}' /proc/"$p"/status)
    hwm=$(awk '/^VmHWM/ {print int($2/1024)}' /proc/"$p"/status)
    printf '  %s %4d MiB (peak %4d)' "$name" "$rss" "$hwm"
  done
  echo
}

# Runs `op` ("create" or "stat") over every file with $par processes.
each_file() {
  python3 - "$work/c/mnt/m" "$files" "$par" "$1" <<'EOF'
import os, sys, time
from multiprocessing import Pool
root, n, par, op = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
per_dir = 10000
def work(d):
    path = f"{root}/d{d}"
    if op == "create":
        os.makedirs(path, exist_ok=True)
    for i in range(min(per_dir, n - d * per_dir)):
        f = f"{path}/f{i}"
        if op == "create":
            os.close(os.open(f, os.O_CREAT | os.O_WRONLY, 0o644))
        else:
            os.stat(f)
    return 0
os.makedirs(root, exist_ok=True)
start = time.time()
with Pool(par) as p:
    p.map(work, range((n + per_dir - 1) // per_dir), chunksize=1)
e = time.time() - start
print(f"{op}: {n} files in {e:.0f} s ({n / e:.0f}/s)", file=sys.stderr)
EOF
}

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; sleep 2; }

echo "sealfs memory with $files files (RSS in MiB: FUSE client, then each storage node)"
report "started"
each_file create
report "after creating $files files"
drop
report "kernel caches dropped (FORGET)"
each_file stat
report "after $files lookups"
drop
report "kernel caches dropped again"
