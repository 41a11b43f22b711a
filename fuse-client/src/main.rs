//! `sealfs-fuse`: parse flags (each also a config-file key and an environment variable), mount,
//! and unmount on SIGINT/SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sealfs_core::config::{load_file, ClientConfig};
use sealfs_proto::process;
use tokio_util::sync::CancellationToken;

/// Mount a sealfs cluster with FUSE.
#[derive(Parser, Debug)]
#[command(name = "sealfs-fuse", version)]
struct Args {
    /// Where to mount (an existing directory).
    mountpoint: PathBuf,
    /// TOML config file with client settings (flags and environment override it).
    #[arg(long, env = "SEALFS_CLIENT_CONFIG")]
    config: Option<PathBuf>,
    /// Manager address (host:port).
    #[arg(long, env = "SEALFS_MANAGER")]
    manager: Option<String>,
    /// Let other users use the mount (needs user_allow_other in /etc/fuse.conf unless run as
    /// root; always on for root, since a file system with owners and modes is for many users).
    #[arg(long, env = "SEALFS_ALLOW_OTHER")]
    allow_other: bool,
    /// Threads reading FUSE requests.
    #[arg(long, env = "SEALFS_FUSE_THREADS", default_value_t = 4)]
    threads: usize,
    /// Attribute and entry cache time in milliseconds.
    #[arg(long, env = "SEALFS_ATTR_TTL_MS")]
    attr_ttl_ms: Option<u64>,
    /// Attribute and entry cache time in milliseconds while the mount hears every node's
    /// changes (0: no change streams, always --attr-ttl-ms).
    #[arg(long, env = "SEALFS_WATCHED_TTL_MS")]
    watched_ttl_ms: Option<u64>,
    /// Kernel read-ahead window per open file in KiB (0: the kernel's 128 KiB); needs root.
    #[arg(long, env = "SEALFS_READAHEAD_KB")]
    readahead_kb: Option<u32>,
    /// Block in KiB that a small (random) read fetches around itself for the kernel's page
    /// cache (0: reads fetch what is asked).
    #[arg(long, env = "SEALFS_READ_AROUND_KB")]
    read_around_kb: Option<u32>,
    /// Seconds to wait for the cluster at start-up.
    #[arg(long, env = "SEALFS_CONNECT_WAIT", default_value_t = 60)]
    connect_wait: u64,
    #[command(flatten)]
    security: sealfs_proto::auth::SecurityArgs,
}

fn main() {
    sealfs_proto::process::exit_on_error(real_main());
}

fn real_main() -> anyhow::Result<()> {
    process::init_logging();
    let args = Args::parse();
    let mut client: ClientConfig = match &args.config {
        Some(p) => load_file(p)?,
        None => ClientConfig::default(),
    };
    if let Some(v) = args.manager {
        client.manager = v;
    }
    if let Some(v) = args.attr_ttl_ms {
        client.attr_ttl_ms = v;
    }
    if let Some(v) = args.watched_ttl_ms {
        client.watched_ttl_ms = v;
    }
    if let Some(v) = args.readahead_kb {
        client.readahead_kb = v;
    }
    if let Some(v) = args.read_around_kb {
        client.read_around_kb = v;
    }
    args.security.apply(&mut client.security);
    client.validate()?;
    let config = sealfs_fuse::MountConfig {
        client,
        mountpoint: args.mountpoint,
        allow_other: args.allow_other || nix::unistd::geteuid().is_root(),
        threads: args.threads,
        connect_wait: Duration::from_secs(args.connect_wait),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            process::shutdown_signal().await;
            c.cancel();
        });
        sealfs_fuse::run(config, cancel).await
    })
}
