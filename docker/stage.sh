#!/usr/bin/env bash
# Stage the image's root file system in docker/rootfs: the release binaries, the shared
# libraries they load (the image has no base to provide them), busybox for a shell and tools,
# and the few files a process expects. Then `docker build docker/` makes the image from nothing,
# so it builds where no registry can be reached, and the same way where one can.
#   docker/stage.sh [--no-build]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
if [ "${1:-}" != "--no-build" ]; then
  "$top/scripts/deps.sh"
  cargo build --release --quiet --manifest-path "$top/Cargo.toml" --bins
fi
root="$here/rootfs"
rm -rf "$root"
mkdir -p "$root/usr/local/bin" "$root/bin" "$root/etc" "$root/tmp" "$root/var/lib/sealfs" "$root/mnt/sealfs" "$root/manifests"
chmod 1777 "$root/tmp"
bins=(sealfs sealfs-manager sealfs-node sealfs-gateway sealfs-fuse)
for b in "${bins[@]}"; do
  cp "$top/target/release/$b" "$root/usr/local/bin/"
  strip --strip-debug "$root/usr/local/bin/$b" 2>/dev/null || true
done
# Every shared library the binaries load, at the path the dynamic loader looks for it.
for b in "${bins[@]}"; do
  for lib in $(ldd "$top/target/release/$b" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done
# A shell and the usual tools, for `docker exec` and the cluster test (busybox-static).
if [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; then
  cp /bin/busybox "$root/bin/busybox"
  for t in $(/bin/busybox --list); do
    [ "$t" = busybox ] || ln -sf busybox "$root/bin/$t"
  done
else
  echo "note: no static busybox (apt-get install busybox-static): the image has no shell" >&2
fi
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
echo "staged $(du -sh "$root" | cut -f1) in $root"
# The cluster secret the compose file hands to every container (kept if it exists).
"$top/target/release/sealfs" gen-secret "$here/secret" >/dev/null
