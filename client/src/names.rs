//! Directories whose names a frontend (a FUSE mount, an NFS gateway) knows all of: the ones it
//! made itself. A client looks a name up before it creates it, so every create would cost a
//! round trip to learn that the name is free; in a directory the frontend made, a name it never
//! made (and no other process made, as the change streams tell) is free without asking.
//!
//! A name in a known directory's set means only "it may exist: ask the node". Every name an own
//! change touches goes in, every name another process changes goes in, and a name leaves only
//! when an own unlink, rmdir or rename of it succeeded, which only a frontend whose changes of
//! one directory never overlap may say (the FUSE mount: the kernel locks the directory; the
//! gateway serves many clients at once and never takes names out). Nothing is answered unless
//! every node's change stream is live, and a break forgets every directory, as the attribute
//! cache does.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use sealfs_core::name::validate_name;
use sealfs_core::perm::{self, Credentials};
use sealfs_core::InodeId;

use crate::{AttrCache, CacheTtl, Ticket};

/// Names kept over all known directories; past it, a directory that grows is forgotten.
const MAX_NAMES: usize = 131_072;

/// Directories kept; past it, all are forgotten (a frontend that is never told which ones its
/// clients still use, as the gateway, would otherwise keep every one it ever made).
const MAX_DIRS: usize = 16_384;

/// The directories this mount made, with every name that may exist in each.
pub struct KnownDirs {
    ttl: Arc<CacheTtl>,
    dirs: DashMap<InodeId, HashSet<Box<[u8]>>>,
    names: AtomicUsize,
}

impl KnownDirs {
    /// None known yet; answers only while `ttl` says every change stream is live.
    pub fn new(ttl: Arc<CacheTtl>) -> Arc<KnownDirs> {
        Arc::new(KnownDirs {
            ttl,
            dirs: DashMap::new(),
            names: AtomicUsize::new(0),
        })
    }

    /// A mkdir sent at `t` made `dir`: it is known empty unless a change of it already ended
    /// (another process's create in it, whose stream event came before this reply). Call it
    /// before `attrs` records the mkdir's own result.
    pub fn made_at(&self, attrs: &AttrCache, t: Ticket, dir: InodeId) {
        if attrs.unchanged_since(t, dir) {
            self.made(dir);
        }
    }

    /// This frontend made `dir`, and no change of it ended since (so it is empty), while the
    /// change streams were live.
    fn made(&self, dir: InodeId) {
        if self.ttl.watched_ttl().is_some() {
            if self.dirs.len() >= MAX_DIRS {
                self.clear();
            }
            self.dirs.entry(dir).or_default();
        }
    }

    /// Whether `name` is known not to exist in `dir`. A name that cannot exist (too long,
    /// say) is not: the node tells why.
    pub fn absent(&self, dir: InodeId, name: &[u8]) -> bool {
        self.ttl.watched_ttl().is_some()
            && validate_name(name).is_ok()
            && self.dirs.get(&dir).is_some_and(|d| !d.contains(name))
    }

    /// Whether a lookup of `name` in `dir` by `cred` may be answered "no such file" without a
    /// node: the name is known absent, and the folder's cached attributes let `cred` search it.
    pub fn answers_absent(&self, attrs: &AttrCache, cred: &Credentials, dir: InodeId, name: &[u8]) -> bool {
        self.absent(dir, name)
            && attrs
                .get(dir)
                .is_some_and(|(d, _)| perm::check_access(cred, &d, perm::X_OK).is_ok())
    }

    /// A change stream says another process changed `name` in `parent`: the name may exist,
    /// and the folder changed. Its own change event may come later, so `attrs` drops it here
    /// already, and a mkdir of `parent` whose reply is handled after this does not take it for
    /// empty (see [`KnownDirs::made_at`]).
    pub fn entry_changed(&self, attrs: &AttrCache, parent: InodeId, name: &[u8]) {
        attrs.invalidate(parent);
        self.touched(parent, name);
    }

    /// `name` in `dir` may exist now (a change of it, by this mount or another, ended).
    pub fn touched(&self, dir: InodeId, name: &[u8]) {
        let Some(mut d) = self.dirs.get_mut(&dir) else { return };
        if d.contains(name) {
            return;
        }
        if self.names.fetch_add(1, Ordering::SeqCst) >= MAX_NAMES {
            let n = d.len() + 1;
            drop(d);
            self.dirs.remove(&dir);
            self.names.fetch_sub(n, Ordering::SeqCst);
            return;
        }
        d.insert(name.into());
    }

    /// This frontend removed `name` from `dir`, and no change of it by the same frontend
    /// overlapped.
    pub fn removed(&self, dir: InodeId, name: &[u8]) {
        if let Some(mut d) = self.dirs.get_mut(&dir) {
            if d.remove(name) {
                self.names.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// This frontend's removal of `name` from `dir` (unlink, rmdir, rename away) ended: the name
    /// is gone if it `succeeded`, and may still exist if not (see [`KnownDirs::removed`]).
    pub fn removal_ended(&self, dir: InodeId, name: &[u8], succeeded: bool) {
        if succeeded {
            self.removed(dir, name);
        } else {
            self.touched(dir, name);
        }
    }

    /// Stop answering for `dir` (it is gone, or the kernel forgot it).
    pub fn forget(&self, dir: InodeId) {
        if let Some((_, d)) = self.dirs.remove(&dir) {
            self.names.fetch_sub(d.len(), Ordering::SeqCst);
        }
    }

    /// Forget every directory: changes may have been missed.
    pub fn clear(&self) {
        self.dirs.retain(|_, d| {
            self.names.fetch_sub(d.len(), Ordering::SeqCst);
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn known() -> (Arc<CacheTtl>, Arc<KnownDirs>) {
        let ttl = CacheTtl::new(Duration::from_secs(1), Duration::from_secs(60));
        ttl.set_watched(true);
        (ttl.clone(), KnownDirs::new(ttl))
    }

    #[test]
    fn only_names_never_touched_in_a_made_directory_are_absent() {
        let (_, k) = known();
        assert!(!k.absent(5, b"a"), "a directory this mount did not make");
        k.made(5);
        assert!(k.absent(5, b"a"));
        assert!(!k.absent(5, &[b'a'; 256]), "too long: the node says ENAMETOOLONG");
        k.touched(5, b"a");
        assert!(!k.absent(5, b"a"));
        assert!(k.absent(5, b"b"));
        k.removed(5, b"a");
        assert!(k.absent(5, b"a"));
        // Another process's change of a name: it may exist.
        k.touched(5, b"c");
        assert!(!k.absent(5, b"c"));
        k.forget(5);
        assert!(!k.absent(5, b"b"));
        assert_eq!(k.names.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn nothing_is_answered_without_live_streams() {
        let (ttl, k) = known();
        k.made(1);
        ttl.set_watched(false);
        assert!(!k.absent(1, b"x"));
        k.made(2);
        ttl.set_watched(true);
        assert!(k.absent(1, b"x"));
        assert!(!k.absent(2, b"x"), "made while the streams were down");
        k.touched(1, b"y");
        k.clear();
        assert!(!k.absent(1, b"x"));
        assert_eq!(k.names.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn past_the_directory_bound_all_are_forgotten() {
        let (_, k) = known();
        for d in 0..MAX_DIRS as u64 {
            k.made(d);
        }
        k.touched(7, b"x");
        assert!(k.absent(0, b"x") && k.absent(MAX_DIRS as u64 - 1, b"x"));
        k.made(MAX_DIRS as u64);
        assert!(!k.absent(0, b"x"));
        assert!(k.absent(MAX_DIRS as u64, b"x"));
        assert_eq!((k.dirs.len(), k.names.load(Ordering::SeqCst)), (1, 0));
    }

    #[test]
    fn a_directory_past_the_bound_is_forgotten() {
        let (_, k) = known();
        k.made(1);
        k.names.store(MAX_NAMES, Ordering::SeqCst);
        k.touched(1, b"x");
        assert!(!k.absent(1, b"z"));
        assert_eq!(k.names.load(Ordering::SeqCst), MAX_NAMES);
    }
}
