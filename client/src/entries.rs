//! Names a frontend looked up or made, with the inode each one names, so that a LOOKUP of a name
//! already seen costs no round trip. The NFS gateway needs it: a client that dropped its dentries
//! (memory pressure, `drop_caches`, a remount) or a second client of the same gateway looks every
//! name up again, and a `stat`, `open` or `unlink` of a path starts with that LOOKUP.
//!
//! Kept right the way the attribute cache is, one name at a time: an own change of a name
//! replaces or drops it when it ends, another process's change drops it when its change stream
//! says so (the streams name every entry a node changes), and nothing is served unless every
//! node's stream is live. Replies are ordered against changes by the attribute cache's tickets,
//! with a change counter per slot of names (a shared slot only costs a miss).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use sealfs_core::hash::hash_u64_bytes;
use sealfs_core::name::validate_name;
use sealfs_core::InodeId;

use crate::{AttrCache, Ticket};

/// Slots of change counters for names.
const SLOTS: usize = 16384;
/// Names kept at most; past that the cache starts over.
const CAPACITY: usize = 100_000;

struct Named {
    dir: InodeId,
    name: Box<[u8]>,
    ino: InodeId,
    ticket: u64,
    at: Instant,
}

/// Directory entries this frontend saw, valid while nothing changed them.
pub struct EntryCache {
    attrs: Arc<AttrCache>,
    /// Per slot: the ticket sequence value of the last change that ended for a name of it.
    changed: Box<[AtomicU64]>,
    /// By the hash of (directory, name); the two are kept to tell hash collisions apart.
    entries: DashMap<u64, Named>,
}

impl std::fmt::Debug for EntryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryCache")
            .field("entries", &self.entries.len())
            .finish()
    }
}

fn key(dir: InodeId, name: &[u8]) -> u64 {
    hash_u64_bytes(dir, name)
}

fn slot(key: u64) -> usize {
    (key % SLOTS as u64) as usize
}

impl EntryCache {
    /// An empty cache that takes its tickets, its TTL and its clears from `attrs`.
    pub fn new(attrs: Arc<AttrCache>) -> Arc<EntryCache> {
        Arc::new(EntryCache {
            attrs,
            changed: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            entries: DashMap::new(),
        })
    }

    fn valid(&self, key: u64, ticket: u64) -> bool {
        ticket >= self.changed[slot(key)].load(Ordering::SeqCst) && ticket >= self.attrs.cleared_at()
    }

    /// The inode `name` in `dir` names, if that is known to be current.
    pub fn get(&self, dir: InodeId, name: &[u8]) -> Option<InodeId> {
        let max_age = self.attrs.ttl().watched_ttl()?;
        let k = key(dir, name);
        let e = self.entries.get(&k)?;
        (e.dir == dir && *e.name == *name && e.at.elapsed() < max_age && self.valid(k, e.ticket)).then_some(e.ino)
    }

    /// Remember that a lookup sent at `t` found `name` in `dir` naming `ino`.
    pub fn offer(&self, t: Ticket, dir: InodeId, name: &[u8], ino: InodeId) {
        let k = key(dir, name);
        if self.valid(k, t.0) {
            self.put(k, dir, name, ino, t.0);
        }
    }

    fn put(&self, k: u64, dir: InodeId, name: &[u8], ino: InodeId, ticket: u64) {
        // "." and "..", and names no node would take, are never kept.
        if validate_name(name).is_err() {
            return;
        }
        if self.entries.len() >= CAPACITY {
            self.entries.clear();
        }
        let new = Named {
            dir,
            name: name.into(),
            ino,
            ticket,
            at: Instant::now(),
        };
        match self.entries.entry(k) {
            // A reply read earlier than the one kept (for this name) must not replace it.
            Entry::Occupied(e) if e.get().dir == dir && *e.get().name == *name && ticket < e.get().ticket => {}
            Entry::Occupied(mut e) => {
                e.insert(new);
            }
            Entry::Vacant(e) => {
                e.insert(new);
            }
        }
    }

    /// This frontend changed `name` in `dir` with a request sent at `t` (whether or not it
    /// succeeded): it names `after` now (None: nothing, or not known), kept only if no other
    /// change of the name ended meanwhile.
    pub fn changed(&self, t: Ticket, dir: InodeId, name: &[u8], after: Option<InodeId>) {
        let k = key(dir, name);
        if let (Some(v), Some(ino)) = (self.attrs.end_change(&self.changed[slot(k)], t), after) {
            self.put(k, dir, name, ino, v);
        }
    }

    /// Another process changed `name` in `dir` (its change stream said so).
    pub fn invalidate(&self, dir: InodeId, name: &[u8]) {
        let v = self.attrs.bump();
        self.changed[slot(key(dir, name))].fetch_max(v, Ordering::SeqCst);
    }

    /// Forget every name (the attribute cache's `clear` already stopped serving them).
    pub fn clear(&self) {
        self.entries.clear();
    }

    /// Names held (for tests).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no name is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CacheTtl;
    use std::time::Duration;

    fn caches() -> (Arc<AttrCache>, Arc<EntryCache>) {
        let ttl = CacheTtl::new(Duration::from_secs(1), Duration::from_secs(60));
        ttl.set_watched(true);
        let attrs = AttrCache::new(ttl);
        (attrs.clone(), EntryCache::new(attrs))
    }

    #[test]
    fn a_looked_up_name_is_served_until_it_changes() {
        let (a, e) = caches();
        let t = a.ticket();
        e.offer(t, 1, b"x", 10);
        e.offer(a.ticket(), 1, b"y", 11);
        assert_eq!(e.get(1, b"x"), Some(10));
        assert_eq!(e.get(2, b"x"), None, "another directory");
        // Another process changes x: y stays, x goes, and a lookup that raced it is not kept.
        e.invalidate(1, b"x");
        assert_eq!(e.get(1, b"x"), None);
        assert_eq!(e.get(1, b"y"), Some(11), "a change of another name keeps this one");
        e.offer(t, 1, b"x", 10);
        assert_eq!(e.get(1, b"x"), None);
        e.offer(a.ticket(), 1, b"x", 12);
        assert_eq!(e.get(1, b"x"), Some(12));
    }

    #[test]
    fn own_changes_keep_their_result_unless_another_raced_them() {
        let (a, e) = caches();
        e.changed(a.ticket(), 1, b"f", Some(20));
        assert_eq!(e.get(1, b"f"), Some(20));
        // A lookup in flight across the unlink is not kept.
        let read = a.ticket();
        e.changed(a.ticket(), 1, b"f", None);
        assert_eq!(e.get(1, b"f"), None);
        e.offer(read, 1, b"f", 20);
        assert_eq!(e.get(1, b"f"), None);
        // Two changes in flight at once: neither result is trusted.
        let (ta, tb) = (a.ticket(), a.ticket());
        e.changed(tb, 1, b"f", Some(21));
        e.changed(ta, 1, b"f", Some(22));
        assert_eq!(e.get(1, b"f"), None);
    }

    #[test]
    fn nothing_is_served_without_live_streams_after_a_clear_or_for_dot_names() {
        let (a, e) = caches();
        e.offer(a.ticket(), 1, b"n", 5);
        e.offer(a.ticket(), 1, b"..", 0);
        e.offer(a.ticket(), 1, b".", 1);
        assert_eq!(e.len(), 1);
        a.ttl().set_watched(false);
        assert_eq!(e.get(1, b"n"), None);
        a.ttl().set_watched(true);
        assert_eq!(e.get(1, b"n"), Some(5));
        let before = a.ticket();
        a.clear();
        assert_eq!(e.get(1, b"n"), None, "the attribute cache's clear covers names");
        e.offer(before, 1, b"n", 5);
        assert_eq!(e.get(1, b"n"), None);
        e.clear();
        assert!(e.is_empty());
    }
}
