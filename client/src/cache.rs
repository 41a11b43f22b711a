//! A frontend's cache of inode attributes, so that a getattr (the FUSE kernel sends one after
//! every write to a file; NFS clients revalidate with one at every open) is answered without a
//! round trip. Kept right the way the kernel's cache is: the frontend's own changes replace or
//! drop an entry when they finish, other processes' changes drop it when their change stream says
//! so (`watch`), and nothing is served unless every node's stream is live. An entry lives no
//! longer than the long TTL (`CacheTtl`).
//!
//! It also remembers which files have no `security.capability` attribute: the FUSE kernel asks
//! for it before every write to a file (to drop file capabilities), which would otherwise make
//! each write wait on a round trip. An attribute change moves the inode's ctime, so the same
//! change counts keep that right.
//!
//! Ordering: every reply is stored with a ticket taken before its request was sent, and every
//! change bumps a counter for its inode's slot when it ends. An entry is served only if its
//! ticket is not older than the last change of its slot (nor the last `clear`), so a reply read
//! before a change finished can never hide it, however the two race.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use sealfs_core::attr::FileAttr;
use sealfs_core::{FsError, FsResult, InodeId};

use crate::Changed;

/// How long what a frontend caches may be kept: `short` while some change stream is missing,
/// `long` while every node that is up has a live one.
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

    /// Whether change streams are worth keeping: the long TTL is longer than the short one.
    pub fn streams_useful(&self) -> bool {
        self.long > self.short
    }
}

/// Slots of change counters; inodes share them by hash (a shared slot only costs a miss).
const SLOTS: usize = 16384;
/// Entries kept at most; past that the cache starts over (the kernel forgets inodes too).
const CAPACITY: usize = 100_000;

/// Taken before a request is sent; orders its reply against changes that end meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(pub(crate) u64);

struct Cached {
    attr: FileAttr,
    ticket: u64,
    at: Instant,
}

/// Inode attributes this mount saw, valid while nothing changed them.
pub struct AttrCache {
    ttl: Arc<CacheTtl>,
    /// Bumped by every change and every `clear`.
    seq: AtomicU64,
    /// Per slot: the `seq` of the last change that ended for an inode of that slot.
    changed: Box<[AtomicU64]>,
    /// The `seq` of the last `clear`.
    cleared: AtomicU64,
    entries: DashMap<InodeId, Cached>,
    /// Inodes without a `security.capability` attribute: the ticket of the read that said so.
    no_caps: DashMap<InodeId, u64>,
}

fn slot(ino: InodeId) -> usize {
    // Fibonacci hashing: inode ids are spread already, but not necessarily in the low bits.
    (ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 50) as usize % SLOTS
}

impl AttrCache {
    /// An empty cache, serving entries while `ttl` says every change stream is live.
    pub fn new(ttl: Arc<CacheTtl>) -> Arc<AttrCache> {
        Arc::new(AttrCache {
            ttl,
            seq: AtomicU64::new(1),
            changed: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            cleared: AtomicU64::new(0),
            entries: DashMap::new(),
            no_caps: DashMap::new(),
        })
    }

    /// Take before sending a request whose reply may be stored.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.seq.load(Ordering::SeqCst))
    }

    fn valid(&self, ino: InodeId, ticket: u64) -> bool {
        ticket >= self.changed[slot(ino)].load(Ordering::SeqCst) && ticket >= self.cleared.load(Ordering::SeqCst)
    }

    /// The attributes of `ino`, if they are known to be current, and for how much longer they
    /// may be kept: the TTL for the reply that hands them on, so that the kernel's copy expires
    /// when this one would (a full TTL given to an entry about to expire would let the kernel
    /// serve it for up to twice as long as what was read).
    pub fn get(&self, ino: InodeId) -> Option<(FileAttr, Duration)> {
        let max_age = self.ttl.watched_ttl()?;
        let e = self.entries.get(&ino)?;
        let left = max_age.checked_sub(e.at.elapsed()).filter(|d| !d.is_zero())?;
        self.valid(ino, e.ticket).then(|| (e.attr.clone(), left))
    }

    /// Whether `ino` is known to have no `security.capability` attribute.
    pub fn caps_absent(&self, ino: InodeId) -> bool {
        self.ttl.watched_ttl().is_some() && self.no_caps.get(&ino).is_some_and(|t| self.valid(ino, *t))
    }

    /// A getxattr of `security.capability` sent at `t` found none.
    pub fn offer_no_caps(&self, t: Ticket, ino: InodeId) {
        if self.valid(ino, t.0) {
            if self.no_caps.len() >= CAPACITY {
                self.no_caps.clear();
            }
            self.no_caps.insert(ino, t.0);
        }
    }

    /// Whether no change of `ino` ended (and nothing was cleared) since `t` was taken.
    pub fn unchanged_since(&self, t: Ticket, ino: InodeId) -> bool {
        self.valid(ino, t.0)
    }

    /// Remember what a read (lookup, getattr, open) returned for a request sent at `t`.
    pub fn offer(&self, t: Ticket, attr: &FileAttr) {
        if !self.valid(attr.ino, t.0) {
            return;
        }
        self.put(attr, t.0);
    }

    fn put(&self, attr: &FileAttr, ticket: u64) {
        if self.entries.len() >= CAPACITY {
            self.entries.clear();
        }
        let new = Cached {
            attr: attr.clone(),
            ticket,
            at: Instant::now(),
        };
        match self.entries.entry(attr.ino) {
            // A reply read earlier than the one kept must not replace it.
            Entry::Occupied(mut e) if ticket >= e.get().ticket => {
                e.insert(new);
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(e) => {
                e.insert(new);
            }
        }
    }

    /// The TTLs this cache serves under.
    pub(crate) fn ttl(&self) -> &Arc<CacheTtl> {
        &self.ttl
    }

    /// The `seq` of the last `clear`: nothing read before it is served.
    pub(crate) fn cleared_at(&self) -> u64 {
        self.cleared.load(Ordering::SeqCst)
    }

    /// A new value of `seq`, later than every ticket taken so far.
    pub(crate) fn bump(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// This mount changed `ino` with a request sent at `t` (whether or not it succeeded):
    /// `after` is what it returned, kept only if no other change of the inode ended meanwhile.
    pub fn changed(&self, t: Ticket, ino: InodeId, after: Option<&FileAttr>) {
        self.end_own_change(t, ino, after, false);
    }

    /// The same, for a change that cannot give `ino` a `security.capability` attribute (a
    /// write, a change of its size, mode, owner or times): if the file was known to have none
    /// before it, it still has none after, and the kernel's next ask before a write (it asks
    /// again once the attributes changed) is answered without a round trip.
    pub fn changed_keeping_caps(&self, t: Ticket, ino: InodeId, after: Option<&FileAttr>) {
        // Read before the change's end moves the slot's counter past the entry's ticket.
        let absent = self.caps_absent(ino);
        self.end_own_change(t, ino, after, absent);
    }

    /// This mount made `ino` with a request sent at `t` (a create that cannot have found an
    /// existing file, a mkdir, a symlink): `after` is what it returned, and a new inode has no
    /// `security.capability` attribute.
    pub fn made(&self, t: Ticket, after: &FileAttr) {
        self.end_own_change(t, after.ino, Some(after), true);
    }

    fn end_own_change(&self, t: Ticket, ino: InodeId, after: Option<&FileAttr>, caps_absent: bool) {
        let Some(after) = after else {
            return self.invalidate(ino);
        };
        let Some(v) = self.end_change(&self.changed[slot(ino)], t) else {
            return;
        };
        if after.ino == ino {
            self.put(after, v);
        }
        // No other change of the inode ended since `t`; after a clear since then (a stream
        // broke) one may have been missed, and what was known before is not carried over.
        if caps_absent && self.cleared.load(Ordering::SeqCst) <= t.0 {
            if self.no_caps.len() >= CAPACITY {
                self.no_caps.clear();
            }
            self.no_caps.insert(ino, v);
        }
    }

    /// A change sent at `t` ended for what `counter` counts changes of: the counter moves to a
    /// new value, returned if no other change ended meanwhile (the change's result may then be
    /// kept under it; if another did, which is newer is unknown).
    pub(crate) fn end_change(&self, counter: &AtomicU64, t: Ticket) -> Option<u64> {
        let v = self.bump();
        let mut last = counter.load(Ordering::SeqCst);
        loop {
            if last > t.0 {
                counter.fetch_max(v, Ordering::SeqCst);
                return None;
            }
            match counter.compare_exchange(last, v, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Some(v),
                Err(now) => last = now,
            }
        }
    }

    /// A change of names in `dir` and `new_dir` (the same one but for a rename between two),
    /// sent at `t`, ended with `r`: the directories are as the node left them, and every inode it
    /// says it touched changed. When that is not known, nothing cached is trusted.
    pub fn names_changed(&self, t: Ticket, dir: InodeId, new_dir: InodeId, r: &FsResult<Changed>) {
        let c = r.as_ref().ok();
        self.changed(t, dir, c.and_then(|c| c.dir.as_ref()).map(|d| &d.after));
        if new_dir != dir {
            self.changed(t, new_dir, c.and_then(|c| c.new_dir.as_ref()).map(|d| &d.after));
        }
        match r {
            Ok(c) if !c.touched.is_empty() => c.touched.iter().for_each(|i| self.changed(t, *i, None)),
            // Nothing changed.
            Err(FsError::NotFound | FsError::Exists | FsError::NotEmpty | FsError::Access | FsError::Perm) => {}
            _ => self.clear(),
        }
    }

    /// `ino` changed and what it is now is not known (another process changed it, as its change
    /// stream said, or a change of this mount returned nothing).
    pub fn invalidate(&self, ino: InodeId) {
        let v = self.bump();
        self.changed[slot(ino)].fetch_max(v, Ordering::SeqCst);
    }

    /// Forget everything: changes may have been missed, or which inodes a change touched is
    /// not known.
    pub fn clear(&self) {
        let v = self.bump();
        self.cleared.fetch_max(v, Ordering::SeqCst);
        self.entries.clear();
        self.no_caps.clear();
    }

    /// The kernel forgot `ino`: so does the cache.
    pub fn forget(&self, ino: InodeId) {
        self.entries.remove(&ino);
        self.no_caps.remove(&ino);
    }

    /// Entries held (for tests).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealfs_core::attr::{FileKind, TimeSpec};

    fn attr(ino: InodeId, size: u64) -> FileAttr {
        let t = TimeSpec::default();
        FileAttr {
            ino,
            kind: FileKind::Regular,
            perm: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            size,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            rdev: 0,
            generation: 1,
        }
    }

    fn cache() -> Arc<AttrCache> {
        let ttl = CacheTtl::new(Duration::from_secs(1), Duration::from_secs(60));
        ttl.set_watched(true);
        AttrCache::new(ttl)
    }

    #[test]
    fn an_entry_is_handed_on_for_what_is_left_of_its_ttl() {
        // Sleeping longer than asked only makes both checks stricter truths: no timing race.
        let c = cache();
        c.offer(c.ticket(), &attr(5, 1));
        std::thread::sleep(Duration::from_millis(20));
        let (_, left) = c.get(5).expect("fresh within a 60 s TTL");
        let most = Duration::from_secs(60) - Duration::from_millis(20);
        assert!(left <= most, "{left:?} left of a 60 s TTL after 20 ms");
        let ttl = CacheTtl::new(Duration::from_millis(10), Duration::from_millis(50));
        ttl.set_watched(true);
        let short = AttrCache::new(ttl);
        short.offer(short.ticket(), &attr(5, 1));
        std::thread::sleep(Duration::from_millis(100));
        assert!(short.get(5).is_none(), "served past its TTL");
    }

    #[test]
    fn a_read_is_served_until_a_change_ends() {
        let c = cache();
        let t = c.ticket();
        c.offer(t, &attr(7, 1));
        assert_eq!(c.get(7).map(|(a, _)| a.size), Some(1));
        c.invalidate(7);
        assert!(c.get(7).is_none());
        // A read sent before the change ended must not be stored after it.
        c.offer(t, &attr(7, 1));
        assert!(c.get(7).is_none());
        let t2 = c.ticket();
        c.offer(t2, &attr(7, 2));
        assert_eq!(c.get(7).map(|(a, _)| a.size), Some(2));
    }

    #[test]
    fn an_own_change_keeps_its_result_unless_another_raced_it() {
        let c = cache();
        let t = c.ticket();
        c.changed(t, 9, Some(&attr(9, 10)));
        assert_eq!(c.get(9).map(|(a, _)| a.size), Some(10));
        // Two changes in flight at once: neither result can be trusted to be the last.
        let ta = c.ticket();
        let tb = c.ticket();
        c.changed(tb, 9, Some(&attr(9, 20)));
        c.changed(ta, 9, Some(&attr(9, 15)));
        assert!(c.get(9).is_none());
        // A change with no result drops the entry.
        let t = c.ticket();
        c.offer(t, &attr(9, 30));
        assert!(c.get(9).is_some());
        c.changed(c.ticket(), 9, None);
        assert!(c.get(9).is_none());
    }

    #[test]
    fn a_read_in_flight_across_an_own_change_is_not_kept() {
        let c = cache();
        let read = c.ticket();
        c.changed(c.ticket(), 3, Some(&attr(3, 5)));
        c.offer(read, &attr(3, 0));
        assert_eq!(c.get(3).map(|(a, _)| a.size), Some(5));
    }

    #[test]
    fn nothing_is_served_without_live_streams_or_after_a_clear() {
        let c = cache();
        c.offer(c.ticket(), &attr(4, 1));
        c.ttl.set_watched(false);
        assert!(c.get(4).is_none());
        c.ttl.set_watched(true);
        assert!(c.get(4).is_some());
        let before = c.ticket();
        c.clear();
        assert!(c.get(4).is_none() && c.is_empty());
        c.offer(before, &attr(4, 1));
        assert!(c.get(4).is_none());
        c.offer(c.ticket(), &attr(4, 1));
        assert_eq!(c.len(), 1);
        c.forget(4);
        assert!(c.get(4).is_none());
    }

    #[test]
    fn an_own_change_that_cannot_add_capabilities_keeps_their_absence() {
        let c = cache();
        let t = c.ticket();
        c.offer_no_caps(t, 8);
        let t = c.ticket();
        c.changed_keeping_caps(t, 8, Some(&attr(8, 100)));
        assert!(c.caps_absent(8), "a write or setattr of its own keeps it");
        assert_eq!(c.get(8).unwrap().0.size, 100);
        // Not known before: not known after.
        c.changed_keeping_caps(c.ticket(), 9, Some(&attr(9, 1)));
        assert!(!c.caps_absent(9));
        // Another change ended while this one was on its way: nothing is carried over.
        let t = c.ticket();
        c.invalidate(8);
        c.offer_no_caps(c.ticket(), 8);
        c.changed_keeping_caps(t, 8, Some(&attr(8, 5)));
        assert!(!c.caps_absent(8));
        // Nor across a clear (changes may have been missed).
        c.offer_no_caps(c.ticket(), 8);
        let t = c.ticket();
        c.clear();
        c.offer_no_caps(c.ticket(), 8);
        c.changed_keeping_caps(t, 8, Some(&attr(8, 5)));
        assert!(!c.caps_absent(8));
        // A change whose result is unknown drops it, as any change does.
        c.offer_no_caps(c.ticket(), 8);
        c.changed_keeping_caps(c.ticket(), 8, None);
        assert!(!c.caps_absent(8));
    }

    #[test]
    fn a_new_inode_has_no_capabilities() {
        let c = cache();
        c.made(c.ticket(), &attr(12, 0));
        assert!(c.caps_absent(12));
        assert!(c.get(12).is_some());
        // Raced by another change (a stream event for it came first): neither is kept.
        let t = c.ticket();
        c.invalidate(13);
        c.made(t, &attr(13, 0));
        assert!(!c.caps_absent(13));
        assert!(c.get(13).is_none());
        c.changed(c.ticket(), 12, Some(&attr(12, 7)));
        assert!(!c.caps_absent(12), "a plain change still drops it");
    }

    #[test]
    fn a_missing_capability_attribute_is_known_until_the_file_changes() {
        let c = cache();
        let t = c.ticket();
        c.offer_no_caps(t, 8);
        assert!(c.caps_absent(8));
        c.changed(c.ticket(), 8, None);
        assert!(!c.caps_absent(8));
        // A read that raced the change is not kept.
        c.offer_no_caps(t, 8);
        assert!(!c.caps_absent(8));
        c.offer_no_caps(c.ticket(), 8);
        c.ttl.set_watched(false);
        assert!(!c.caps_absent(8));
        c.ttl.set_watched(true);
        assert!(c.caps_absent(8));
        c.invalidate(8);
        assert!(!c.caps_absent(8));
    }
}
