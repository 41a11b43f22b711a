//! What the FUSE client remembers between requests: open files (data layout, unstable writes not
//! yet committed, the data version last seen for close-to-open caching) and directory listings
//! being read. Nothing here is needed to find an inode: ids are global, so FORGET costs nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dashmap::DashMap;
use sealfs_client::{DirEntry, DirtyChunks, Layout};
use sealfs_core::attr::{FileAttr, FileKind, SetAttr, TimeSpec};
use sealfs_core::{Credentials, FsError, InodeId};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Bytes of write-behind data a mount may hold in flight, over all its files.
pub const WRITE_WINDOW: usize = 64 << 20;
/// The window is counted in units of this many bytes.
pub const WINDOW_UNIT: usize = 4096;

/// Per-inode state, kept while the inode is open in this mount.
#[derive(Debug, Default)]
pub struct OpenInode {
    /// Open handles of this inode in this mount.
    pub handles: u32,
    /// How many of them may write. While any is open the kernel's page cache is never given
    /// read-around data: it may hold this mount's newer writes (or dirty shared mappings).
    pub writers: u32,
    /// Where its data lives, as last learned.
    pub layout: Option<Layout>,
    /// Unstable chunk writes not yet committed (by any handle: writeback may pick any).
    pub dirty: DirtyChunks,
    /// Set when the file was unlinked while open: it lives on under this hidden name until the
    /// last handle is released (as NFS clients do).
    pub hidden: Option<HiddenName>,
    /// Chunk writes acknowledged to the kernel but not yet by the storage nodes (write-behind),
    /// as byte ranges `[start, end)`. A later write or read that overlaps one waits for it.
    pub inflight: Vec<(u64, u64)>,
    /// Set while the inode's size and times are owed an update for write-behind writes: the
    /// furthest end written and the writer's credentials (a write by a non-owner clears the
    /// set-id bits). Sent once, when the writes settle (flush, fsync, read, setattr, release).
    pub pending: Option<(u64, Credentials)>,
    /// The first failure of a write already acknowledged to the kernel, reported by the next
    /// write, flush or fsync (as NFS clients report write-behind errors at close).
    pub failed: Option<FsError>,
    /// Woken whenever an in-flight write ends.
    pub settled: Arc<Notify>,
    /// The whole data of a small file kept in its inode, as the last open here read it (with
    /// the attributes); reads are served from it until this mount changes the file.
    pub inline: Option<KeptData>,
    /// Held while the owed size update is being sent: a concurrent reader must not read the
    /// old size in between (the kernel shrinks its idea of the file on a short read).
    pub settling: Arc<tokio::sync::Mutex<()>>,
    /// Writes to a small (inline) file acknowledged to the kernel and held here until the file
    /// settles, when they go to its node as one write.
    pub held: Option<HeldWrite>,
    /// Where held writes being sent end: the size this mount reports covers them until the
    /// nodes have them (as `pending` does for write-behind).
    pub sending: Option<u64>,
    /// Changes of mode, owner or times made by the writer of `held` after its pieces, held with
    /// them (only while they are: it is what `held` is sent with).
    pub held_attr: Option<HeldAttr>,
}

/// Changes of attributes (chmod, chown, utimes: tar sets times, owner and mode of each file
/// right after writing it) held with a small file's held pieces: checked here as the node
/// checks them, shown to this mount's callers at once, and sent with the pieces in one call
/// when the file settles. Other clients see neither until then (close-to-open), nor the data.
#[derive(Debug, Clone)]
pub struct HeldAttr {
    /// Every change held so far, as one: its times set, not "now", and its mode the one all
    /// of them left (a chown clears set-id bits that an earlier chmod gave).
    pub set: SetAttr,
    /// The file's attributes after them, as this mount shows it.
    pub attr: FileAttr,
}

/// Contiguous writes of one writer to a small file, held in the mount: a program writing a
/// small file in pieces (tar writes 10 KiB at a time, and the kernel splits a write that starts
/// inside a page) costs one round trip, not one per piece.
#[derive(Debug)]
pub struct HeldWrite {
    /// Where the first piece starts.
    pub offset: u64,
    /// The pieces, joined.
    pub data: Vec<u8>,
    /// The writer (a write by a non-owner clears the set-id bits, as the node decides).
    pub cred: Credentials,
    /// Its room in the mount's write window.
    pub permit: OwnedSemaphorePermit,
}

impl HeldWrite {
    /// Where the held bytes end.
    pub fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

impl OpenInode {
    /// Whether nothing but held writes is owed: no write in flight, no size update to send, no
    /// failure to report.
    pub fn owes_only_held(&self) -> bool {
        self.inflight.is_empty() && self.pending.is_none() && self.failed.is_none()
    }

    /// Whether an in-flight write overlaps `[start, end)`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.inflight.iter().any(|&(s, e)| s < end && start < e)
    }

    /// Forget one in-flight range (the first equal to it).
    pub fn landed(&mut self, range: (u64, u64)) {
        if let Some(i) = self.inflight.iter().position(|r| *r == range) {
            self.inflight.swap_remove(i);
        }
    }
}

/// Most bytes of small files' data the mount keeps from their opens, over all open files (a
/// file may hold up to 64 KiB inline: ten thousand open at once would otherwise keep 640 MiB).
/// Past it, opens keep none and reads ask the nodes.
pub const KEPT_MAX: usize = 64 << 20;

/// A small file's data kept from its open, counted against [`KEPT_MAX`] while it lives.
#[derive(Debug)]
pub struct KeptData {
    pub data: Bytes,
    count: Arc<AtomicUsize>,
}

impl KeptData {
    /// Keep `data` if the budget has room for it.
    fn new(data: Bytes, count: &Arc<AtomicUsize>) -> Option<KeptData> {
        let n = data.len();
        let before = count.fetch_add(n, Ordering::SeqCst);
        if before + n > KEPT_MAX {
            count.fetch_sub(n, Ordering::SeqCst);
            return None;
        }
        Some(KeptData {
            data,
            count: count.clone(),
        })
    }
}

impl Drop for KeptData {
    fn drop(&mut self) {
        self.count.fetch_sub(self.data.len(), Ordering::SeqCst);
    }
}

/// Where a file unlinked while open lives on: (directory, name).
pub type HiddenName = (InodeId, Vec<u8>);

/// An open file handle.
#[derive(Debug, Clone, Copy)]
pub struct FileHandleState {
    pub ino: InodeId,
    pub flags: i32,
}

/// A directory listing in progress: entries fetched ahead of what the kernel asked for.
#[derive(Debug, Default)]
pub struct DirStream {
    /// The cookie the buffer continues after.
    pub after: u64,
    pub buf: VecDeque<DirEntry>,
    pub eof: bool,
    pub plus: bool,
}

/// All of it.
pub struct State {
    /// Room left in the write-behind window, in [`WINDOW_UNIT`]s.
    pub window: Arc<Semaphore>,
    next_fh: AtomicU64,
    pub files: DashMap<u64, FileHandleState>,
    pub dirs: DashMap<u64, Arc<tokio::sync::Mutex<DirStream>>>,
    pub inodes: DashMap<InodeId, Arc<Mutex<OpenInode>>>,
    /// (mtime, size) of each file when this mount last opened or changed it: an open that finds
    /// the same keeps the kernel's page cache, any other change drops it (close-to-open).
    pub versions: DashMap<InodeId, (TimeSpec, u64)>,
    /// Bytes of small files' data kept from opens ([`KEPT_MAX`]).
    kept: Arc<AtomicUsize>,
    /// Gates of the read-around stores, per inode, while a read-around fetch or store of it runs.
    pub stores: DashMap<InodeId, Arc<StoreGate>>,
}

/// Orders the kernel page cache stores of read-around data (the rest of a block a small read
/// fetched, pushed with FUSE_NOTIFY_STORE) against what must not be undone by one: an open
/// (the kernel drops its pages after an open that finds the file changed, and a store of bytes
/// fetched before must not land after that) and a size change (a store of bytes past a new end
/// would grow the kernel's idea of the file again).
#[derive(Debug, Default)]
pub struct StoreGate {
    /// Moved by each open and size change: a store whose fetch began before is dropped.
    pub gen: AtomicU64,
    /// Held shared by each store while the kernel takes it; an open or a size change takes it
    /// exclusively to wait for the stores already going.
    pub lock: Arc<tokio::sync::RwLock<()>>,
}

impl Default for State {
    fn default() -> State {
        State {
            window: Arc::new(Semaphore::new(WRITE_WINDOW / WINDOW_UNIT)),
            next_fh: AtomicU64::default(),
            files: DashMap::default(),
            dirs: DashMap::default(),
            inodes: DashMap::default(),
            versions: DashMap::default(),
            kept: Arc::default(),
            stores: DashMap::default(),
        }
    }
}

impl State {
    /// A fresh handle number.
    pub fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Register an open handle of `ino`.
    pub fn open_file(&self, ino: InodeId, flags: i32, layout: Layout) -> u64 {
        self.open_file_with(ino, flags, layout, None, || false)
    }

    /// [`open_file`](Self::open_file), keeping `inline` (the file's whole data, read with its
    /// attributes) for reads if `fresh()`, asked under the inode's lock, says it is current.
    pub fn open_file_with(
        &self,
        ino: InodeId,
        flags: i32,
        layout: Layout,
        inline: Option<Bytes>,
        fresh: impl FnOnce() -> bool,
    ) -> u64 {
        let fh = self.new_fh();
        self.files.insert(fh, FileHandleState { ino, flags });
        let entry = self.inodes.entry(ino).or_default().clone();
        let mut st = entry.lock().expect("inode state");
        st.handles += 1;
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            st.writers += 1;
        }
        st.layout = Some(layout);
        st.inline = inline
            .filter(|_| fresh())
            .and_then(|data| KeptData::new(data, &self.kept));
        fh
    }

    /// The store gate of `ino`, made if it has none; [`State::drop_gate`] once done with it.
    pub fn store_gate(&self, ino: InodeId) -> Arc<StoreGate> {
        self.stores.entry(ino).or_default().clone()
    }

    /// Forget `ino`'s store gate (`gate`, given back) if no fetch or store holds it any more.
    pub fn drop_gate(&self, ino: InodeId, gate: Arc<StoreGate>) {
        drop(gate);
        self.stores.remove_if(&ino, |_, g| Arc::strong_count(g) == 1);
    }

    /// Make every read-around store of `ino` begun so far either land now or never: the
    /// caller is about to let the kernel see a new version of the file (an open) or a new size.
    pub async fn fence_stores(&self, ino: InodeId) {
        let Some(gate) = self.stores.get(&ino).map(|g| g.clone()) else {
            return;
        };
        gate.gen.fetch_add(1, Ordering::SeqCst);
        drop(gate.lock.write().await);
        self.drop_gate(ino, gate);
    }

    /// The state of an inode open here.
    pub fn inode(&self, ino: InodeId) -> Option<Arc<Mutex<OpenInode>>> {
        self.inodes.get(&ino).map(|e| e.clone())
    }

    /// Whether `ino` owes the nodes nothing: no write in flight or held, no size update or
    /// failure to report, nothing to commit and no settle running. A flush or release has
    /// nothing to wait for then, and is answered on the FUSE thread without a trip through the
    /// runtime.
    pub fn quiet(&self, ino: InodeId) -> bool {
        let Some(st) = self.inode(ino) else { return true };
        let g = st.lock().expect("inode state");
        g.owes_only_held() && g.held.is_none() && g.dirty.is_empty() && g.settling.try_lock().is_ok()
    }

    /// Attributes as this mount's callers must see them: a file unlinked while open here lives
    /// on under a hidden name, which does not count as a link, and the writes and attribute
    /// changes this mount holds or is still sending count at once.
    pub fn visible(&self, mut a: FileAttr) -> FileAttr {
        if a.kind == FileKind::Regular {
            if let Some(st) = self.inode(a.ino) {
                let st = st.lock().expect("inode state");
                if st.hidden.is_some() {
                    a.nlink = a.nlink.saturating_sub(1);
                }
                // Write-behind writes this mount acknowledged count before the nodes have them.
                if let Some((end, _)) = &st.pending {
                    a.size = a.size.max(*end);
                }
                if let Some(end) = st.held.as_ref().map(HeldWrite::end).max(st.sending) {
                    a.size = a.size.max(end);
                }
                // Attribute changes held with them: shown here at once. Times only as set (the
                // held writes move mtime when they land).
                if let Some(h) = &st.held_attr {
                    (a.perm, a.uid, a.gid, a.ctime) = (h.attr.perm, h.attr.uid, h.attr.gid, h.attr.ctime);
                    if h.set.atime.is_some() {
                        a.atime = h.attr.atime;
                    }
                    if h.set.mtime.is_some() {
                        a.mtime = h.attr.mtime;
                    }
                }
            }
        }
        a
    }

    /// Whether any handle of `ino` is open here.
    pub fn is_open(&self, ino: InodeId) -> bool {
        self.inodes
            .get(&ino)
            .is_some_and(|e| e.lock().expect("inode state").handles > 0)
    }

    /// Drop a handle; `None` if it was not open.
    pub fn release_file(&self, fh: u64) -> Option<Released> {
        let (_, h) = self.files.remove(&fh)?;
        let mut out = Released {
            ino: h.ino,
            hidden: None,
            owed: DirtyChunks::default(),
        };
        let mut last = false;
        if let Some(e) = self.inodes.get(&h.ino) {
            let mut st = e.lock().expect("inode state");
            st.handles = st.handles.saturating_sub(1);
            if h.flags & libc::O_ACCMODE != libc::O_RDONLY {
                st.writers = st.writers.saturating_sub(1);
            }
            if st.handles == 0 {
                last = true;
                out.hidden = st.hidden.take();
                // What a change noted after the release's commit left (a deferred setattr by
                // path racing the last close): nobody else will sync it.
                out.owed = std::mem::take(&mut st.dirty);
            }
        }
        if last {
            self.inodes
                .remove_if(&h.ino, |_, e| e.lock().expect("inode state").handles == 0);
        }
        Some(out)
    }
}

/// What releasing a handle leaves to do.
#[derive(Debug)]
pub struct Released {
    pub ino: InodeId,
    /// The hidden name of a file unlinked while open, when this was its last handle.
    pub hidden: Option<HiddenName>,
    /// Unsynced changes still to commit, when this was its last handle.
    pub owed: DirtyChunks,
}

/// Names the client gives files unlinked while open; listings leave them out.
pub const HIDDEN_PREFIX: &[u8] = b".sealfs-hidden-";

/// The hidden name for `ino`.
pub fn hidden_name(ino: InodeId) -> Vec<u8> {
    let mut n = HIDDEN_PREFIX.to_vec();
    n.extend_from_slice(format!("{ino:016x}-{:08x}", rand::random::<u32>()).as_bytes());
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_release_returns_hidden_name() {
        let s = State::default();
        let layout = Layout {
            inline: true,
            chunk_size: 1 << 20,
        };
        let a = s.open_file(7, 0, layout);
        let b = s.open_file(7, 0, layout);
        assert!(s.is_open(7));
        s.inode(7).unwrap().lock().unwrap().hidden = Some((1, b"x".to_vec()));
        let r = s.release_file(a).unwrap();
        assert_eq!((r.ino, r.hidden), (7, None));
        let r = s.release_file(b).unwrap();
        assert_eq!((r.ino, r.hidden), (7, Some((1, b"x".to_vec()))));
        assert!(r.owed.is_empty());
        assert!(!s.is_open(7));
        assert!(s.inode(7).is_none());
        assert!(s.release_file(b).is_none());
        assert!(hidden_name(7).starts_with(HIDDEN_PREFIX));
    }

    /// Small files' data kept from opens stays within its budget, and a release gives its
    /// room back.
    #[test]
    fn kept_data_stays_within_its_budget() {
        let s = State::default();
        let layout = Layout {
            inline: true,
            chunk_size: 1 << 20,
        };
        let data = Bytes::from(vec![1u8; 64 << 10]);
        let fits = KEPT_MAX / data.len();
        let open = |ino: InodeId| s.open_file_with(ino, 0, layout, Some(data.clone()), || true);
        let kept = |ino: InodeId| s.inode(ino).unwrap().lock().unwrap().inline.is_some();
        let handles: Vec<u64> = (0..fits as InodeId).map(open).collect();
        assert!((0..fits as InodeId).all(kept), "all within the budget are kept");
        let over = open(fits as InodeId);
        assert!(!kept(fits as InodeId), "past the budget, none is kept");
        s.release_file(over).unwrap();
        s.release_file(handles[0]).unwrap();
        open(fits as InodeId + 1);
        assert!(kept(fits as InodeId + 1), "a release gave its room back");
    }

    /// Handles that may write are counted until released.
    #[test]
    fn writers_are_counted() {
        let s = State::default();
        let layout = Layout {
            inline: false,
            chunk_size: 1 << 20,
        };
        let writers = || s.inode(7).unwrap().lock().unwrap().writers;
        let r = s.open_file(7, libc::O_RDONLY, layout);
        assert_eq!(writers(), 0);
        let w = s.open_file(7, libc::O_RDWR, layout);
        let o = s.open_file(7, libc::O_WRONLY | libc::O_APPEND, layout);
        assert_eq!(writers(), 2);
        s.release_file(w).unwrap();
        s.release_file(o).unwrap();
        assert_eq!(writers(), 0);
        s.release_file(r).unwrap();
    }

    /// A fence moves the gate's generation at once and returns only when the stores going
    /// have landed; an idle gate is forgotten.
    #[tokio::test]
    async fn a_fence_waits_for_the_stores_going() {
        let s = Arc::new(State::default());
        s.fence_stores(7).await;
        let gate = s.store_gate(7);
        let gen = gate.gen.load(Ordering::SeqCst);
        let store = gate.lock.clone().try_read_owned().unwrap();
        let fence = tokio::spawn({
            let s = s.clone();
            async move { s.fence_stores(7).await }
        });
        while gate.gen.load(Ordering::SeqCst) == gen {
            tokio::task::yield_now().await;
        }
        assert!(gate.lock.try_read().is_err(), "no new store while a fence waits");
        tokio::task::yield_now().await;
        assert!(!fence.is_finished(), "the fence waits for the store");
        drop(store);
        fence.await.unwrap();
        s.drop_gate(7, gate);
        assert!(s.stores.is_empty(), "an idle gate is forgotten");
    }
}
