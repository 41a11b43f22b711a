//! sealfs-gateway: a stateless NFSv3 + MOUNT server (with a portmapper) over SealClient, so that
//! any Linux machine can `mount -t nfs HOST:/ /mnt`. The protocol is the nfsserve fork's; this
//! crate only adapts it to the cluster (`backend`) and mints file handles (`handle`).

pub mod backend;
pub mod handle;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sealfs_client::SealClient;
use sealfs_core::config::{ClientConfig, GatewayConfig};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Serve NFS on `nfs` (and the portmapper on `portmap`, TCP and UDP) until `cancel` fires.
/// `advertised_port` is what the portmapper tells clients NFS and MOUNT listen on.
pub async fn run(
    config: GatewayConfig,
    nfs: TcpListener,
    portmap: Option<(TcpListener, UdpSocket)>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let client_cfg = ClientConfig {
        manager: config.manager.clone(),
        security: config.security.clone(),
        ..Default::default()
    };
    let client = tokio::select! {
        c = SealClient::connect(client_cfg, Duration::from_secs(3600)) => {
            c.with_context(|| format!("cannot reach the cluster through manager {}", config.manager))?
        }
        _ = cancel.cancelled() => return Ok(()),
    };
    let port = nfs.local_addr()?.port();
    info!(
        cluster = format!("{:#x}", client.cluster_id()),
        export = config.export,
        read_only = config.read_only,
        "gateway ready"
    );
    let per_client = config.max_connections_per_client;
    let backend = Arc::new(backend::Gateway::new(client, config)?);
    backend.watch(cancel.child_token());
    tokio::spawn(backend.clone().commit_idle_loop(cancel.child_token()));
    nfsserve::server::run(backend, nfs, portmap, port, per_client, cancel).await?;
    info!("gateway stopped");
    Ok(())
}
