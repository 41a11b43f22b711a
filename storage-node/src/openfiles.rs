//! Chunk files kept open (for reading and for writes, which go through them too), and reads
//! that refuse to wait for the disk. Together they let a read whose bytes are in the page cache
//! be served on the runtime's own thread: no open, no path walk, no hand-off to the blocking
//! pool and back (two thread wake-ups, the larger part of a 4 KiB read's cost). Anything else
//! takes the blocking path, which opens and waits.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::direct::{pread_fresh, Short};

use sealfs_core::{InodeId, PartitionId};

/// A chunk and its checksum file, both open for reading and writing.
#[derive(Debug)]
pub struct OpenChunk {
    pub data: File,
    pub sums: File,
}

/// Which chunk: (partition, inode, chunk index).
pub type ChunkKey = (PartitionId, InodeId, u64);

/// A bounded table of open chunks. Chunk files are only ever written in place (never replaced
/// by a rename), so an open file stays the chunk until it is removed; every removal is followed
/// by [`OpenChunks::forget`] or [`OpenChunks::forget_partition`].
#[derive(Debug)]
pub struct OpenChunks {
    map: Mutex<HashMap<ChunkKey, Arc<OpenChunk>>>,
    /// Moved by every removal. A reader that opened files before one keeps them out of the
    /// table (they may be the removed ones), so a removed chunk is never read through it.
    removals: AtomicU64,
    cap: usize,
}

impl OpenChunks {
    /// A table of at most `cap` chunks (two descriptors each).
    pub fn new(cap: usize) -> OpenChunks {
        OpenChunks {
            map: Mutex::new(HashMap::new()),
            removals: AtomicU64::new(0),
            cap: cap.max(1),
        }
    }

    /// The open files of a chunk, if the table has them.
    pub fn get(&self, key: ChunkKey) -> Option<Arc<OpenChunk>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned()
    }

    /// The removal count to pass to [`OpenChunks::put`]: read it before opening.
    pub fn removals(&self) -> u64 {
        self.removals.load(Ordering::SeqCst)
    }

    /// Keep files opened after `seen` was read, unless a removal happened since.
    pub fn put(&self, key: ChunkKey, open: Arc<OpenChunk>, seen: u64) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the table's lock: a removal bumps the count before it takes the lock.
        if self.removals.load(Ordering::SeqCst) != seen {
            return;
        }
        if map.len() >= self.cap && !map.contains_key(&key) {
            // Any one goes: a table this size is about descriptors, not hit rates.
            if let Some(k) = map.keys().next().copied() {
                map.remove(&k);
            }
        }
        map.insert(key, open);
    }

    /// A chunk's files were removed. Called after the removal, so that a reader which opened
    /// them just before it cannot put them back.
    pub fn forget(&self, key: ChunkKey) {
        self.removals.fetch_add(1, Ordering::SeqCst);
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    }

    /// Every chunk of partition `p` was removed (called after the removal, as `forget`).
    pub fn forget_partition(&self, p: PartitionId) {
        self.removals.fetch_add(1, Ordering::SeqCst);
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| k.0 != p);
    }

    /// How many chunks are open.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no chunk is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `len` bytes of `f` at `off` from the page cache only. `None` when that would mean waiting
/// for the disk (or the kernel cannot tell, or the file ends first): the caller then takes the
/// path that waits.
pub fn read_cached(f: &File, off: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
    let (buf, short) = pread_fresh(f, off, len, libc::RWF_NOWAIT)?;
    Ok((short == Short::No).then_some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn open_pair(dir: &std::path::Path, name: &str) -> Arc<OpenChunk> {
        let p = dir.join(name);
        std::fs::write(&p, b"data").unwrap();
        std::fs::write(dir.join(format!("{name}.sum")), b"sums").unwrap();
        Arc::new(OpenChunk {
            data: File::open(&p).unwrap(),
            sums: File::open(dir.join(format!("{name}.sum"))).unwrap(),
        })
    }

    #[test]
    fn a_removal_keeps_files_opened_before_it_out() {
        let dir = tempfile::tempdir().unwrap();
        let t = OpenChunks::new(8);
        let seen = t.removals();
        let o = open_pair(dir.path(), "a");
        t.forget((1, 2, 0));
        t.put((1, 2, 0), o.clone(), seen);
        assert!(t.get((1, 2, 0)).is_none(), "opened before a removal: not kept");
        let seen = t.removals();
        t.put((1, 2, 0), o, seen);
        assert!(t.get((1, 2, 0)).is_some());
        t.forget((1, 2, 0));
        assert!(t.get((1, 2, 0)).is_none());
    }

    #[test]
    fn forget_partition_drops_only_that_partition_and_the_table_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let t = OpenChunks::new(3);
        for (i, k) in [(1, 1, 0), (1, 2, 0), (2, 1, 0)].into_iter().enumerate() {
            t.put(k, open_pair(dir.path(), &format!("f{i}")), t.removals());
        }
        t.forget_partition(1);
        assert!(t.get((1, 1, 0)).is_none() && t.get((1, 2, 0)).is_none());
        assert!(t.get((2, 1, 0)).is_some());
        for i in 0..10u64 {
            t.put((3, i, 0), open_pair(dir.path(), &format!("g{i}")), t.removals());
        }
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn cached_reads_return_the_bytes_or_decline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        let mut f = File::create(&p).unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        f.sync_all().unwrap();
        let r = File::open(&p).unwrap();
        // Just written: in the page cache, unless the kernel cannot say (then it declines).
        if let Some(buf) = read_cached(&r, 4096, 4096).unwrap() {
            assert_eq!(buf, vec![7u8; 4096]);
        }
        // Past the end: declined, never a short fill passed off as whole.
        assert_eq!(read_cached(&r, 6144, 4096).unwrap(), None);
    }
}
