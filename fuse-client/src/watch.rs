//! Keeps the kernel's caches right while it holds entries and attributes for long: the change
//! streams (`sealfs_client::watch`) hand every change another process makes to this mount, which
//! passes it to the kernel as an invalidation (an inode's attributes, a directory entry). While
//! every node that is up has a live stream, replies may be cached for the long TTL
//! (`watched_ttl_ms`); otherwise, and from the moment a stream breaks, only for the short one
//! (`attr_ttl_ms`).
//!
//! The mount's own attribute cache (`attrs`) and its directories known whole (`names`) follow the
//! same streams.
//!
//! The kernel orders an invalidation after a reply that was already on its way (it drops the
//! attributes of a request older than the invalidation, and waits for a lookup in progress before
//! dropping an entry), so a change is never hidden behind a reply read just before it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fuser::{INodeNo, Notifier};
use sealfs_client::{AttrCache, CacheTtl, ChangeSink, KnownDirs, SealClient};
use sealfs_core::InodeId;
use tokio_util::sync::CancellationToken;
use tracing::warn;

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
}

/// One invalidation for the kernel.
enum Inval {
    Inode(u64),
    Entry(u64, Bytes),
}

/// The mount's caches and the kernel's, as the change streams' sink.
struct KernelSink {
    caches: Caches,
    tx: Sender<Inval>,
}

impl KernelSink {
    fn send(&self, i: Inval) {
        let _ = self.tx.send(i);
    }
}

impl ChangeSink for KernelSink {
    fn inode(&self, ino: InodeId) {
        self.caches.attrs.invalidate(ino);
        self.send(Inval::Inode(ino));
    }

    fn entry(&self, parent: InodeId, name: Bytes) {
        self.caches.names.entry_changed(&self.caches.attrs, parent, &name);
        self.send(Inval::Entry(parent, name));
    }

    fn clear(&self) {
        self.caches.attrs.clear();
        self.caches.names.clear();
    }
}

/// Start the change streams and the thread that hands their invalidations to the kernel; they
/// stop when `cancel` fires. Does nothing when the long TTL is not longer than the short one.
pub fn start(client: SealClient, caches: Caches, notifier: Notifier, cancel: CancellationToken) {
    let ttl = caches.ttl.clone();
    if !ttl.streams_useful() {
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
            ttl.get()
        );
        return;
    }
    let sink = Arc::new(KernelSink { caches, tx });
    sealfs_client::watch::start(client, ttl, sink, cancel);
}
