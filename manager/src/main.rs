//! `sealfs-manager`: parse flags (each also a config-file key and an environment variable) and run.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sealfs_core::config::{load_file, ManagerConfig};
use sealfs_proto::process;
use tokio_util::sync::CancellationToken;

/// The sealfs manager: membership, heartbeats and the cluster map.
#[derive(Parser, Debug)]
#[command(name = "sealfs-manager", version)]
struct Args {
    /// TOML config file (flags and environment override it).
    #[arg(long, env = "SEALFS_MANAGER_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (host:port; port 0 picks a free one).
    #[arg(long, env = "SEALFS_MANAGER_LISTEN")]
    listen: Option<String>,
    /// Folder for the manager's state (created if missing).
    #[arg(long, env = "SEALFS_MANAGER_DIR")]
    dir: Option<String>,
    /// Partitions of a new cluster (a power of two).
    #[arg(long, env = "SEALFS_PARTITIONS")]
    partitions: Option<u32>,
    /// Replicas per partition of a new cluster.
    #[arg(long, env = "SEALFS_REPLICATION")]
    replication: Option<u32>,
    /// Nodes that must register before partitions are first assigned.
    #[arg(long, env = "SEALFS_MIN_NODES")]
    min_nodes: Option<u32>,
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
    let mut cfg: ManagerConfig = match &args.config {
        Some(p) => load_file(p)?,
        None => ManagerConfig::default(),
    };
    if let Some(v) = args.listen {
        cfg.listen = v;
    }
    if let Some(v) = args.dir {
        cfg.dir = v;
    }
    if let Some(v) = args.partitions {
        cfg.partitions = v;
    }
    if let Some(v) = args.replication {
        cfg.replication = v;
    }
    if let Some(v) = args.min_nodes {
        cfg.min_nodes = v;
    }
    args.security.clone().apply(&mut cfg.security);
    cfg.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
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
        sealfs_manager::run(cfg, listener, cancel).await
    })
}
