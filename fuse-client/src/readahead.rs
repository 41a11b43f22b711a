//! The kernel's read-ahead window for this mount. Linux gives every FUSE mount a backing device
//! ("bdi", named after the mount's anonymous device number) with 128 KiB of read-ahead, whatever
//! `max_readahead` the daemon offers at init; a sequential read then waits on about one request
//! at a time. The window is the bdi's `read_ahead_kb` in sysfs, which root may set.

use std::path::{Path, PathBuf};

use sealfs_core::mounts::device_of;
use tracing::{debug, info, warn};

/// Set the mount's read-ahead window once the kernel has taken this daemon's INIT reply, which
/// would otherwise clamp it back to what INIT offered. The kernel holds every request until then,
/// so a statfs answered by the mount shows it happened. On a thread of its own: a mount that
/// never answers must not hold up the process's exit.
pub fn set_once_served(mountpoint: PathBuf, kb: u32) {
    std::thread::spawn(move || {
        let r = nix::sys::statfs::statfs(&mountpoint)
            .map_err(std::io::Error::from)
            .and_then(|_| set(&mountpoint, kb));
        match r {
            Ok(()) => debug!(kb, "read-ahead window set"),
            // Not root, or a read-only /sys (a container): the mount works with the kernel's
            // window, only sequential reads are slower, so this is no warning.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM | libc::EROFS)) => info!(
                "cannot set the read-ahead window to {kb} KiB ({e}): sequential reads use the kernel's \
                 128 KiB (run as root for more, or --readahead-kb 0 to not ask)"
            ),
            Err(e) => warn!("cannot set the read-ahead window to {kb} KiB ({e}); the kernel's stays"),
        }
    });
}

/// Set the read-ahead window of the mount at `mountpoint` to `kb` KiB.
fn set(mountpoint: &Path, kb: u32) -> std::io::Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dev = device_of(&mountinfo, mountpoint).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is not in /proc/self/mountinfo", mountpoint.display()),
        )
    })?;
    std::fs::write(format!("/sys/class/bdi/{dev}/read_ahead_kb"), kb.to_string())
}
