//! Striped async locks keyed by inode id. Every operation locks the inodes it reads and writes,
//! always all at once and in stripe order, so operations never deadlock each other on one node.

use std::time::Duration;

use sealfs_core::{FsError, FsResult, InodeId};
use tokio::sync::{Mutex, MutexGuard};

const STRIPES: usize = 4096;

/// The lock table.
pub struct Locks {
    stripes: Vec<Mutex<()>>,
}

/// Held locks; released on drop.
pub struct Held<'a> {
    _guards: Vec<MutexGuard<'a, ()>>,
}

impl Default for Locks {
    fn default() -> Self {
        Locks {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

fn stripe(ino: InodeId) -> usize {
    (sealfs_core::hash::hash_u64_pair(ino, 0) % STRIPES as u64) as usize
}

impl Locks {
    /// Lock every inode in `inos` (duplicates and zeros are ignored).
    pub async fn lock(&self, inos: &[InodeId]) -> Held<'_> {
        let mut idx: Vec<usize> = inos.iter().filter(|i| **i != 0).map(|i| stripe(*i)).collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            guards.push(self.stripes[i].lock().await);
        }
        Held { _guards: guards }
    }

    /// Lock with a deadline: steps applied for another node's intent use this, so two
    /// coordinators waiting on each other's locks turn into a retry instead of a deadlock.
    pub async fn lock_timeout(&self, inos: &[InodeId], d: Duration) -> FsResult<Held<'_>> {
        tokio::time::timeout(d, self.lock(inos))
            .await
            .map_err(|_| FsError::Unavailable("inode busy (lock wait timed out)".into()))
    }
}
