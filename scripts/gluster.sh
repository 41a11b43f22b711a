# Sourced by the benchmark scripts: the peer distributed file system, GlusterFS from Debian, as a
# distributed volume of three bricks on this host (installed by `bench.sh --prepare`).

# start_gluster DIR VOLUME: start glusterd (its log in DIR) and the volume VOLUME of three
# bricks under DIR; sets gluster_host, the address to mount it from.
start_gluster() {
  # glusterd refuses loopback addresses for bricks: use this host's own address.
  gluster_host=$(hostname -I | awk '{print $1}')
  rm -rf "/var/lib/glusterd/vols/$2"
  mkdir -p "$1"
  glusterd --log-file="$1/glusterd.log"
  for _ in $(seq 1 100); do gluster --mode=script volume list >/dev/null 2>&1 && break; sleep 0.1; done
  gluster --mode=script volume create "$2" transport tcp \
    "$gluster_host:$1/b1" "$gluster_host:$1/b2" "$gluster_host:$1/b3" force >/dev/null
  gluster --mode=script volume start "$2" >/dev/null
}

# stop_gluster VOLUME [MOUNT...]: unmount, stop and delete the volume, and end every GlusterFS
# process; safe when any of it is not there.
stop_gluster() {
  local vol=$1 m
  shift
  for m in "$@"; do umount -l "$m" 2>/dev/null || true; done
  gluster --mode=script volume stop "$vol" force >/dev/null 2>&1 || true
  gluster --mode=script volume delete "$vol" >/dev/null 2>&1 || true
  pkill -x glusterfsd 2>/dev/null || true
  pkill -x glusterd 2>/dev/null || true
  pkill -x glusterfs 2>/dev/null || true
}
