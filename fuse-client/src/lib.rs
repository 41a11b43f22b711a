//! sealfs-fuse: mounts a sealfs cluster with FUSE. `fs` adapts fuser's callbacks to SealClient;
//! `state` holds what must outlive one request (open files, listings in progress).

pub mod fs;
pub mod readahead;
pub mod state;
pub mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use fuser::{Config, MountOption, SessionACL};
use sealfs_client::SealClient;
use sealfs_core::config::ClientConfig;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// Client settings (manager address, timeouts, cache TTL).
    pub client: ClientConfig,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Let users other than the one who mounted use the mount.
    pub allow_other: bool,
    /// Threads reading /dev/fuse.
    pub threads: usize,
    /// How long to wait for the cluster at start-up.
    pub connect_wait: Duration,
}

/// Mount and serve until `cancel` fires or the mount is unmounted from outside; then unmount.
pub async fn run(config: MountConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    let mp = config.mountpoint.clone();
    check_mountpoint(&mp)?;
    // Resolved before mounting: once mounted, a path walk through the mount point would ask
    // this daemon, which is not serving yet.
    let canonical = std::fs::canonicalize(&mp).unwrap_or_else(|_| mp.clone());
    let client = SealClient::connect(config.client.clone(), config.connect_wait)
        .await
        .with_context(|| format!("cannot reach the cluster through manager {}", config.client.manager))?;
    let caches = watch::Caches::new(
        Duration::from_millis(config.client.attr_ttl_ms),
        Duration::from_millis(config.client.watched_ttl_ms),
    );
    let fs = fs::SealFs::new(client.clone(), tokio::runtime::Handle::current(), caches.clone());
    let kernel = fs.kernel_notifier();
    let mut options = vec![
        MountOption::FSName(format!("sealfs:{}", config.client.manager)),
        MountOption::Subtype("sealfs".into()),
        MountOption::Dev,
        MountOption::Suid,
        MountOption::RW,
        // The kernel serves paths and attributes from its caches without asking the mount, so it
        // must check modes itself on the way (the nodes check again on every call they get):
        // without this, a cached name in a folder the caller may not search was reachable.
        MountOption::DefaultPermissions,
    ];
    if config.allow_other {
        options.push(MountOption::CUSTOM("allow_other".into()));
    }
    let mut fuse_config = Config::default();
    fuse_config.mount_options = options;
    fuse_config.acl = if config.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    fuse_config.n_threads = Some(config.threads.max(1));
    fuse_config.clone_fd = config.threads > 1;
    let mut session = tokio::task::spawn_blocking(move || fuser::Session::new(fs, &mp, &fuse_config))
        .await?
        .with_context(|| format!("cannot mount on {}", config.mountpoint.display()))?;
    let _ = kernel.set(session.notifier());
    let mut unmounter = session.unmount_callable();
    let watching = cancel.child_token();
    watch::start(client.clone(), caches, session.notifier(), watching.clone());
    info!(mountpoint = %config.mountpoint.display(), cluster = format!("{:#x}", client.cluster_id()), "mounted");
    let mut serve = tokio::task::spawn_blocking(move || session.run());
    if config.client.readahead_kb > 0 {
        readahead::set_once_served(canonical, config.client.readahead_kb);
    }
    tokio::select! {
        r = &mut serve => {
            watching.cancel();
            info!("unmounted from outside");
            r??;
            return Ok(());
        }
        _ = cancel.cancelled() => {}
    }
    watching.cancel();
    info!(mountpoint = %config.mountpoint.display(), "unmounting");
    if let Err(e) = unmounter.unmount() {
        // Busy (a process has its working directory in the mount): detach it lazily instead.
        warn!("unmount failed ({e}); detaching lazily");
        let _ = nix::mount::umount2(&config.mountpoint, nix::mount::MntFlags::MNT_DETACH);
    }
    match tokio::time::timeout(Duration::from_secs(10), serve).await {
        Ok(r) => r??,
        Err(_) => warn!("FUSE session did not end within 10 s after unmount"),
    }
    Ok(())
}

/// A clear message for a mount point that cannot be used.
fn check_mountpoint(mp: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(mp).with_context(|| format!("mount point {} does not exist", mp.display()))?;
    if !meta.is_dir() {
        anyhow::bail!("mount point {} is not a directory", mp.display());
    }
    Ok(())
}
