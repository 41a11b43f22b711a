#!/usr/bin/env bash
# Install what building (and, with --test, testing) sealfs needs on a fresh Debian/Ubuntu machine,
# skipping whatever is already there. Needs root (or sudo) for apt; safe to run again.
set -euo pipefail
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

pkgs=(clang libclang-dev protobuf-compiler pkg-config fuse3)
[ $want_test = 1 ] && pkgs+=(attr libnfs-utils util-linux)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing ${missing[*]}" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust from https://rustup.rs first" >&2
  exit 1
fi

if [ $want_test = 1 ]; then
  # The real-kernel NFS client harness: qemu, busybox, nfs-common and a Debian kernel (cached).
  "$(dirname "$0")/../tests/nfsvm/build.sh"
  export PATH="$HOME/.cargo/bin:$PATH"
  command -v pjdfstest >/dev/null 2>&1 || cargo install --locked --quiet pjdfstest
  command -v fsx >/dev/null 2>&1 || cargo install --locked --quiet fsx
fi
