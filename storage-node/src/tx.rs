//! A transaction over the metadata store: reads see the transaction's own writes, and
//! `Node::commit` applies them all as one atomic RocksDB batch here and on every other replica.
//! Callers hold the stripe locks of what they touch.

use std::collections::BTreeMap;

use sealfs_core::ids::ino_partition;
use sealfs_core::{FsError, FsResult, InodeId};

use crate::keys;
use crate::records::{DentryRecord, InodeRecord};
use crate::store::{KvOps, MetaStore};

/// Pending writes over a store.
pub struct Tx<'a> {
    store: &'a MetaStore,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Tx<'a> {
    /// Start a transaction.
    pub fn new(store: &'a MetaStore) -> Tx<'a> {
        Tx {
            store,
            writes: BTreeMap::new(),
        }
    }

    /// The store underneath.
    pub fn store(&self) -> &'a MetaStore {
        self.store
    }

    /// Read a key, seeing this transaction's writes.
    pub fn get(&self, key: &[u8]) -> FsResult<Option<Vec<u8>>> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.store.get(key),
        }
    }

    /// Write a key.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    /// Delete a key.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// An inode, if it exists.
    pub fn get_inode(&self, ino: InodeId) -> FsResult<Option<InodeRecord>> {
        match self.get(&keys::inode(ino_partition(ino), ino))? {
            Some(v) => Ok(Some(InodeRecord::decode(ino, &v)?)),
            None => Ok(None),
        }
    }

    /// An inode; ENOENT if missing.
    pub fn inode(&self, ino: InodeId) -> FsResult<InodeRecord> {
        self.get_inode(ino)?.ok_or(FsError::NotFound)
    }

    /// A directory inode; ENOENT if missing, ENOTDIR if it is not a directory.
    pub fn dir(&self, ino: InodeId) -> FsResult<InodeRecord> {
        let d = self.inode(ino)?;
        if d.attr.kind != sealfs_core::FileKind::Directory {
            return Err(FsError::NotDir);
        }
        Ok(d)
    }

    /// Store an inode record.
    pub fn put_inode(&mut self, rec: &InodeRecord) {
        self.put(keys::inode(ino_partition(rec.attr.ino), rec.attr.ino), rec.encode());
    }

    /// Remove an inode record and its xattrs.
    pub fn del_inode(&mut self, ino: InodeId) -> FsResult<()> {
        let part = ino_partition(ino);
        self.delete(keys::inode(part, ino));
        let p = keys::xattr_prefix(part, ino);
        for (k, _) in self.store.scan_prefix(&p)? {
            self.delete(k);
        }
        let mine: Vec<Vec<u8>> = self
            .writes
            .range(p.clone()..)
            .take_while(|(k, _)| k.starts_with(&p))
            .map(|(k, _)| k.clone())
            .collect();
        for k in mine {
            self.delete(k);
        }
        Ok(())
    }

    /// A directory entry, if present.
    pub fn get_dentry(&self, parent: InodeId, name: &[u8]) -> FsResult<Option<DentryRecord>> {
        match self.get(&keys::dentry(ino_partition(parent), parent, name))? {
            Some(v) => Ok(Some(DentryRecord::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Store a directory entry.
    pub fn put_dentry(&mut self, parent: InodeId, name: &[u8], d: DentryRecord) {
        self.put(keys::dentry(ino_partition(parent), parent, name), d.encode().to_vec());
    }

    /// Remove a directory entry.
    pub fn del_dentry(&mut self, parent: InodeId, name: &[u8]) {
        self.delete(keys::dentry(ino_partition(parent), parent, name));
    }

    /// Whether a directory has no entries, counting this transaction's writes.
    pub fn dir_is_empty(&self, ino: InodeId) -> FsResult<bool> {
        let p = keys::dentry_prefix(ino_partition(ino), ino);
        let mut pending_puts = false;
        let mut pending_dels = 0usize;
        for (_, v) in self.writes.range(p.clone()..).take_while(|(k, _)| k.starts_with(&p)) {
            if v.is_some() {
                pending_puts = true;
            } else {
                pending_dels += 1;
            }
        }
        if pending_puts {
            return Ok(false);
        }
        if pending_dels == 0 {
            return self.store.dir_is_empty(ino);
        }
        // Some stored entries are deleted here: count what remains.
        for (k, _) in self.store.scan_prefix(&p)? {
            if !matches!(self.writes.get(&k), Some(None)) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether this transaction writes a chunk removal record (the clean-up worker has work).
    pub fn records_removal(&self) -> bool {
        self.writes
            .iter()
            .any(|(k, v)| v.is_some() && keys::parse_gc(k).is_some())
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// The writes, for `Node::commit` (which applies them here and on the other replicas).
    pub fn into_ops(self) -> KvOps {
        self.writes.into_iter().collect()
    }
}
