//! Keeps a frontend's caches right while it holds entries and attributes for long: one change
//! stream per storage node (`SealClient::watch`), every change another process makes handed to
//! the frontend's `ChangeSink` as soon as the node commits it. While every node that is up has a
//! live stream, the `CacheTtl` says the long TTL applies; from the moment a stream breaks, the
//! short one, and everything cached so far is dropped (changes may have been missed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use sealfs_core::placement::NodeState;
use sealfs_core::InodeId;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cache::CacheTtl;
use crate::SealClient;

/// What a frontend does with the changes other processes make.
pub trait ChangeSink: Send + Sync + 'static {
    /// `ino`'s attributes changed, or it is gone.
    fn inode(&self, ino: InodeId);
    /// The entry `name` of `parent` was added, removed or replaced.
    fn entry(&self, parent: InodeId, name: Bytes);
    /// Changes may have been missed: trust nothing cached so far.
    fn clear(&self);
}

/// Start the change streams; they stop when `cancel` fires. Does nothing when `ttl`'s long TTL
/// is not longer than its short one.
pub fn start(client: SealClient, ttl: Arc<CacheTtl>, sink: Arc<dyn ChangeSink>, cancel: CancellationToken) {
    if ttl.streams_useful() {
        tokio::spawn(supervise(client, ttl, sink, cancel));
    }
}

/// Keep one stream per node of the map, and say whether all nodes that are up have one.
async fn supervise(client: SealClient, ttl: Arc<CacheTtl>, sink: Arc<dyn ChangeSink>, cancel: CancellationToken) {
    let live: Arc<DashMap<String, bool>> = Arc::new(DashMap::new());
    let mut running: HashMap<String, CancellationToken> = HashMap::new();
    let mut was = false;
    loop {
        let map = client.router().map();
        for n in &map.nodes {
            if !running.contains_key(&n.addr) {
                let stop = cancel.child_token();
                running.insert(n.addr.clone(), stop.clone());
                tokio::spawn(watch_node(
                    client.clone(),
                    n.addr.clone(),
                    live.clone(),
                    ttl.clone(),
                    sink.clone(),
                    stop,
                ));
            }
        }
        running.retain(|addr, stop| {
            let keep = map.nodes.iter().any(|n| &n.addr == addr);
            if !keep {
                stop.cancel();
                live.remove(addr);
            }
            keep
        });
        let all = !map.nodes.is_empty()
            && map
                .nodes
                .iter()
                .filter(|n| n.state == NodeState::Up)
                .all(|n| live.get(&n.addr).is_some_and(|l| *l));
        ttl.set_watched(all);
        if all != was {
            info!(
                "change streams {}: caching entries and attributes for {:?}",
                if all { "live" } else { "not all live" },
                ttl.get()
            );
            was = all;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Follow the change stream of the node at `addr`, reconnecting when it breaks.
async fn watch_node(
    client: SealClient,
    addr: String,
    live: Arc<DashMap<String, bool>>,
    ttl: Arc<CacheTtl>,
    sink: Arc<dyn ChangeSink>,
    cancel: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            s = client.watch(&addr) => s,
            _ = cancel.cancelled() => return,
        };
        let mut first = true;
        match stream {
            Ok(mut s) => loop {
                let next = tokio::select! {
                    n = s.next() => n,
                    _ = cancel.cancelled() => return,
                };
                match next {
                    Ok(Some(c)) => {
                        if std::mem::take(&mut first) {
                            // From this batch on nothing is missed; what was cached while the
                            // stream was not there may be stale.
                            sink.clear();
                        }
                        live.insert(addr.clone(), true);
                        if c.reset {
                            // Changes were lost: nothing cached can be trusted for long.
                            warn!(node = %addr, "change stream fell behind; caching briefly until it is live again");
                            break;
                        }
                        for ino in c.inodes {
                            sink.inode(ino);
                        }
                        for (parent, name) in c.entries {
                            sink.entry(parent, name);
                        }
                    }
                    Ok(None) => {
                        debug!(node = %addr, "change stream ended");
                        break;
                    }
                    Err(e) => {
                        debug!(node = %addr, "change stream broke: {e}");
                        break;
                    }
                }
            },
            Err(e) => debug!(node = %addr, "no change stream: {e}"),
        }
        // From now on replies are cached briefly, until the supervisor sees every stream live.
        live.insert(addr.clone(), false);
        ttl.set_watched(false);
        sink.clear();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = cancel.cancelled() => return,
        }
    }
}
