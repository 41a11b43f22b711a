//! `sealfs-node`: parse flags (each also a config-file key and an environment variable) and run.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sealfs_core::config::{load_file, NodeConfig};
use sealfs_proto::process;
use tokio_util::sync::CancellationToken;

/// A sealfs storage node.
#[derive(Parser, Debug)]
#[command(name = "sealfs-node", version)]
struct Args {
    /// TOML config file (flags and environment override it).
    #[arg(long, env = "SEALFS_NODE_CONFIG")]
    config: Option<PathBuf>,
    /// Manager address (host:port).
    #[arg(long, env = "SEALFS_MANAGER")]
    manager: Option<String>,
    /// Address to listen on (host:port; port 0 picks a free one).
    #[arg(long, env = "SEALFS_NODE_LISTEN")]
    listen: Option<String>,
    /// Address others use to reach this node (default: the bound address).
    #[arg(long, env = "SEALFS_NODE_ADVERTISE")]
    advertise: Option<String>,
    /// Folder for metadata (RocksDB); must exist and be writable.
    #[arg(long, env = "SEALFS_META_DIR")]
    meta_dir: Option<String>,
    /// Folder for file data; must exist and be writable.
    #[arg(long, env = "SEALFS_DATA_DIR")]
    data_dir: Option<String>,
    /// RocksDB block cache in MiB.
    #[arg(long, env = "SEALFS_CACHE_MB")]
    cache_mb: Option<u64>,
    /// Seconds between scrub passes (0: no scrub), which read every chunk back and check it.
    #[arg(long, env = "SEALFS_SCRUB_INTERVAL_SECS")]
    scrub_interval_secs: Option<u64>,
    /// How fast a scrub pass reads, in MiB per second.
    #[arg(long, env = "SEALFS_SCRUB_MIB_PER_SEC")]
    scrub_mib_per_sec: Option<u64>,
    /// Write the bound address to this file once listening.
    #[arg(long, env = "SEALFS_ADDR_FILE")]
    addr_file: Option<PathBuf>,
    #[command(flatten)]
    security: sealfs_proto::auth::SecurityArgs,
}

fn main() {
    sealfs_proto::process::exit_on_error(real_main());
}

fn real_main() -> anyhow::Result<()> {
    process::init_logging();
    let args = Args::parse();
    let mut cfg: NodeConfig = match &args.config {
        Some(p) => load_file(p)?,
        None => NodeConfig::default(),
    };
    if let Some(v) = args.manager {
        cfg.manager = v;
    }
    if let Some(v) = args.listen {
        cfg.listen = v;
    }
    if let Some(v) = args.advertise {
        cfg.advertise = Some(v);
    }
    if let Some(v) = args.meta_dir {
        cfg.meta_dir = v;
    }
    if let Some(v) = args.data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = args.cache_mb {
        cfg.cache_mb = v;
    }
    if let Some(v) = args.scrub_interval_secs {
        cfg.scrub_interval_secs = v;
    }
    if let Some(v) = args.scrub_mib_per_sec {
        cfg.scrub_mib_per_sec = v;
    }
    args.security.clone().apply(&mut cfg.security);
    cfg.validate()?;
    // Check the folders before anything else so a bad path is the first and only message.
    sealfs_storage_node::server::check_dir("meta dir", std::path::Path::new(&cfg.meta_dir))?;
    sealfs_storage_node::server::check_dir("data dir", std::path::Path::new(&cfg.data_dir))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        if let Some(f) = &args.addr_file {
            process::write_addr_file(f, &listener.local_addr()?.to_string())?;
        }
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            process::shutdown_signal().await;
            c.cancel();
        });
        sealfs_storage_node::run(cfg, listener, cancel).await
    })
}
