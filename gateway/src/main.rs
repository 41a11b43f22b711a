//! `sealfs-gateway`: parse flags (each also a config-file key and an environment variable), bind
//! the NFS and portmapper ports, and serve.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sealfs_core::config::{load_file, GatewayConfig};
use sealfs_proto::process;
use tokio_util::sync::CancellationToken;

/// The sealfs NFSv3 gateway.
#[derive(Parser, Debug)]
#[command(name = "sealfs-gateway", version)]
struct Args {
    /// TOML config file (flags and environment override it); holds the export options too.
    #[arg(long, env = "SEALFS_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Manager address (host:port).
    #[arg(long, env = "SEALFS_MANAGER")]
    manager: Option<String>,
    /// Address NFS and MOUNT listen on (default 0.0.0.0:2049).
    #[arg(long, env = "SEALFS_NFS_LISTEN")]
    nfs_listen: Option<String>,
    /// Address the portmapper listens on, TCP and UDP (default 0.0.0.0:111; "none" for none).
    #[arg(long, env = "SEALFS_PORTMAP_LISTEN")]
    portmap_listen: Option<String>,
    /// Refuse every change.
    #[arg(long, env = "SEALFS_READ_ONLY")]
    read_only: bool,
    /// Map root to nobody.
    #[arg(long, env = "SEALFS_ROOT_SQUASH")]
    root_squash: bool,
    /// Client networks allowed (CIDR, comma separated; default: all).
    #[arg(long, env = "SEALFS_ALLOWED_NETWORKS", value_delimiter = ',')]
    allowed_networks: Option<Vec<String>>,
    /// How long GETATTR may be answered from the gateway's attribute cache, in ms (kept right by
    /// the nodes' change streams; 0: no cache; default 10000).
    #[arg(long, env = "SEALFS_ATTR_CACHE_MS")]
    attr_cache_ms: Option<u64>,
    /// Write the bound NFS address to this file once listening.
    #[arg(long, env = "SEALFS_ADDR_FILE")]
    addr_file: Option<PathBuf>,
    #[command(flatten)]
    security: sealfs_proto::auth::SecurityArgs,
}

fn main() {
    process::exit_on_error(real_main());
}

fn real_main() -> anyhow::Result<()> {
    process::init_logging();
    let args = Args::parse();
    let mut cfg: GatewayConfig = match &args.config {
        Some(p) => load_file(p)?,
        None => GatewayConfig::default(),
    };
    if let Some(v) = args.manager {
        cfg.manager = v;
    }
    if let Some(v) = args.nfs_listen {
        cfg.nfs_listen = v;
    }
    if let Some(v) = args.portmap_listen {
        cfg.portmap_listen = if v == "none" { String::new() } else { v };
    }
    cfg.read_only |= args.read_only;
    cfg.root_squash |= args.root_squash;
    if let Some(v) = args.allowed_networks {
        cfg.allowed_networks = v;
    }
    if let Some(v) = args.attr_cache_ms {
        cfg.attr_cache_ms = v;
    }
    args.security.clone().apply(&mut cfg.security);
    cfg.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let nfs = tokio::net::TcpListener::bind(&cfg.nfs_listen)
            .await
            .with_context(|| format!("cannot listen for NFS on {}", cfg.nfs_listen))?;
        let portmap = if cfg.portmap_listen.is_empty() {
            None
        } else {
            let hint = "(port 111 needs root; use --portmap-listen none and mount with port options)";
            let tcp = tokio::net::TcpListener::bind(&cfg.portmap_listen)
                .await
                .with_context(|| format!("cannot listen for the portmapper on {} {hint}", cfg.portmap_listen))?;
            let udp = tokio::net::UdpSocket::bind(tcp.local_addr()?)
                .await
                .with_context(|| format!("cannot listen for the portmapper on UDP {}", cfg.portmap_listen))?;
            Some((tcp, udp))
        };
        if let Some(f) = &args.addr_file {
            process::write_addr_file(f, &nfs.local_addr()?.to_string())?;
        }
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            process::shutdown_signal().await;
            c.cancel();
        });
        sealfs_gateway::run(cfg, nfs, portmap, cancel).await
    })
}
