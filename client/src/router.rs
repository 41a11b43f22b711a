//! Routing: which node serves a partition, how to reach it, and when to retry.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use sealfs_core::config::{ClientConfig, MAX_MESSAGE_SIZE};
use sealfs_core::placement::{ClusterMap, NodeState};
use sealfs_core::{FsError, FsResult, PartitionId};
use sealfs_proto::auth::{AuthChannel, Security};
use sealfs_proto::pb::manager_client::ManagerClient;
use sealfs_proto::pb::node_client::NodeClient;
use sealfs_proto::{error_from_status, map_from_pb, pb};
use tonic::transport::Endpoint;
use tracing::{debug, warn};

/// Routes requests to the node serving a partition, with a cached cluster map.
pub struct Router {
    config: ClientConfig,
    security: Security,
    map: RwLock<Arc<ClusterMap>>,
    conns: DashMap<String, NodeClient<AuthChannel>>,
    manager: RwLock<ManagerClient<AuthChannel>>,
    refresh: tokio::sync::Mutex<()>,
}

/// A client of the manager at `addr`, signed and (when configured) over TLS.
pub fn manager_client(security: &Security, addr: &str, timeout: Duration) -> FsResult<ManagerClient<AuthChannel>> {
    Ok(ManagerClient::new(security.channel(endpoint(security, addr, timeout)?))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE))
}

/// A client of the node at `addr`, signed and (when configured) over TLS.
pub fn node_client(security: &Security, addr: &str, timeout: Duration) -> FsResult<NodeClient<AuthChannel>> {
    Ok(
        NodeClient::new(security.node_channel(addr, endpoint(security, addr, timeout)?, timeout))
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE),
    )
}

fn endpoint(security: &Security, addr: &str, timeout: Duration) -> FsResult<Endpoint> {
    Ok(security
        .endpoint(addr)
        .map_err(|e| FsError::Invalid(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20)))
}

impl Router {
    /// Connect to the manager and fetch the map, waiting (up to `wait`) for the cluster to have
    /// its partitions assigned.
    pub async fn connect(config: ClientConfig, wait: Duration) -> FsResult<Arc<Router>> {
        config.validate().map_err(|e| FsError::Invalid(e.to_string()))?;
        let security = Security::load(&config.security).map_err(|e| FsError::Invalid(e.to_string()))?;
        let timeout = Duration::from_millis(config.rpc_timeout_ms);
        let manager = RwLock::new(manager_client(&security, &config.manager, timeout)?);
        let router = Arc::new(Router {
            config,
            security,
            map: RwLock::new(Arc::new(ClusterMap::new(0, 1, 1, 1 << 22))),
            conns: DashMap::new(),
            manager,
            refresh: tokio::sync::Mutex::new(()),
        });
        let deadline = Instant::now() + wait;
        let mut warned = false;
        loop {
            match router.fetch_map().await {
                Ok(m) if m.is_initialized() => {
                    *router.map.write().expect("map lock") = Arc::new(m);
                    return Ok(router);
                }
                Ok(_) => debug!("cluster map not initialized yet"),
                Err(FsError::Access) => {
                    return Err(FsError::Invalid(format!(
                        "manager {} refused this client's credentials: check the cluster secret",
                        router.config.manager
                    )))
                }
                Err(e) if !warned => {
                    warned = true;
                    warn!("manager {} not reachable yet (retrying): {e}", router.config.manager);
                }
                Err(e) => debug!("manager not reachable yet: {e}"),
            }
            if Instant::now() >= deadline {
                return Err(FsError::Unavailable(format!(
                    "no initialized cluster map from manager {} within {:?}",
                    router.config.manager, wait
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The client settings.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The cached cluster map.
    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.read().expect("map lock").clone()
    }

    /// This process's security settings.
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// A manager client (status, map).
    pub fn manager(&self) -> ManagerClient<AuthChannel> {
        self.manager.read().expect("manager client lock").clone()
    }

    /// Note a failed manager call: after a transport failure the connection is replaced, so a
    /// manager that came back (or moved) is reached again.
    pub fn manager_failed(&self, s: &tonic::Status) {
        if sealfs_proto::is_transport_error(s) {
            let timeout = Duration::from_millis(self.config.rpc_timeout_ms);
            if let Ok(c) = manager_client(&self.security, &self.config.manager, timeout) {
                *self.manager.write().expect("manager client lock") = c;
            }
        }
    }

    async fn fetch_map(&self) -> FsResult<ClusterMap> {
        let reply = self.manager().get_map(pb::GetMapRequest {}).await.map_err(|s| {
            self.manager_failed(&s);
            error_from_status(&s)
        })?;
        map_from_pb(reply.get_ref())
    }

    /// Fetch the map from the manager unless the cached one is already newer than `seen`.
    pub async fn refresh_map(&self, seen: u64) {
        let _guard = self.refresh.lock().await;
        if self.map().epoch > seen {
            return;
        }
        match self.fetch_map().await {
            Ok(m) if m.is_initialized() => {
                let mut cur = self.map.write().expect("map lock");
                if m.epoch >= cur.epoch {
                    *cur = Arc::new(m);
                }
            }
            Ok(_) => {}
            Err(e) => debug!("map refresh failed: {e}"),
        }
    }

    /// Install a map that someone else fetched, if it is newer.
    pub fn install_map(&self, m: ClusterMap) {
        let mut cur = self.map.write().expect("map lock");
        if m.epoch > cur.epoch && m.is_initialized() {
            *cur = Arc::new(m);
        }
    }

    /// A client for the node at `addr` (channels are shared and connect lazily).
    pub fn node_client(&self, addr: &str) -> FsResult<NodeClient<AuthChannel>> {
        if let Some(c) = self.conns.get(addr) {
            return Ok(c.clone());
        }
        let timeout = Duration::from_millis(self.config.rpc_timeout_ms);
        let client = node_client(&self.security, addr, timeout)?;
        self.conns.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// A client for the node at `addr` over HTTP/2, for streaming calls (which the framed
    /// transport does not carry); its own connection, not pooled.
    pub fn stream_client(&self, addr: &str) -> FsResult<NodeClient<AuthChannel>> {
        let timeout = Duration::from_millis(self.config.rpc_timeout_ms);
        Ok(
            NodeClient::new(self.security.channel(endpoint(&self.security, addr, timeout)?))
                .max_decoding_message_size(MAX_MESSAGE_SIZE),
        )
    }

    /// Note a failed call to `addr`: after a transport failure the pooled connection is dropped,
    /// so the next call connects afresh (and resolves the name again: a node that came back with
    /// another address is found).
    pub fn call_failed(&self, addr: &str, s: &tonic::Status) {
        if sealfs_proto::is_transport_error(s) {
            self.conns.remove(addr);
        }
    }

    /// Call the primary of `partition` with `f(client, epoch)`, retrying while the map is stale
    /// or the node is unreachable (up to the retry deadline). A node the map marks down fails at
    /// once with an I/O error, so callers never hang on a dead partition.
    pub async fn call<T, F, Fut>(&self, partition: PartitionId, f: F) -> FsResult<T>
    where
        F: Fn(NodeClient<AuthChannel>, u64) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + Duration::from_millis(self.config.retry_deadline_ms);
        let mut backoff = Duration::from_millis(20);
        let mut refreshed_down = false;
        if !self.map().has_partition(partition) {
            // Only a forged or corrupt inode id names a partition the cluster does not have.
            return Err(FsError::Stale);
        }
        loop {
            let map = self.map();
            let node = map.primary(partition).cloned();
            let node = match node {
                Some(n) => n,
                None => {
                    if refreshed_down {
                        return Err(FsError::Unavailable(format!("partition {partition} has no node")));
                    }
                    refreshed_down = true;
                    self.refresh_map(map.epoch).await;
                    continue;
                }
            };
            if node.state == NodeState::Down {
                if !refreshed_down {
                    refreshed_down = true;
                    self.refresh_map(map.epoch).await;
                    continue;
                }
                return Err(FsError::Unavailable(format!(
                    "partition {partition}: node {} ({}) is down",
                    node.id, node.addr
                )));
            }
            let client = self.node_client(&node.addr)?;
            let err = match f(client, map.epoch).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => {
                    self.call_failed(&node.addr, &s);
                    error_from_status(&s)
                }
            };
            match &err {
                FsError::WrongEpoch { node: node_epoch, .. } => {
                    debug!(partition, "wrong epoch, refreshing map");
                    self.refresh_map(map.epoch).await;
                    if self.map().epoch <= map.epoch && *node_epoch <= map.epoch {
                        // The node is behind us: give it a moment to catch up.
                        tokio::time::sleep(backoff).await;
                    }
                }
                FsError::Unavailable(_) | FsError::TimedOut(_) => {
                    if Instant::now() >= deadline {
                        warn!(partition, node = node.id, "giving up: {err}");
                        return Err(err);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    self.refresh_map(map.epoch).await;
                }
                _ => return Err(err),
            }
            if Instant::now() >= deadline + Duration::from_secs(5) {
                return Err(err);
            }
        }
    }
}
