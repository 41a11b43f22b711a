# Sourced by the benchmark scripts: start and stop a local sealfs cluster of real processes with
# `sealfs up`. Needs $bin (the release binaries).

up_pid=""

# start_sealfs DIR NODES NFS_PORT: start a cluster under DIR and wait until its FUSE mount
# (DIR/mnt) answers and its change streams are live (until then it caches for a second only,
# and a workload begun at once measured that start-up: md-easy stats ran at a third of their
# rate in some runs); sets up_pid and pids (its processes, comma separated).
start_sealfs() {
  "$bin/sealfs" up --dir "$1" --nodes "$2" --manager 127.0.0.1:0 --nfs-port "$3" --portmap-port 0 \
    >"$1.up.log" 2>&1 &
  up_pid=$!
  for _ in $(seq 1 600); do
    "$bin/sealfs" health --mount "$1/mnt" >/dev/null 2>&1 && break
    kill -0 "$up_pid" 2>/dev/null || { cat "$1.up.log"; exit 1; }
    sleep 0.1
  done
  for _ in $(seq 1 300); do
    grep -q "change streams live" "$1/logs/fuse.log" 2>/dev/null && break
    sleep 0.1
  done
  pids=$(pgrep -f "$1" | grep -v "^$up_pid$" | paste -sd, -)
}

# stop_sealfs: stop the cluster start_sealfs started, if any.
stop_sealfs() {
  if [ -n "$up_pid" ]; then kill -INT "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; fi
  up_pid=""
}
