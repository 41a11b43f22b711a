//! sealfs-client: `SealClient`, the one client library every frontend (FUSE, NFS gateway) and
//! the storage nodes themselves use to reach the cluster: a cached cluster map, pooled gRPC
//! channels, routing by partition, and retry on a stale epoch or a node that went away; and the
//! attribute cache, the cache of names looked up, the directories whose names are all known, and
//! the change streams that keep them right, which the frontends share.

mod batch;
pub mod cache;
pub mod entries;
mod fs;
pub mod names;
mod router;
pub mod watch;

pub use cache::{AttrCache, CacheTtl, Ticket};
pub use entries::EntryCache;
pub use fs::{
    write_end, ChangeStream, Changed, Changes, DirChange, DirEntry, DirtyChunks, Entry, Layout, SealClient, StatFs,
    WriteMode,
};
pub use names::KnownDirs;
pub use router::{manager_client, node_client, Router};
pub use watch::ChangeSink;
