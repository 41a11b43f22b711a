//! The metadata store: RocksDB under --meta-dir, with typed reads and atomic write batches.
//! Durable writes sync the WAL before they return; they run on the blocking pool so a slow disk
//! never stalls the async workers.

use std::path::Path;
use std::sync::Arc;

use dashmap::DashMap;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, WriteBatch,
    WriteOptions, DB,
};
use sealfs_core::ids::{ino_partition, make_ino, MAX_SEQ};
use sealfs_core::{FsError, FsResult, InodeId, PartitionId};

use crate::keys;
use crate::records::{DentryRecord, InodeRecord};

/// Map a RocksDB error to a file-system error (a full disk is ENOSPC).
pub fn db_err(e: rocksdb::Error) -> FsError {
    let s = e.to_string();
    if s.contains("No space left") || s.contains("ENOSPC") {
        tracing::error!("the metadata store found its disk full ({s}); it may refuse writes until the node restarts");
        FsError::NoSpace
    } else {
        FsError::Io(format!("metadata store: {s}"))
    }
}

/// Inode ids are reserved in blocks: the stored high-water mark only grows, so an id is never
/// handed out twice, even after a crash.
const SEQ_BLOCK: u64 = 4096;

/// The first sequence a partition hands out (sequence 1 of partition 0 is the root).
const FIRST_SEQ: u64 = 2;

/// In-memory window of reserved sequence numbers: (next, limit).
type SeqWindow = Arc<tokio::sync::Mutex<(u64, u64)>>;

/// The metadata store of one node.
#[derive(Clone)]
pub struct MetaStore {
    db: Arc<DB>,
    inode_seq: Arc<DashMap<PartitionId, SeqWindow>>,
    intent_seq: SeqWindow,
    space: Arc<SpaceGuard>,
}

/// Keeps the metadata disk from filling up under RocksDB: a write that RocksDB cannot log puts it
/// in an error state that only a reopen clears, so writes that add data are refused (ENOSPC)
/// while the disk's free space is below a reserve, and taken again once it is back.
struct SpaceGuard {
    dir: std::path::PathBuf,
    /// The folder, held open: asking through a descriptor spares every write a path walk.
    dir_fd: Option<std::fs::File>,
    /// Bytes to keep free: a tenth of the disk, at most 256 MiB.
    reserve: u64,
    low: std::sync::atomic::AtomicBool,
}

impl SpaceGuard {
    fn new(dir: &Path) -> SpaceGuard {
        let total = nix::sys::statvfs::statvfs(dir)
            .map(|s| s.blocks() * s.fragment_size())
            .unwrap_or(0);
        SpaceGuard {
            dir: dir.to_path_buf(),
            dir_fd: std::fs::File::open(dir).ok(),
            reserve: (total / 10).min(256 << 20),
            low: Default::default(),
        }
    }

    /// Bytes free on the disk for unprivileged use, if the system says.
    fn free(&self) -> Option<u64> {
        let stat = match &self.dir_fd {
            Some(f) => nix::sys::statvfs::fstatvfs(f),
            None => nix::sys::statvfs::statvfs(&self.dir),
        };
        stat.ok().map(|s| s.blocks_available() * s.fragment_size())
    }

    /// Whether `bytes` more would still leave the reserve free.
    fn room_for(&self, bytes: u64) -> bool {
        self.free().is_some_and(|free| free >= self.reserve + bytes)
    }

    fn check(&self) -> FsResult<()> {
        use std::sync::atomic::Ordering;
        let low = self.low.load(Ordering::Relaxed);
        // Every write looks (statvfs reads the superblock's counters, no I/O): RocksDB must
        // never be the one to find the disk full.
        if let Some(free) = self.free() {
            let now_low = free < self.reserve;
            if now_low != low {
                if now_low {
                    tracing::warn!(free, reserve = self.reserve, dir = %self.dir.display(), "metadata disk nearly full: refusing writes (ENOSPC) until space is freed");
                } else {
                    tracing::info!(free, "metadata disk has room again: taking writes");
                }
                self.low.store(now_low, Ordering::Relaxed);
            }
        }
        if self.low.load(Ordering::Relaxed) {
            return Err(FsError::NoSpace);
        }
        Ok(())
    }
}

/// Reusing a WAL file pays while this many bytes are written into it: its size from before.
const WAL_REUSE_BYTES: u64 = 32 << 20;

/// How the WAL a store writes after opening came to be a reused file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WalReuse {
    /// An older WAL was big enough.
    Found,
    /// None was: one was first grown with scratch writes.
    Filled,
    /// It is not a reused file (no room, or RocksDB did not reuse one).
    No,
}

/// The WAL files in `dir` with their sizes, oldest (lowest number) first: the last is the one
/// being written, as a reused file is renamed to the new number.
fn wal_files(dir: &Path) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let number = name.to_str()?.strip_suffix(".log")?.parse().ok()?;
            Some((number, e.metadata().ok()?.len()))
        })
        .collect();
    v.sort();
    v
}

/// Writes to apply: key, and the new value or None to delete.
pub type KvOps = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Key-value pairs read from the store.
pub type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// One directory entry read from the store: (name, cookie, record).
pub type ListedEntry = (Vec<u8>, u64, DentryRecord);

impl MetaStore {
    /// Open (creating the database inside an existing folder) and check the format version.
    pub fn open(dir: &Path, cache_mb: u64) -> anyhow::Result<MetaStore> {
        Ok(Self::open_reusing(dir, cache_mb)?.0)
    }

    /// [`MetaStore::open`], also saying how the WAL being written was made a reused one (see
    /// [`MetaStore::reuse_big_wal`]).
    fn open_reusing(dir: &Path, cache_mb: u64) -> anyhow::Result<(MetaStore, WalReuse)> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        opts.set_keep_log_file_num(4);
        opts.set_max_total_wal_size(256 << 20);
        // Every metadata change syncs the WAL. Appending to a new WAL file grows it, so each
        // fdatasync also writes the file's inode (size, extents): two writes to the disk, not
        // one. Reused WAL files are overwritten in place and keep their size.
        opts.set_recycle_log_file_num(2);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache((cache_mb.max(8) as usize) << 20));
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        opts.set_block_based_table_factory(&table);
        // Point lookups of whole keys dominate; a prefix extractor would not help range scans
        // that cross partitions (migration), so keep the default whole-key bloom filter.
        let cfs = vec![
            ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, opts.clone()),
            ColumnFamilyDescriptor::new(keys::NODE_CF, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&opts, dir, cfs)
            .map_err(|e| anyhow::anyhow!("cannot open metadata store in {}: {e}", dir.display()))?;
        let store = MetaStore {
            db: Arc::new(db),
            inode_seq: Arc::new(DashMap::new()),
            intent_seq: Arc::new(tokio::sync::Mutex::new((0, 0))),
            space: Arc::new(SpaceGuard::new(dir)),
        };
        let reuse = store.reuse_big_wal(dir);
        match store.node_u64("format")? {
            None => store.put_node_u64_blocking("format", keys::FORMAT_VERSION)?,
            Some(v) if v == keys::FORMAT_VERSION => {}
            Some(v) => anyhow::bail!(
                "metadata store in {} has format version {v}; this build reads version {}",
                dir.display(),
                keys::FORMAT_VERSION
            ),
        }
        Ok((store, reuse))
    }

    /// Make the WAL being written a reused file of at least [`WAL_REUSE_BYTES`], so that the
    /// synced writes of this run overwrite it in place rather than grow it.
    ///
    /// RocksDB opens a new WAL at every start, and reuses old ones only at the next switch
    /// (after 64 MiB of writes): without this, a node's first 64 MiB of metadata changes after
    /// each start cost two disk writes per sync. Switching is a small write and a flush of
    /// both column families; when no old WAL is big enough to be worth reusing, the live one is
    /// first made big with unsynced writes of a scratch key. That is needed after most
    /// restarts too: closing a WAL cuts it back to what was written into it (RocksDB trims the
    /// space it allocated ahead, and the crate cannot turn that off), so only WALs closed full
    /// stay big. Best effort: a failure only costs speed.
    fn reuse_big_wal(&self, dir: &Path) -> WalReuse {
        let start = std::time::Instant::now();
        let mut filled = false;
        for _ in 0..8 {
            let wals = wal_files(dir);
            let Some((&(_, live), older)) = wals.split_last() else {
                return WalReuse::No;
            };
            if live >= WAL_REUSE_BYTES {
                tracing::debug!(live, filled, took = ?start.elapsed(), "writing into a reused WAL");
                return if filled { WalReuse::Filled } else { WalReuse::Found };
            }
            let r = if older.iter().any(|&(_, len)| len >= WAL_REUSE_BYTES) {
                Ok(())
            } else if self.space.room_for(4 * WAL_REUSE_BYTES) {
                filled = true;
                self.fill_wal()
            } else {
                tracing::debug!("too little free space to prepare a WAL for reuse");
                return WalReuse::No;
            };
            if let Err(e) = r.and_then(|()| self.switch_wal()) {
                tracing::warn!("could not prepare a WAL for reuse (synced writes will be slower): {e}");
                return WalReuse::No;
            }
            // Obsolete WALs join the reuse list when the flush job cleans up, which may be
            // just after flush() returned.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        tracing::debug!(wals = ?wal_files(dir), "no WAL was reused at start");
        WalReuse::No
    }

    /// Grow the live WAL by [`WAL_REUSE_BYTES`] of unsynced writes to a scratch key, then
    /// delete the key.
    fn fill_wal(&self) -> Result<(), rocksdb::Error> {
        // Page-sized pieces, so that the file stays in the page cache as 4 KiB pages. The
        // kernel sizes a page-cache folio by the write that makes it (ext4 with large folios,
        // as on this host's Linux 6.18): 1 MiB pieces left the reused WAL cached as large
        // folios, and every later append of a synced change (a few hundred bytes) went through
        // ext4's walk of all the blocks of its folio, in the write and again in the fdatasync.
        // The fill takes ~50 ms longer; cluster CPU per FUSE create went down ~5%, per remove
        // ~8% (six rounds).
        const PIECE: usize = 4 << 10;
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        let piece = vec![0u8; PIECE];
        for _ in 0..WAL_REUSE_BYTES as usize / PIECE {
            self.db.put_cf_opt(self.node_cf(), keys::WAL_FILL, &piece, &wo)?;
        }
        self.db.delete_cf_opt(self.node_cf(), keys::WAL_FILL, &wo)
    }

    /// Start a new WAL (a reused one when RocksDB has one): the live one gets a record, so it
    /// is not empty, and both column families are flushed, so it is no longer needed.
    fn switch_wal(&self) -> Result<(), rocksdb::Error> {
        self.db.delete_cf(self.node_cf(), keys::WAL_FILL)?;
        self.db.flush_cf(self.node_cf())?;
        self.db.flush()
    }

    fn node_cf(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(keys::NODE_CF)
            .expect("node column family is created at open")
    }

    /// A node-local u64 value.
    pub fn node_u64(&self, name: &str) -> FsResult<Option<u64>> {
        let v = self.db.get_cf(self.node_cf(), name.as_bytes()).map_err(db_err)?;
        Ok(v.and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes)))
    }

    fn put_node_u64_blocking(&self, name: &str, v: u64) -> FsResult<()> {
        let mut b = WriteBatch::default();
        b.put_cf(self.node_cf(), name.as_bytes(), v.to_be_bytes());
        self.write_blocking(b, true)
    }

    /// Store node-local u64 values durably.
    pub async fn put_node_u64s(&self, values: &[(&str, u64)]) -> FsResult<()> {
        let mut b = WriteBatch::default();
        for (name, v) in values {
            b.put_cf(self.node_cf(), name.as_bytes(), v.to_be_bytes());
        }
        self.write(b, true).await
    }

    /// Raw get.
    pub fn get(&self, key: &[u8]) -> FsResult<Option<Vec<u8>>> {
        self.db.get(key).map_err(db_err)
    }

    /// A stored big-endian u64.
    pub fn get_u64(&self, key: &[u8]) -> FsResult<Option<u64>> {
        Ok(self
            .get(key)?
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes)))
    }

    /// An inode record, if it exists.
    pub fn get_inode(&self, ino: InodeId) -> FsResult<Option<InodeRecord>> {
        match self.get(&keys::inode(ino_partition(ino), ino))? {
            Some(v) => Ok(Some(InodeRecord::decode(ino, &v)?)),
            None => Ok(None),
        }
    }

    /// An inode record; ENOENT if it does not exist.
    pub fn inode(&self, ino: InodeId) -> FsResult<InodeRecord> {
        self.get_inode(ino)?.ok_or(FsError::NotFound)
    }

    /// A directory entry, if it exists.
    pub fn get_dentry(&self, parent: InodeId, name: &[u8]) -> FsResult<Option<DentryRecord>> {
        match self.get(&keys::dentry(ino_partition(parent), parent, name))? {
            Some(v) => Ok(Some(DentryRecord::decode(&v)?)),
            None => Ok(None),
        }
    }

    fn iter_from(&self, start: &[u8], end: Vec<u8>) -> rocksdb::DBIteratorWithThreadMode<'_, DB> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end);
        self.db.iterator_opt(IteratorMode::From(start, Direction::Forward), ro)
    }

    /// Whether a directory has no entries.
    pub fn dir_is_empty(&self, ino: InodeId) -> FsResult<bool> {
        let prefix = keys::dentry_prefix(ino_partition(ino), ino);
        let mut it = self.iter_from(&prefix, keys::prefix_end(&prefix));
        match it.next() {
            None => Ok(true),
            Some(Ok(_)) => Ok(false),
            Some(Err(e)) => Err(db_err(e)),
        }
    }

    /// Up to `max` entries of a directory after `cookie`, in cookie order; true when the listing
    /// reached the end.
    pub fn list_dir(&self, ino: InodeId, cookie: u64, max: usize) -> FsResult<(Vec<ListedEntry>, bool)> {
        let p = ino_partition(ino);
        let prefix = keys::dentry_prefix(p, ino);
        let start = keys::dentry_seek(p, ino, cookie);
        let mut out = Vec::new();
        for item in self.iter_from(&start, keys::prefix_end(&prefix)) {
            let (k, v) = item.map_err(db_err)?;
            if out.len() >= max {
                return Ok((out, false));
            }
            let (_, c, name) = keys::parse_dentry(&k).ok_or_else(|| FsError::Io("corrupt dentry key".into()))?;
            out.push((name.to_vec(), c, DentryRecord::decode(&v)?));
        }
        Ok((out, true))
    }

    /// All (key, value) pairs under a prefix.
    pub fn scan_prefix(&self, prefix: &[u8]) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.iter_from(prefix, keys::prefix_end(prefix)) {
            let (k, v) = item.map_err(db_err)?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Apply writes atomically; with `sync` they are durable (WAL fsync'd) when this returns.
    pub async fn write_ops(&self, ops: KvOps, sync: bool) -> FsResult<()> {
        if ops.iter().any(|(_, v)| v.is_some()) {
            self.space.check()?;
        }
        let mut b = WriteBatch::default();
        for (k, v) in ops {
            match v {
                Some(v) => b.put(k, v),
                None => b.delete(k),
            }
        }
        self.write_unguarded(b, sync).await
    }

    /// Remove everything of partition `p` (durably).
    pub async fn delete_partition(&self, p: PartitionId) -> FsResult<()> {
        let (start, end) = keys::partition_range(p);
        let mut b = WriteBatch::default();
        b.delete_range(start, end);
        // Removing frees space: never refused for want of it.
        self.write_unguarded(b, true).await?;
        self.inode_seq.remove(&p);
        Ok(())
    }

    /// Stream every entry of partition `p` as of now (a consistent snapshot), in batches of about
    /// `batch_bytes`, into `tx`; stops early if the receiver goes away.
    pub fn scan_partition_snapshot(&self, p: PartitionId, batch_bytes: usize, tx: tokio::sync::mpsc::Sender<KvPairs>) {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let snap = db.snapshot();
            let (start, end) = keys::partition_range(p);
            let mut ro = ReadOptions::default();
            ro.set_iterate_upper_bound(end);
            ro.set_snapshot(&snap);
            let mut batch = Vec::new();
            let mut size = 0;
            for item in db.iterator_opt(IteratorMode::From(&start, Direction::Forward), ro) {
                let Ok((k, v)) = item else { break };
                size += k.len() + v.len();
                batch.push((k.to_vec(), v.to_vec()));
                if size >= batch_bytes {
                    if tx.blocking_send(std::mem::take(&mut batch)).is_err() {
                        return;
                    }
                    size = 0;
                }
            }
            if !batch.is_empty() {
                let _ = tx.blocking_send(batch);
            }
        });
    }

    /// Forget the in-memory inode sequence window of `p` (this node stopped being its primary:
    /// the next one reserved is read from the store again).
    pub fn forget_seq(&self, p: PartitionId) {
        self.inode_seq.remove(&p);
    }

    /// Apply a batch atomically; with `sync` it is durable (WAL fsync'd) when this returns.
    pub async fn write(&self, batch: WriteBatch, sync: bool) -> FsResult<()> {
        self.space.check()?;
        self.write_unguarded(batch, sync).await
    }

    async fn write_unguarded(&self, batch: WriteBatch, sync: bool) -> FsResult<()> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut wo = WriteOptions::default();
            wo.set_sync(sync);
            db.write_opt(batch, &wo).map_err(db_err)
        })
        .await
        .map_err(|e| FsError::Io(format!("write task failed: {e}")))?
    }

    fn write_blocking(&self, batch: WriteBatch, sync: bool) -> FsResult<()> {
        self.space.check()?;
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo).map_err(db_err)
    }

    /// Make every earlier unsynced write durable.
    pub async fn sync(&self) -> FsResult<()> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush_wal(true).map_err(db_err))
            .await
            .map_err(|e| FsError::Io(format!("sync task failed: {e}")))?
    }

    /// Take the next number of a persisted sequence, reserving blocks of SEQ_BLOCK: `load` reads
    /// the stored high-water mark, `persist` makes a new one durable before any number under it
    /// is handed out.
    async fn next_seq(
        &self,
        window: &SeqWindow,
        max: u64,
        load: impl FnOnce() -> FsResult<Option<u64>>,
        persist: impl AsyncFnOnce(u64) -> FsResult<()>,
    ) -> FsResult<u64> {
        let mut g = window.lock().await;
        if g.0 >= g.1 {
            let stored = load()?.unwrap_or(FIRST_SEQ);
            let next = g.0.max(stored).max(FIRST_SEQ);
            let limit = next.saturating_add(SEQ_BLOCK);
            if limit > max {
                return Err(FsError::NoSpace);
            }
            persist(limit).await?;
            *g = (next, limit);
        }
        let seq = g.0;
        g.0 += 1;
        Ok(seq)
    }

    /// A new inode id in `partition`, never handed out before. `persist` writes the partition's
    /// new high-water mark (key, value) durably, on every replica.
    pub async fn alloc_ino(
        &self,
        partition: PartitionId,
        persist: impl AsyncFnOnce(KvOps) -> FsResult<()>,
    ) -> FsResult<InodeId> {
        let window = self
            .inode_seq
            .entry(partition)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new((0, 0))))
            .clone();
        let key = keys::counter(partition);
        let seq = self
            .next_seq(
                &window,
                MAX_SEQ,
                || self.get_u64(&key),
                async |limit| persist(vec![(key.clone(), Some(limit.to_be_bytes().to_vec()))]).await,
            )
            .await?;
        Ok(make_ino(partition, seq))
    }

    /// A new intent sequence number of this node (below 2^40), never handed out before.
    pub async fn alloc_intent_seq(&self) -> FsResult<u64> {
        let window = self.intent_seq.clone();
        self.next_seq(
            &window,
            (1 << 40) - 1,
            || self.node_u64("intent_seq"),
            async |limit| self.put_node_u64s(&[("intent_seq", limit)]).await,
        )
        .await
    }

    /// Approximate number of keys stored.
    pub fn estimate_keys(&self) -> u64 {
        self.db
            .property_int_value("rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Bytes of SST and WAL files, approximately.
    pub fn disk_bytes(&self) -> u64 {
        self.db
            .property_int_value("rocksdb.total-sst-files-size")
            .ok()
            .flatten()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealfs_core::attr::FileKind;

    #[tokio::test]
    async fn ids_are_never_reused_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let s = MetaStore::open(dir.path(), 8).unwrap();
            let a = s.alloc_ino(3, async |ops| s.write_ops(ops, true).await).await.unwrap();
            let b = s.alloc_ino(3, async |ops| s.write_ops(ops, true).await).await.unwrap();
            assert_eq!(ino_partition(a), 3);
            assert!(b > a);
            assert!(s.alloc_intent_seq().await.unwrap() >= FIRST_SEQ);
            b
        };
        let s = MetaStore::open(dir.path(), 8).unwrap();
        let c = s.alloc_ino(3, async |ops| s.write_ops(ops, true).await).await.unwrap();
        assert!(c > first, "a reopened store must not hand out {c:#x} again");
    }

    #[tokio::test]
    async fn listing_pages_by_cookie() {
        let dir = tempfile::tempdir().unwrap();
        let s = MetaStore::open(dir.path(), 8).unwrap();
        let parent = make_ino(1, 5);
        let mut b = WriteBatch::default();
        for i in 0..100u64 {
            let name = format!("f{i}");
            let d = DentryRecord {
                ino: make_ino(1, 100 + i),
                kind: FileKind::Regular,
            };
            b.put(keys::dentry(1, parent, name.as_bytes()), d.encode());
        }
        // An entry of another directory must not show up.
        b.put(
            keys::dentry(1, parent + 1, b"x"),
            DentryRecord {
                ino: 9,
                kind: FileKind::Regular,
            }
            .encode(),
        );
        s.write(b, true).await.unwrap();
        let mut seen = Vec::new();
        let mut cookie = 0;
        loop {
            let (page, eof) = s.list_dir(parent, cookie, 7).unwrap();
            for (name, c, _) in &page {
                assert!(*c > cookie);
                seen.push(name.clone());
            }
            if let Some(last) = page.last() {
                cookie = last.1;
            }
            if eof {
                break;
            }
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 100);
        assert!(!s.dir_is_empty(parent).unwrap());
        assert!(s.dir_is_empty(parent + 2).unwrap());
    }

    #[test]
    fn format_version_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = MetaStore::open(dir.path(), 8).unwrap();
            s.put_node_u64_blocking("format", 99).unwrap();
        }
        let err = MetaStore::open(dir.path(), 8).err().unwrap().to_string();
        assert!(err.contains("format version 99"), "{err}");
    }

    /// From the first start on, synced writes go into a reused WAL file, overwriting it in
    /// place (its size does not change), and again after a restart.
    #[test]
    fn synced_writes_overwrite_a_reused_wal_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        for run in 0..3u64 {
            let (s, reuse) = MetaStore::open_reusing(dir.path(), 8).unwrap();
            assert_ne!(reuse, WalReuse::No, "run {run}: {:?}", wal_files(dir.path()));
            let (_, before) = *wal_files(dir.path()).last().unwrap();
            assert!(before >= WAL_REUSE_BYTES, "run {run}: {:?}", wal_files(dir.path()));
            for j in 0..200u64 {
                s.put_node_u64_blocking(&format!("run-{run}-{j}"), j).unwrap();
            }
            let (_, after) = *wal_files(dir.path()).last().unwrap();
            assert_eq!(after, before, "run {run}: the WAL grew: {:?}", wal_files(dir.path()));
            assert!(s.db.get_cf(s.node_cf(), keys::WAL_FILL).unwrap().is_none());
        }
        let s = MetaStore::open(dir.path(), 8).unwrap();
        for run in 0..3u64 {
            assert_eq!(s.node_u64(&format!("run-{run}-199")).unwrap(), Some(199));
        }
        // Old WALs are kept for reuse, not piled up.
        assert!(wal_files(dir.path()).len() <= 4, "{:?}", wal_files(dir.path()));
    }

    /// The WAL made ready for reuse at start is cached as 4 KiB pages, not large folios: an
    /// append of a synced change into a large folio makes ext4 walk every block of it, in the
    /// write and again in the sync (see `fill_wal`). Read from the kernel's page flags, which
    /// need root; without them, or on a kernel that makes no large folios, this shows nothing.
    #[test]
    fn the_reused_wal_is_cached_in_small_pages() {
        let dir = tempfile::tempdir().unwrap();
        let (_s, reuse) = MetaStore::open_reusing(dir.path(), 8).unwrap();
        assert_eq!(reuse, WalReuse::Filled, "{:?}", wal_files(dir.path()));
        let (number, _) = *wal_files(dir.path()).last().unwrap();
        let path = dir.path().join(format!("{number:06}.log"));
        match cached_pages(&path) {
            Ok((cached, in_folios)) => {
                assert!(cached >= 256, "only {cached} pages of {} cached", path.display());
                assert_eq!(in_folios, 0, "{in_folios} of {cached} cached pages are in large folios");
            }
            Err(e) => eprintln!("page flags not readable ({e}): nothing checked"),
        }
    }

    /// How many pages of `path` are in the page cache, and how many of those belong to a folio
    /// of more than one page (`/proc/kpageflags`: compound head or tail).
    fn cached_pages(path: &Path) -> std::io::Result<(usize, usize)> {
        use std::os::unix::fs::FileExt;
        use std::os::unix::io::AsRawFd;
        const PAGE: usize = 4096;
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len() as usize;
        let pagemap = std::fs::File::open("/proc/self/pagemap")?;
        let flags = std::fs::File::open("/proc/kpageflags")?;
        // SAFETY: a read-only shared mapping of a file this test made and nobody truncates
        // while it is mapped; it is unmapped before returning.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let pages = len.div_ceil(PAGE);
        let mut resident = vec![0u8; pages];
        // SAFETY: `resident` holds one byte per page of the mapping.
        let r = unsafe { libc::mincore(base, len, resident.as_mut_ptr()) };
        let result = (|| {
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let (mut cached, mut in_folios) = (0, 0);
            for (i, _) in resident.iter().enumerate().filter(|(_, r)| **r & 1 != 0) {
                let addr = base as usize + i * PAGE;
                // SAFETY: inside the mapping; the page is cached, so this maps it without I/O.
                unsafe { std::ptr::read_volatile(addr as *const u8) };
                let mut entry = [0u8; 8];
                pagemap.read_exact_at(&mut entry, (addr / PAGE * 8) as u64)?;
                let entry = u64::from_ne_bytes(entry);
                let pfn = entry & ((1 << 55) - 1);
                if entry >> 63 == 0 || pfn == 0 {
                    // Not mapped after all, or the frame number is hidden (not root).
                    return Err(std::io::Error::other("no frame number in /proc/self/pagemap"));
                }
                let mut f = [0u8; 8];
                flags.read_exact_at(&mut f, pfn * 8)?;
                let f = u64::from_ne_bytes(f);
                cached += 1;
                // KPF_COMPOUND_HEAD (15), KPF_COMPOUND_TAIL (16).
                if f & (1 << 15 | 1 << 16) != 0 {
                    in_folios += 1;
                }
            }
            Ok((cached, in_folios))
        })();
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(base, len) };
        result
    }

    /// WAL files are reused: a crash while writing into one that still holds older records
    /// must recover every synced write and none of those records. The writes and the crash
    /// happen in a child process (this test binary again), which kills itself.
    #[test]
    fn crash_in_a_reused_wal_keeps_synced_writes() {
        const CHILD: &str = "SEALFS_TEST_WAL_CRASH_DIR";
        const EXIT_NOT_REUSED: i32 = 3;
        if let Some(dir) = std::env::var_os(CHILD) {
            let dir = Path::new(&dir);
            let s = MetaStore::open(dir, 8).unwrap();
            // Fill and flush three WALs, so the next one is an old file, full of records.
            for round in 0..3u8 {
                for j in 0..32u32 {
                    s.db.put(format!("fill-{j}"), vec![round; 64 << 10]).unwrap();
                }
                s.db.flush_cf(s.node_cf()).unwrap();
                s.db.flush().unwrap();
            }
            for j in 0..500u64 {
                s.put_node_u64_blocking(&format!("after-{j}"), j).unwrap();
            }
            // Far less than 1 MiB was written since the last flush: a bigger file is reused.
            let newest = wal_files(dir).pop().map_or(0, |(_, len)| len);
            if newest < 1 << 20 {
                std::process::exit(EXIT_NOT_REUSED);
            }
            // Killed, as a crash would: nothing is closed or flushed.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
            unreachable!("SIGKILL did not end the process");
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::crash_in_a_reused_wal_keeps_synced_writes",
                "--nocapture",
            ])
            .env(CHILD, dir.path())
            .status()
            .unwrap();
        assert_ne!(
            status.code(),
            Some(EXIT_NOT_REUSED),
            "no WAL file was reused: {:?}",
            wal_files(dir.path())
        );
        assert!(!status.success(), "the child must crash, not exit: {status}");
        let s = MetaStore::open(dir.path(), 8).unwrap();
        for j in 0..500u64 {
            assert_eq!(
                s.node_u64(&format!("after-{j}")).unwrap(),
                Some(j),
                "synced write {j} lost"
            );
        }
        assert_eq!(s.db.get("fill-0").unwrap().unwrap()[0], 2, "an older record came back");
    }
}
