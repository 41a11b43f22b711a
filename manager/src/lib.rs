//! sealfs manager: storage nodes register and heartbeat; the manager keeps the cluster map
//! (nodes, partition -> ordered replica set, epoch) on disk, serves it, and marks nodes that stop
//! heartbeating down.

pub mod service;
pub mod state;

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sealfs_core::config::{ManagerConfig, MAX_MESSAGE_SIZE};
use sealfs_proto::auth::Security;
use sealfs_proto::pb::manager_server::ManagerServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tracing::{error, info};

use crate::service::ManagerService;
use crate::state::State;

/// Run the manager on `listener` until `cancel` fires.
pub async fn run(config: ManagerConfig, listener: TcpListener, cancel: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    let dir = Path::new(&config.dir);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create manager dir {}", dir.display()))?;
    // One manager per folder: a second one would overwrite the first one's map.
    let lock_file =
        File::create(dir.join("LOCK")).with_context(|| format!("manager dir {} is not writable", dir.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| anyhow::anyhow!("another manager already runs on {}", dir.display()))?;
    let security = Security::load(&config.security)?;
    let state = Arc::new(Mutex::new(State::open(dir, &config)?));
    let addr = listener.local_addr()?;
    info!(%addr, dir = %dir.display(), "manager serving");

    let timeout = Duration::from_millis(config.failure_timeout_ms);
    let detector = {
        let state = state.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let mut s = state.lock().expect("state lock");
                if let Err(e) = s.detect_failures(timeout, Instant::now()) {
                    error!("cannot persist the cluster state: {e:#}");
                }
            }
        })
    };
    let svc = ManagerServer::new(ManagerService::new(
        state.clone(),
        config.failure_timeout_ms,
        security.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_SIZE)
    .max_encoding_message_size(MAX_MESSAGE_SIZE);
    // Every node, gateway and client keeps one or two connections to the manager.
    let incoming = sealfs_proto::process::incoming(listener, 256);
    security
        .server()?
        .add_service(InterceptedService::new(svc, security.server_auth()))
        .serve_with_incoming_shutdown(incoming, cancel.cancelled())
        .await?;
    detector.abort();
    info!("manager stopped");
    Ok(())
}
