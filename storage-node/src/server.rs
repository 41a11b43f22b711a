//! Node start-up and lifetime: check the folders, open the stores, register with the manager,
//! wait for the cluster map, recover, then serve on the given listener until cancelled.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use sealfs_client::Router;
use sealfs_core::config::{ClientConfig, ManagerConfig, NodeConfig, MAX_MESSAGE_SIZE};
use sealfs_proto::auth::{AuthChannel, Security};
use sealfs_proto::pb::{self, manager_client::ManagerClient, node_server::NodeServer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tracing::{info, warn};

use crate::chunks::ChunkStore;
use crate::locks::Locks;
use crate::node::Node;
use crate::service::NodeService;
use crate::store::MetaStore;

/// Check that `dir` exists, is a folder and is writable, with a message that says which.
pub fn check_dir(what: &str, dir: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(dir).with_context(|| {
        format!(
            "{what} {} does not exist or cannot be read (create it first)",
            dir.display()
        )
    })?;
    if !meta.is_dir() {
        bail!("{what} {} is not a folder", dir.display());
    }
    let probe = dir.join(".sealfs-write-probe");
    std::fs::write(&probe, b"probe").with_context(|| format!("{what} {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn stats(node: Option<&Node>, chunks: &ChunkStore, store: &MetaStore, security: &Security) -> pb::NodeStats {
    let (total, free) = chunks.space();
    pb::NodeStats {
        data_total_bytes: total,
        data_free_bytes: free,
        meta_total_bytes: 0,
        meta_free_bytes: 0,
        inodes: store.estimate_keys(),
        fills: node.map(|n| n.fill_progress()).unwrap_or_default(),
        auth_refused: security.refused(),
        scrub: node.map(|n| n.scrub.to_pb()),
    }
}

/// Register (retrying until the manager answers or we are cancelled); returns (node id, cluster id).
async fn register(
    mgr: &mut ManagerClient<AuthChannel>,
    node_id: u64,
    addr: &str,
    st: pb::NodeStats,
    fresh: bool,
    cancel: &CancellationToken,
) -> anyhow::Result<(u64, u64)> {
    let mut warned = false;
    loop {
        let req = pb::RegisterRequest {
            node_id,
            addr: addr.to_string(),
            stats: Some(st.clone()),
            fresh,
        };
        match mgr.register(req).await {
            Ok(r) => {
                let r = r.into_inner();
                return Ok((r.node_id, r.cluster_id));
            }
            Err(s) if s.code() == tonic::Code::FailedPrecondition || s.code() == tonic::Code::InvalidArgument => {
                bail!("manager refused registration: {}", s.message())
            }
            Err(s) if s.code() == tonic::Code::Unauthenticated => {
                bail!(
                    "manager refused registration: {} (check the cluster secret)",
                    s.message()
                )
            }
            Err(s) => {
                if !warned {
                    warn!("manager not reachable yet ({}); retrying", s.message());
                    warned = true;
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => bail!("cancelled before registering"),
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
    }
}

/// Run a storage node on `listener` until `cancel` fires.
pub async fn run(config: NodeConfig, listener: TcpListener, cancel: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    let meta_dir = Path::new(&config.meta_dir);
    let data_dir = Path::new(&config.data_dir);
    check_dir("meta dir", meta_dir)?;
    check_dir("data dir", data_dir)?;
    let security = Security::load(&config.security)?;
    let store = MetaStore::open(meta_dir, config.cache_mb)?;
    let chunks = ChunkStore::open(data_dir);

    let addr = match &config.advertise {
        Some(a) => a.clone(),
        None => listener.local_addr()?.to_string(),
    };
    let stored_id = store.node_u64("node_id")?.unwrap_or(0);
    let stored_cluster = store.node_u64("cluster_id")?;
    let mut mgr = sealfs_client::manager_client(&security, &config.manager, Duration::from_secs(2))?;
    let st = stats(None, &chunks, &store, &security);
    // After a crash the manager moves the epoch, so that this node, whose unsynced writes of
    // before may be gone, vouches only for what it takes from the map it gets next.
    let (id, cluster_id) = register(&mut mgr, stored_id, &addr, st, chunks.fresh, &cancel).await?;
    if let Some(c) = stored_cluster {
        if c != cluster_id {
            bail!(
                "meta dir {} belongs to cluster {c:#x}, but manager {} runs cluster {cluster_id:#x}",
                meta_dir.display(),
                config.manager
            );
        }
    }
    // The data folder is marked with its node id, so meta and data folders cannot be mixed up.
    let marker = data_dir.join("SEALFS_DATA");
    let expect = format!("sealfs data v1 node {id}\n");
    match std::fs::read_to_string(&marker) {
        Ok(s) if s == expect => {}
        Ok(s) => bail!("data dir {} belongs to another node ({})", data_dir.display(), s.trim()),
        Err(_) => {
            std::fs::write(&marker, &expect).with_context(|| format!("cannot write {}", marker.display()))?;
        }
    }
    if stored_id != id || stored_cluster.is_none() {
        store
            .put_node_u64s(&[("node_id", id), ("cluster_id", cluster_id)])
            .await?;
    }
    info!(node = id, %addr, "registered with manager {}", config.manager);

    let client_cfg = ClientConfig {
        manager: config.manager.clone(),
        security: config.security.clone(),
        ..Default::default()
    };
    let router = tokio::select! {
        r = Router::connect(client_cfg, Duration::from_secs(3600 * 24)) => r?,
        _ = cancel.cancelled() => return Ok(()),
    };
    let node = Arc::new(Node {
        id,
        store,
        chunks,
        router,
        locks: Locks::default(),
        pending: Default::default(),
        pending_gc: Default::default(),
        cleanup: Default::default(),
        repl: Default::default(),
        changes: Default::default(),
        finishing: Default::default(),
        creates: Default::default(),
        scrub: Default::default(),
    });
    // Registration was the manager's word: the node may lead partitions from here on, for as long
    // as it keeps heartbeating (see Replication::was_away).
    node.repl
        .heartbeat_started_ms
        .store(crate::replication::now_ms(), std::sync::atomic::Ordering::SeqCst);
    node.repl.failure_timeout_ms.store(
        ManagerConfig::default().failure_timeout_ms,
        std::sync::atomic::Ordering::SeqCst,
    );
    node.ensure_root().await?;
    // Take over the partitions this node leads (intents, chunk removals) before serving.
    node.on_map().await;
    tokio::spawn(node.clone().map_watcher(cancel.clone()));
    tokio::spawn(node.clone().cleanup_worker(cancel.clone()));
    tokio::spawn(node.clone().finish_worker(cancel.clone()));
    tokio::spawn(
        node.clone()
            .scrub_worker(config.scrub_interval_secs, config.scrub_mib_per_sec, cancel.clone()),
    );
    tokio::spawn(heartbeat_loop(
        node.clone(),
        security.clone(),
        mgr,
        addr.clone(),
        config.heartbeat_ms,
        cancel.clone(),
    ));

    info!(
        node = id,
        partitions = node.router.map().primary_partitions(id).len(),
        "serving on {addr}"
    );
    let svc = NodeServer::new(NodeService(node.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let svc = sealfs_proto::auth::WithOrigin(InterceptedService::new(svc, security.server_auth()));
    let incoming = sealfs_proto::process::incoming(listener, config.max_connections_per_client);
    // Framed connections (see sealfs_proto::framed) are served here; the rest go on to tonic.
    let (h2_tx, h2_rx) = tokio::sync::mpsc::channel(64);
    let framed_calls = tokio_util::task::TaskTracker::new();
    {
        // The server's graceful stop waits for every stream to end; change streams never end on
        // their own.
        let (node, cancel) = (node.clone(), cancel.clone());
        tokio::spawn(async move {
            cancel.cancelled().await;
            node.changes.close();
        });
    }
    tokio::spawn(sort_connections(
        incoming,
        security.serves_framed(),
        svc.clone(),
        h2_tx,
        framed_calls.clone(),
        cancel.clone(),
    ));
    security
        .server()?
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .add_service(svc)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(h2_rx), cancel.cancelled())
        .await?;
    // tonic waited for its calls; wait for the framed ones too before the final sync.
    framed_calls.close();
    if tokio::time::timeout(Duration::from_secs(10), framed_calls.wait())
        .await
        .is_err()
    {
        warn!("calls still running 10 s after the stop; stopping anyway");
    }
    node.store.sync().await.ok();
    node.chunks.close();
    info!(node = id, "stopped");
    Ok(())
}

/// The node's server-streaming methods, which the framed transport does not carry.
const STREAMING: &[&str] = &["/sealfs.v1.Node/Watch"];

type NodeSvc =
    sealfs_proto::auth::WithOrigin<InterceptedService<NodeServer<NodeService>, sealfs_proto::auth::ServerAuth>>;

/// Accept connections and send each to the protocol it speaks: framed ones are served here,
/// HTTP/2 (and TLS) ones go to tonic through `h2`.
async fn sort_connections(
    mut incoming: sealfs_proto::process::Incoming,
    framed: bool,
    svc: NodeSvc,
    h2: tokio::sync::mpsc::Sender<std::io::Result<sealfs_proto::process::LimitedConn>>,
    calls: tokio_util::task::TaskTracker,
    cancel: CancellationToken,
) {
    use tokio_stream::StreamExt;
    loop {
        let conn = tokio::select! {
            c = incoming.next() => c,
            _ = cancel.cancelled() => return,
        };
        let Some(conn) = conn else { return };
        let Ok(conn) = conn else { continue };
        if !framed {
            if h2.send(Ok(conn)).await.is_err() {
                return;
            }
            continue;
        }
        let (svc, h2, calls, cancel) = (svc.clone(), h2.clone(), calls.clone(), cancel.clone());
        tokio::spawn(async move {
            match sealfs_proto::framed::is_framed(conn.stream()).await {
                Some(true) => {
                    let (stream, _slot) = conn.into_parts();
                    sealfs_proto::framed::serve(stream, svc, STREAMING, calls, cancel).await;
                }
                Some(false) => {
                    let _ = h2.send(Ok(conn)).await;
                }
                None => {}
            }
        });
    }
}

async fn heartbeat_loop(
    node: Arc<Node>,
    security: Security,
    mut mgr: ManagerClient<AuthChannel>,
    addr: String,
    every_ms: u64,
    cancel: CancellationToken,
) {
    let mut failing = false;
    let mut last_end = crate::replication::now_ms();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(every_ms)) => {}
        }
        let req = pb::HeartbeatRequest {
            node_id: node.id,
            addr: addr.clone(),
            stats: Some(stats(Some(&node), &node.chunks, &node.store, &security)),
        };
        let started = crate::replication::now_ms();
        // A gap between two heartbeats as long as the manager's patience means this process was
        // paused: then only the manager's answer, not its silence, lets it act as primary again.
        let timeout = node.repl.failure_timeout_ms.load(std::sync::atomic::Ordering::SeqCst);
        let paused = timeout != 0 && started.saturating_sub(last_end) + 500 > timeout;
        let mut answered = false;
        match mgr.heartbeat(req).await {
            Ok(r) => {
                let timeout = r.get_ref().failure_timeout_ms;
                node.repl
                    .failure_timeout_ms
                    .store(timeout, std::sync::atomic::Ordering::SeqCst);
                if failing {
                    info!("manager reachable again");
                    failing = false;
                }
                let r = r.into_inner();
                if r.unknown_node {
                    let req = pb::RegisterRequest {
                        node_id: node.id,
                        addr: addr.clone(),
                        stats: None,
                        fresh: false,
                    };
                    if let Err(e) = mgr.register(req).await {
                        warn!("re-registration failed: {}", e.message());
                    }
                }
                let map = node.router.map();
                if r.epoch > map.epoch {
                    node.router.refresh_map(map.epoch).await;
                    if node.router.map().epoch < r.epoch {
                        // The router's own connection may be the one that is broken: take the map
                        // over the connection that just worked.
                        if let Ok(m) = mgr.get_map(pb::GetMapRequest {}).await {
                            if let Ok(m) = sealfs_proto::map_from_pb(m.get_ref()) {
                                node.router.install_map(m);
                            }
                        }
                    }
                    node.ensure_root().await.ok();
                }
                // The manager's word counts once this node's map is at least as new as it.
                answered = node.router.map().epoch >= r.epoch;
            }
            Err(s) => {
                if !failing {
                    warn!("heartbeat failed: {}; serving with the map we have", s.message());
                    failing = true;
                }
            }
        }
        // Only now, with the manager's word (or, if this process was not paused, its silence)
        // taken in, may the node act as a primary again.
        if answered || !paused {
            node.repl
                .heartbeat_started_ms
                .store(started, std::sync::atomic::Ordering::SeqCst);
        }
        last_end = crate::replication::now_ms();
    }
}
