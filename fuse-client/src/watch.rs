//! Keeps the kernel's caches right while it holds entries and attributes for long. The mount
//! keeps one change stream per storage node (`SealClient::watch`) and passes every change that
//! another process makes to the kernel as an invalidation (an inode's attributes, a directory
//! entry), as soon as the node commits it. While every node that is up has a live stream, replies
//! may be cached for the long TTL (`watched_ttl_ms`); otherwise, and from the moment a stream
//! breaks, only for the short one (`attr_ttl_ms`).
//!
//! The mount's own attribute cache (`attrs`) and its directories known whole (`names`) follow the
//! same streams.
//!
//! The kernel orders an invalidation after a reply that was already on its way (it drops the
//! attributes of a request older than the invalidation, and waits for a lookup in progress before
//! dropping an entry), so a change is never hidden behind a reply read just before it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use fuser::{INodeNo, Notifier};
use sealfs_client::SealClient;
use sealfs_core::placement::NodeState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::attrs::AttrCache;
use crate::names::KnownDirs;

/// How long the kernel may cache what the mount replies.
pub struct CacheTtl {
    short: Duration,
    long: Duration,
    /// Every node that is up has a live change stream.
    watched: AtomicBool,
}

impl CacheTtl {
    /// `short` without change streams, `long` while they are all live.
    pub fn new(short: Duration, long: Duration) -> Arc<CacheTtl> {
        Arc::new(CacheTtl {
            short,
            long,
            watched: AtomicBool::new(false),
        })
    }

    /// The long TTL while every change stream is live; None otherwise.
    pub fn watched_ttl(&self) -> Option<Duration> {
        self.watched.load(Ordering::SeqCst).then_some(self.long)
    }

    /// Say whether every node that is up has a live change stream.
    pub fn set_watched(&self, all: bool) {
        self.watched.store(all, Ordering::SeqCst);
    }

    /// The cache time for a reply sent now.
    pub fn get(&self) -> Duration {
        if self.watched.load(Ordering::SeqCst) {
            self.long
        } else {
            self.short
        }
    }
}

/// What the mount caches that the change streams keep right.
#[derive(Clone)]
pub struct Caches {
    pub ttl: Arc<CacheTtl>,
    pub attrs: Arc<AttrCache>,
    pub names: Arc<KnownDirs>,
}

impl Caches {
    /// Empty caches; the kernel's cache time is `short`, or `long` while the streams are live.
    pub fn new(short: Duration, long: Duration) -> Caches {
        let ttl = CacheTtl::new(short, long);
        Caches {
            attrs: AttrCache::new(ttl.clone()),
            names: KnownDirs::new(ttl.clone()),
            ttl,
        }
    }

    /// Changes may have been missed: trust nothing cached so far.
    fn clear(&self) {
        self.attrs.clear();
        self.names.clear();
    }
}

/// One invalidation for the kernel.
enum Inval {
    Inode(u64),
    Entry(u64, Bytes),
}

/// Start the change streams and the thread that hands their invalidations to the kernel; they
/// stop when `cancel` fires. Does nothing when the long TTL is not longer than the short one.
pub fn start(client: SealClient, caches: Caches, notifier: Notifier, cancel: CancellationToken) {
    let ttl = &caches.ttl;
    if ttl.long <= ttl.short {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel::<Inval>();
    // Its own thread: an entry invalidation waits in the kernel for lookups of that directory in
    // progress, whose replies the runtime's tasks must still be free to send.
    let spawned = std::thread::Builder::new().name("sealfs-inval".into()).spawn(move || {
        for i in rx {
            // ENOENT: the kernel does not hold that inode or entry; nothing to drop.
            let _ = match i {
                Inval::Inode(ino) => notifier.inval_inode(INodeNo(ino), -1, 0),
                Inval::Entry(parent, name) => notifier.inval_entry(INodeNo(parent), OsStr::from_bytes(&name)),
            };
        }
    });
    if let Err(e) = spawned {
        warn!(
            "cannot start the invalidation thread ({e}); caching for {:?} only",
            ttl.short
        );
        return;
    }
    tokio::spawn(supervise(client, caches, tx, cancel));
}

/// Keep one stream per node of the map, and say whether all nodes that are up have one.
async fn supervise(client: SealClient, caches: Caches, tx: std::sync::mpsc::Sender<Inval>, cancel: CancellationToken) {
    let ttl = caches.ttl.clone();
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
                    caches.clone(),
                    tx.clone(),
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
    caches: Caches,
    tx: std::sync::mpsc::Sender<Inval>,
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
                            // From this batch on nothing is missed; what the mount cached while
                            // the stream was not there may be stale.
                            caches.clear();
                        }
                        live.insert(addr.clone(), true);
                        if c.reset {
                            // Changes were lost: nothing cached can be trusted for long.
                            warn!(node = %addr, "change stream fell behind; caching briefly until it is live again");
                            break;
                        }
                        for ino in c.inodes {
                            caches.attrs.invalidate(ino);
                            let _ = tx.send(Inval::Inode(ino));
                        }
                        for (parent, name) in c.entries {
                            caches.names.touched(parent, &name);
                            let _ = tx.send(Inval::Entry(parent, name));
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
        caches.ttl.set_watched(false);
        caches.clear();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = cancel.cancelled() => return,
        }
    }
}
