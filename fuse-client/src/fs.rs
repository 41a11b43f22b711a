//! The FUSE file system: a thin adapter from fuser's callbacks to `SealClient`. A callback that
//! needs the network copies what it needs, spawns a tokio task and returns, so the threads
//! reading /dev/fuse never wait on it; the task sends the reply. One the mount can answer by
//! itself (cached attributes, names known free, a write queued behind, a flush with nothing
//! owed) replies at once, on the thread that read it. POSIX rules and permission checks are the
//! storage nodes' job; this layer passes the caller's credentials along (the kernel checks modes
//! too, `default_permissions`, since it serves cached names and attributes without asking). The
//! one exception: a change of attributes held with a small file's held writes ([`HeldAttr`]) is
//! checked here first, by the same rules (`perm::apply_setattr`), and by the node when sent.

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use fuser::{
    AccessFlags, Errno, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use sealfs_client::{
    AttrCache, CacheTtl, Changed, DirEntry, DirtyChunks, Entry, KnownDirs, Layout, SealClient, Ticket, WriteMode,
};
use sealfs_core::attr::{FileAttr, FileKind, SetAttr, TimeSpec, TimeUpdate};
use sealfs_core::config::{INLINE_MAX, MAX_FILE_SIZE, MAX_IO_SIZE};
use sealfs_core::{Credentials, FsError, FsResult, InodeId};
use tokio::runtime::Handle;
use tracing::{debug, warn};

use crate::state::{
    hidden_name, DirStream, HeldAttr, HeldWrite, HiddenName, OpenInode, Released, State, HIDDEN_PREFIX, WINDOW_UNIT,
};
use crate::watch::Caches;

/// The attribute the kernel reads before every write (to drop file capabilities).
const CAPS_XATTR: &[u8] = b"security.capability";
/// Entries fetched per directory listing call.
const DIR_PAGE: u32 = 256;
/// Block size reported to the kernel (st_blksize): large, so tools use big requests.
const BLKSIZE: u32 = 1 << 20;

/// The mounted file system.
pub struct SealFs {
    client: SealClient,
    rt: Handle,
    ttl: Arc<CacheTtl>,
    attrs: Arc<AttrCache>,
    names: Arc<KnownDirs>,
    state: Arc<State>,
    /// For telling the kernel what changed behind its back; set once the session exists.
    kernel: Arc<OnceLock<Notifier>>,
    around: ReadAround,
}

/// The read-around settings (`ClientConfig::read_around_kb`), in bytes.
#[derive(Debug, Clone, Copy)]
struct ReadAround {
    /// The block a small read fetches (0: off).
    block: u64,
    /// Larger files are read as asked.
    max_file: u64,
}

impl SealFs {
    /// A file system over `client`, running its work on `rt`, telling the kernel to cache what
    /// it replies for as long as `caches.ttl` says, answering getattr from `caches.attrs` and
    /// lookups of free names from `caches.names` when it can.
    pub fn new(client: SealClient, rt: Handle, caches: Caches) -> SealFs {
        let config = client.router().config();
        let around = ReadAround {
            block: u64::from(config.read_around_kb) << 10,
            max_file: config.read_around_max_file_mib.saturating_mul(1 << 20),
        };
        SealFs {
            client,
            rt,
            ttl: caches.ttl,
            attrs: caches.attrs,
            names: caches.names,
            state: Arc::new(State::default()),
            kernel: Arc::new(OnceLock::new()),
            around,
        }
    }

    /// Where the session's notifier goes once it exists (the session takes this value first).
    pub fn kernel_notifier(&self) -> Arc<OnceLock<Notifier>> {
        self.kernel.clone()
    }

    fn cx(&self) -> Ctx {
        Ctx {
            client: self.client.clone(),
            state: self.state.clone(),
            ttl: self.ttl.clone(),
            attrs: self.attrs.clone(),
            names: self.names.clone(),
            kernel: self.kernel.clone(),
            around: self.around,
        }
    }

    /// Write-behind queued on the FUSE thread, when nothing needs waiting for: a small write to
    /// a file open and chunked, room in the window, no write in flight overlapping, no failure
    /// owed. The reply then needs no trip through the runtime. Otherwise the data comes back
    /// (copied) for the path that waits.
    fn try_write_behind(&self, cred: &Credentials, ino: InodeId, offset: u64, data: &[u8]) -> Result<u32, Bytes> {
        let decline = || Bytes::copy_from_slice(data);
        if data.len() > FAST_WRITE_MAX {
            return Err(decline());
        }
        let Ok(end) = sealfs_client::write_end(offset, data.len()) else {
            return Err(decline());
        };
        let Some(st) = self.state.inode(ino) else {
            return Err(decline());
        };
        // One look at the file's state: taking window room never waits, so it is done under it.
        let (chunk_size, permit) = {
            let mut g = st.lock().expect("inode state");
            let chunk_size = match g.layout {
                Some(l) if !l.inline && !data.is_empty() => l.chunk_size,
                Some(l) if l.inline && !data.is_empty() => {
                    return self.hold(&mut g, cred, offset, end, data).ok_or_else(decline);
                }
                _ => return Err(decline()),
            };
            if g.failed.is_some() || g.overlaps(offset, end) {
                return Err(decline());
            }
            let units = data.len().div_ceil(WINDOW_UNIT) as u32;
            let Ok(permit) = self.state.window.clone().try_acquire_many_owned(units) else {
                return Err(decline());
            };
            g.inflight.push((offset, end));
            owe_size(&mut g, end, cred.clone());
            (chunk_size, permit)
        };
        let bytes = Bytes::copy_from_slice(data);
        self.rt
            .spawn(self.cx().land(st, ino, offset, end, bytes, chunk_size, permit));
        Ok(data.len() as u32)
    }

    /// Hold a write to small file `g` in this mount (see [`HeldWrite`]) when it stays inline
    /// and continues the held writes of the same writer; `None` otherwise (nothing is held
    /// then, and the caller writes through).
    fn hold(&self, g: &mut OpenInode, cred: &Credentials, offset: u64, end: u64, data: &[u8]) -> Option<u32> {
        if end > INLINE_MAX || !g.owes_only_held() || g.held_attr.is_some() {
            return None;
        }
        if g.held.as_ref().is_some_and(|h| h.end() != offset || h.cred != *cred) {
            return None;
        }
        let units = data.len().div_ceil(WINDOW_UNIT) as u32;
        let permit = self.state.window.clone().try_acquire_many_owned(units).ok()?;
        match &mut g.held {
            Some(h) => {
                h.data.extend_from_slice(data);
                h.permit.merge(permit);
            }
            None => {
                g.held = Some(HeldWrite {
                    offset,
                    data: data.to_vec(),
                    cred: cred.clone(),
                    permit,
                })
            }
        }
        // Reads go through the settle that sends these, not to the data the open read.
        g.inline = None;
        Some(data.len() as u32)
    }

    /// Hold attribute change `s` of small file `ino` with the writes held for it ([`HeldAttr`])
    /// when the caller is their writer and owns the file (or is root), nothing else is owed, and
    /// the change passes the node's rules on the attributes this mount has for it: the
    /// attributes to show. `None` otherwise, and the change goes to the node as usual.
    fn hold_setattr(&self, cred: &Credentials, ino: InodeId, s: &SetAttr) -> Option<FileAttr> {
        if s.size.is_some() {
            return None;
        }
        let st = self.state.inode(ino)?;
        let cached = self.attrs.get(ino).map(|(a, _)| a);
        let mut g = st.lock().expect("inode state");
        if !g.owes_only_held() || !g.layout.is_some_and(|l| l.inline) || g.held.as_ref().is_none_or(|h| h.cred != *cred)
        {
            return None;
        }
        let mut attr = match &g.held_attr {
            Some(h) => h.attr.clone(),
            None => cached?,
        };
        if attr.ino != ino || attr.kind != FileKind::Regular || !(cred.is_root() || cred.uid == attr.uid) {
            return None;
        }
        sealfs_core::perm::apply_setattr(cred, &mut attr, s, TimeSpec::now()).ok()?;
        let mut set = g.held_attr.take().map(|h| h.set).unwrap_or_default();
        // The mode all changes left, sent as such: the node makes an owner change before a
        // mode change, which would otherwise undo a chown's clearing of set-id bits.
        if s.perm.is_some() || s.uid.is_some() || s.gid.is_some() || set.perm.is_some() {
            set.perm = Some(attr.perm);
        }
        set.uid = s.uid.or(set.uid);
        set.gid = s.gid.or(set.gid);
        // "Now" is the call's time, not the send's.
        set.atime = s.atime.map(|_| TimeUpdate::Set(attr.atime)).or(set.atime);
        set.mtime = s.mtime.map(|_| TimeUpdate::Set(attr.mtime)).or(set.mtime);
        g.held_attr = Some(HeldAttr {
            set,
            attr: attr.clone(),
        });
        drop(g);
        Some(self.state.visible(attr))
    }

    /// Whether `ino`'s mode may have a set-id bit a write must clear: set-user-ID, or
    /// set-group-ID with group execute (without it, it marks mandatory locking). Unknown (not
    /// cached) counts as maybe.
    fn may_have_set_id(&self, ino: InodeId) -> bool {
        self.attrs.get(ino).is_none_or(|(a, _)| has_set_id(a.perm))
    }

    /// Run `f` on the runtime; its result (or error) goes to `reply`.
    fn spawn<T, F, Fut, R>(&self, reply: R, f: F, ok: impl FnOnce(R, T) + Send + 'static)
    where
        F: FnOnce(Ctx) -> Fut + Send + 'static,
        Fut: Future<Output = FsResult<T>> + Send + 'static,
        T: Send + 'static,
        R: ErrorReply + Send + 'static,
    {
        let cx = self.cx();
        self.rt.spawn(async move {
            match f(cx).await {
                Ok(v) => ok(reply, v),
                Err(e) => {
                    if matches!(e, FsError::Io(_) | FsError::Unavailable(_) | FsError::TimedOut(_)) {
                        warn!("request failed: {e}");
                    } else {
                        debug!("request failed: {e}");
                    }
                    reply.fail(Errno::from_i32(e.to_errno()))
                }
            }
        });
    }
}

/// The largest write queued on the FUSE thread. A large write's cost is its bytes, not the hop
/// through the runtime; answering it early only fills the write window sooner (measured: no
/// faster, 35 MiB more at peak while writing 1 GiB).
const FAST_WRITE_MAX: usize = 128 << 10;

/// An unstable write to a file of layout `known` (if known).
fn unstable(known: Option<Layout>) -> WriteMode {
    WriteMode {
        known,
        ..Default::default()
    }
}

/// How held writes of a file of layout `known` go: synced with `stable`, else unstable.
fn held_mode(known: Option<Layout>, stable: bool) -> WriteMode {
    WriteMode {
        stable,
        ..unstable(known)
    }
}

/// Record that `st` owes the nodes a size and times update up to `end` (write-behind).
fn owe_size(g: &mut OpenInode, end: u64, cred: Credentials) {
    let furthest = g.pending.as_ref().map_or(end, |(p, _)| end.max(*p));
    g.pending = Some((furthest, cred));
}

/// What a spawned request needs.
#[derive(Clone)]
struct Ctx {
    client: SealClient,
    state: Arc<State>,
    ttl: Arc<CacheTtl>,
    attrs: Arc<AttrCache>,
    names: Arc<KnownDirs>,
    kernel: Arc<OnceLock<Notifier>>,
    around: ReadAround,
}

/// Replies that can carry an error.
trait ErrorReply {
    fn fail(self, e: Errno);
}

macro_rules! error_reply {
    ($($t:ty),*) => {$(
        impl ErrorReply for $t {
            fn fail(self, e: Errno) {
                self.error(e)
            }
        }
    )*};
}
error_reply!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyOpen,
    ReplyStatfs,
    ReplyWrite,
    ReplyXattr
);

/// The caller's credentials. Supplementary groups come from /proc, as libfuse does: the kernel
/// does not send them, and they decide group permission checks.
fn creds(req: &Request) -> Credentials {
    let mut c = Credentials {
        uid: req.uid(),
        gid: req.gid(),
        groups: Vec::new(),
    };
    if c.uid != 0 {
        c.groups = proc_groups(req.pid()).unwrap_or_default();
    }
    c
}

fn proc_groups(pid: u32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Groups:"))?;
    Some(
        line["Groups:".len()..]
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .take(64)
            .collect(),
    )
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn fuse_attr(a: &FileAttr) -> fuser::FileAttr {
    fuser::FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime.to_system(),
        mtime: a.mtime.to_system(),
        ctime: a.ctime.to_system(),
        crtime: a.ctime.to_system(),
        kind: file_type(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize: BLKSIZE,
        flags: 0,
    }
}

fn time_update(t: Option<TimeOrNow>) -> Option<TimeUpdate> {
    t.map(|t| match t {
        TimeOrNow::Now => TimeUpdate::Now,
        TimeOrNow::SpecificTime(s) => TimeUpdate::Set(TimeSpec::from_system(s)),
    })
}

fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

impl Ctx {
    fn entry(&self, reply: ReplyEntry, e: Entry) {
        let a = self.state.visible(e.attr);
        reply.entry(&self.ttl.get(), &fuse_attr(&a), Generation(a.generation));
    }

    /// `name` made in `parent` by a request sent at `t`: the directory changed, the name may
    /// exist now, and the new inode's attributes are the reply's. `new`: the request could
    /// only have made a new inode (not opened or linked an existing one), which has no
    /// `security.capability` attribute for the kernel to ask about before its first write.
    fn created(&self, t: Ticket, parent: InodeId, name: &[u8], r: FsResult<Entry>, new: bool) -> FsResult<Entry> {
        let dir_after = r.as_ref().ok().and_then(|e| e.dir.as_ref()).map(|d| &d.after);
        self.attrs.changed(t, parent, dir_after);
        self.names.touched(parent, name);
        let e = r?;
        if new {
            self.attrs.made(t, &e.attr);
        } else {
            self.attrs.changed(t, e.attr.ino, Some(&e.attr));
        }
        Ok(e)
    }

    /// Tell the attribute cache that a change this mount made to `ino` (sent at `t`) ended,
    /// and stop serving reads from the data its last open read. Every caller's change is a
    /// write or a change of size, mode, owner or times: none gives the file capabilities.
    fn changed(&self, t: Ticket, ino: InodeId, r: &FsResult<Entry>) {
        self.attrs
            .changed_keeping_caps(t, ino, r.as_ref().ok().map(|e| &e.attr));
        // After the cache's change count moved, so that an open finishing now either sees the
        // count moved or has its data dropped here (both under the inode's lock).
        if let Some(st) = self.state.inode(ino) {
            st.lock().expect("inode state").inline = None;
        }
    }

    /// The same, for a change of names in `dir` and `new_dir` (the same one but for a rename
    /// between two): the directories as the node left them, and every inode it says it touched.
    /// When that is not known, nothing cached is trusted.
    fn names_changed(&self, t: Ticket, dir: InodeId, new_dir: InodeId, r: &FsResult<Changed>) {
        self.attrs.names_changed(t, dir, new_dir, r);
    }

    /// A small read of `[offset, end)` of `ino` (open here, chunked, within the size this
    /// mount knows): fetch the aligned read-around block around it, answer from it, and hand
    /// the rest of the block to the kernel's page cache, unless this mount may be writing the
    /// file or an open or size change came meanwhile ([`crate::state::StoreGate`]).
    async fn read_around(
        &self,
        cred: &Credentials,
        st: &Mutex<OpenInode>,
        ino: INodeNo,
        offset: u64,
        end: u64,
        chunk_size: u32,
    ) -> FsResult<Bytes> {
        let gate = self.state.store_gate(ino.0);
        // Read before the size: a size change after this moves it, and the store is dropped.
        let gen = gate.gen.load(Ordering::SeqCst);
        let known = self.state.versions.get(&ino.0).map_or(0, |v| v.1);
        let start = offset - offset % self.around.block;
        let stop = start.saturating_add(self.around.block).min(known);
        if end > stop {
            // A read across the block's end, or the file shrank meanwhile.
            self.state.drop_gate(ino.0, gate);
            return self.client.read_chunks(ino.0, offset, end, chunk_size).await;
        }
        // A store past the end of the file would grow the kernel's idea of it: the stores stop
        // at the size it was last told (the attribute cache's, else the nodes' now), which may
        // be below the size at open if another client cut the file since.
        let fetch = self.client.read_chunks(ino.0, start, stop, chunk_size);
        let (all, size) = match self.attrs.get(ino.0) {
            Some((a, _)) => (fetch.await, Ok(a.size)),
            None => {
                let t = self.attrs.ticket();
                let (all, e) = tokio::join!(fetch, self.client.getattr(cred, ino.0));
                if let Ok(e) = &e {
                    self.attrs.offer(t, &e.attr);
                }
                (all, e.map(|e| e.attr.size))
            }
        };
        let all = match all {
            Ok(all) => all,
            Err(e) => {
                self.state.drop_gate(ino.0, gate);
                return Err(e);
            }
        };
        let (lo, hi) = ((offset - start) as usize, (end - start) as usize);
        let (lo, hi) = (lo.min(all.len()), hi.min(all.len()));
        let asked = all.slice(lo..hi);
        // Past the size the kernel was told, nothing is stored (nor on a failed look).
        let keep = size.map_or(0, |n| n.saturating_sub(start)).min(all.len() as u64) as usize;
        let all = all.slice(..keep.max(hi));
        let kernel = self.kernel.get().cloned();
        match (kernel, gate.lock.clone().try_read_owned()) {
            (Some(kernel), Ok(held))
                if gate.gen.load(Ordering::SeqCst) == gen && st.lock().expect("inode state").writers == 0 =>
            {
                let state = self.state.clone();
                // The kernel locks each page it stores into, and may wait there for a read in
                // flight: off the runtime's threads.
                tokio::task::spawn_blocking(move || {
                    // The asked pages are locked by this very read until its reply: left out.
                    for (at, part) in [(start, &all[..lo]), (start + hi as u64, &all[hi..])] {
                        if part.is_empty() {
                            continue;
                        }
                        if let Err(e) = kernel.store(ino, at, part) {
                            // ENOENT: the kernel no longer holds the inode; nothing to fill.
                            debug!(ino = ino.0, at, len = part.len(), "read-around store refused: {e}");
                        }
                    }
                    drop(held);
                    state.drop_gate(ino.0, gate);
                });
            }
            _ => self.state.drop_gate(ino.0, gate),
        }
        Ok(asked)
    }

    /// Remember the data version this mount saw, for close-to-open caching.
    fn saw(&self, a: &FileAttr) {
        if a.kind == FileKind::Regular {
            self.state.versions.insert(a.ino, (a.mtime, a.size));
        }
    }

    /// What a handle's release left: changes to commit, a hidden name to remove (failures have
    /// nobody left to report to but the log).
    async fn released(&self, rel: Released) {
        if !rel.owed.is_empty() {
            if let Err(e) = self.client.commit(rel.ino, rel.owed).await {
                warn!(ino = rel.ino, "changes at release failed: {e}");
            }
        }
        if let Some(hidden) = rel.hidden {
            self.remove_hidden(rel.ino, hidden).await;
        }
    }

    /// A change of `ino` left unsynced with its writes (`stamp`): the file's next commit makes
    /// it durable. When no handle is left to commit it (the last one was released meanwhile),
    /// it is made durable now.
    async fn owe(&self, ino: InodeId, stamp: DirtyChunks) -> FsResult<()> {
        if stamp.is_empty() {
            return Ok(());
        }
        if let Some(st) = self.state.inode(ino) {
            let mut g = st.lock().expect("inode state");
            // Under the lock the last release takes what is owed with: either it sees this or
            // this sees it gone.
            if g.handles > 0 {
                g.dirty.merge(stamp);
                return Ok(());
            }
        }
        self.client.commit(ino, stamp).await
    }

    /// Remove the hidden name a file unlinked while open lived on under, after its last
    /// release; a failure has nobody left to report to but the log.
    async fn remove_hidden(&self, ino: InodeId, (parent, name): HiddenName) {
        let t = self.attrs.ticket();
        let r = self.client.unlink(&Credentials::root(), parent, &name).await;
        self.names_changed(t, parent, parent, &r);
        match r {
            Ok(_) => self.names.removed(parent, &name),
            Err(e) => warn!(ino, "cannot remove the hidden name of an unlinked file: {e}"),
        }
    }

    /// Commit the unstable writes of `ino` (fsync, close), after letting write-behind land.
    async fn commit(&self, ino: InodeId) -> FsResult<()> {
        // Held writes go synced: a small file written and closed costs its create and one
        // synced write, not a write and then a sync.
        self.settle_with(ino, true).await?;
        let Some(st) = self.state.inode(ino) else { return Ok(()) };
        let dirty = std::mem::take(&mut st.lock().expect("inode state").dirty);
        if dirty.is_empty() {
            return Ok(());
        }
        match self.client.commit(ino, dirty.clone()).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_retryable() => {
                // Nothing was lost yet: keep the set so a later fsync or close tries again.
                st.lock().expect("inode state").dirty.merge(dirty);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Wait until no write-behind write of `st` overlaps `[start, end)`, then (with `register`)
    /// record that range as in flight. `None`: wait for all of them.
    async fn wait_writes(st: &Arc<Mutex<OpenInode>>, range: Option<(u64, u64)>, register: bool) {
        loop {
            let settled = st.lock().expect("inode state").settled.clone();
            // Made before the check, so a write landing in between still wakes this waiter.
            let notified = settled.notified();
            {
                let mut g = st.lock().expect("inode state");
                let busy = match range {
                    Some((s, e)) => g.overlaps(s, e),
                    None => !g.inflight.is_empty(),
                };
                if !busy {
                    if let (true, Some(r)) = (register, range) {
                        g.inflight.push(r);
                    }
                    return;
                }
            }
            notified.await;
        }
    }

    /// Clear the set-id bits of open chunked file `ino` for a write by `cred` (its size and
    /// times update, which the node makes clear them for a caller that is not root), now
    /// rather than when the write-behind settles: the writer's next `fstat` must not see them.
    async fn kill_set_id(&self, cred: &Credentials, st: &Arc<Mutex<OpenInode>>, ino: InodeId) -> FsResult<()> {
        let t = self.attrs.ticket();
        let mut stamp = DirtyChunks::default();
        let r = self.client.extend_size(cred, ino, 0, false, &mut stamp).await;
        self.changed(t, ino, &r);
        let e = r?;
        st.lock().expect("inode state").dirty.merge(stamp);
        self.saw(&e.attr);
        self.drop_kernel_attrs(ino);
        Ok(())
    }

    /// Make the kernel drop its copy of `ino`'s attributes, synchronously: a change this mount
    /// made under a reply that carries no attributes (a write clearing set-id bits; the kernel
    /// refreshes only size and times after a write, so a `stat` asking for the mode alone would
    /// otherwise be answered from its copy).
    fn drop_kernel_attrs(&self, ino: InodeId) {
        if let Some(n) = self.kernel.get() {
            // ENOENT: the kernel holds no such inode; nothing to drop.
            let _ = n.inval_inode(INodeNo(ino), -1, 0);
        }
    }

    /// Take the writes `st` holds (and its layout) to send them, the size this mount reports
    /// still covering them (`sending`) until the caller has them written. Under the settling
    /// lock.
    fn take_held(st: &Arc<Mutex<OpenInode>>) -> Option<(HeldWrite, Option<SetAttr>, Option<Layout>)> {
        let mut g = st.lock().expect("inode state");
        let h = g.held.take()?;
        g.sending = Some(h.end());
        // The held attributes stay shown until the nodes have them.
        let set = g.held_attr.as_ref().map(|a| a.set.clone());
        Some((h, set, g.layout))
    }

    /// Send held writes taken by [`Ctx::take_held`] on their own, as `mode` says. A failure is
    /// this caller's to report, and the next flush's or fsync's: the writer's close must not
    /// succeed over lost data.
    async fn send_held(
        &self,
        st: &Arc<Mutex<OpenInode>>,
        ino: InodeId,
        cred: &Credentials,
        offset: u64,
        data: Bytes,
        mode: WriteMode,
    ) -> FsResult<()> {
        let r = self.write_through(Some(st), cred, ino, offset, data, mode).await;
        let mut g = st.lock().expect("inode state");
        g.sending = None;
        if let Err(e) = r {
            g.failed.get_or_insert(e.clone());
            return Err(e);
        }
        Ok(())
    }

    /// Send held writes `h` (taken by [`Ctx::take_held`]) with attribute change `s` in one
    /// call, synced with `stable`, else left for the file's commit: the entry after both. When
    /// they were not made together (no longer inline, a node older than the call, or the
    /// change failed), the writes are sent on their own first, and the answer is `None` or the
    /// change's failure.
    async fn send_held_with(
        &self,
        st: &Arc<Mutex<OpenInode>>,
        ino: InodeId,
        h: HeldWrite,
        s: &SetAttr,
        layout: Option<Layout>,
        stable: bool,
    ) -> FsResult<Option<Entry>> {
        let data = Bytes::from(h.data);
        let t = self.attrs.ticket();
        let mut stamp = DirtyChunks::default();
        let r = self
            .client
            .setattr_after_writes(
                &h.cred,
                ino,
                s,
                (h.offset, data.clone()),
                (!stable).then_some(&mut stamp),
            )
            .await;
        let e = match r {
            Ok(Some(e)) => e,
            other => {
                self.changed(t, ino, &Err(FsError::Invalid("not written".into())));
                st.lock().expect("inode state").dirty.merge(stamp);
                let mode = held_mode(layout, stable);
                self.send_held(st, ino, &h.cred, h.offset, data, mode).await?;
                return other.map(|_| None);
            }
        };
        self.changed(t, ino, &Ok(e.clone()));
        {
            let mut g = st.lock().expect("inode state");
            g.layout = Some(e.layout);
            g.sending = None;
            g.held_attr = None;
            // Under the settling lock, which a last release's commit waits for: the file is
            // still open here.
            g.dirty.merge(stamp);
        }
        self.saw(&e.attr);
        Ok(Some(e))
    }

    /// Send held writes with the attribute changes held after them ([`HeldAttr`]), in one call
    /// when they can go together ([`Ctx::send_held_with`]), else the change after the writes.
    /// A failure of either is reported as [`Ctx::send_held`]'s.
    async fn send_held_with_attrs(
        &self,
        st: &Arc<Mutex<OpenInode>>,
        ino: InodeId,
        h: HeldWrite,
        set: SetAttr,
        layout: Option<Layout>,
        stable: bool,
    ) -> FsResult<()> {
        let cred = h.cred.clone();
        let r = match self.send_held_with(st, ino, h, &set, layout, stable).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                let t = self.attrs.ticket();
                let e = self.client.setattr(&cred, ino, &set).await;
                self.changed(t, ino, &e);
                e.map(|e| self.saw(&e.attr))
            }
            Err(e) => Err(e),
        };
        let mut g = st.lock().expect("inode state");
        g.held_attr = None;
        if let Err(e) = &r {
            g.failed.get_or_insert(e.clone());
        }
        r
    }

    /// Settle `ino` first if it holds attribute changes ([`HeldAttr`]), before a call whose
    /// node checks the caller against the file's attributes (open, access, xattrs, link).
    async fn settle_attrs(&self, ino: InodeId) -> FsResult<()> {
        let held = self
            .state
            .inode(ino)
            .is_some_and(|st| st.lock().expect("inode state").held_attr.is_some());
        if held {
            self.settle(ino).await?;
        }
        Ok(())
    }

    /// Write `data` to `ino` in one call (`st`: its state, when open here), as `mode` says:
    /// what an unstable write leaves to commit goes to the open file's next commit, or is
    /// committed now when the file is not open here (a write the kernel issued after release).
    async fn write_through(
        &self,
        st: Option<&Arc<Mutex<OpenInode>>>,
        cred: &Credentials,
        ino: InodeId,
        offset: u64,
        data: Bytes,
        mode: WriteMode,
    ) -> FsResult<Entry> {
        let mut dirty = DirtyChunks::default();
        let t = self.attrs.ticket();
        let r = self.client.write(cred, ino, offset, data, mode, &mut dirty).await;
        self.changed(t, ino, &r);
        let e = r?;
        if let Some(st) = st {
            let mut st = st.lock().expect("inode state");
            st.layout = Some(e.layout);
            st.dirty.merge(dirty);
        } else if !dirty.is_empty() {
            self.client.commit(ino, dirty).await?;
        }
        self.saw(&e.attr);
        Ok(e)
    }

    /// A change of attributes `s` (no size) of small file `ino` while it holds writes of this
    /// caller and owes nothing else: both go in one call (tar sets times, owner and mode right
    /// after writing each file), the change left for the file's commit with the writes.
    /// `None` when nothing of the kind is held, or the writes did not fit inline (they are
    /// written then): the caller makes the change as usual.
    async fn setattr_with_held(&self, cred: &Credentials, ino: InodeId, s: &SetAttr) -> FsResult<Option<Entry>> {
        let Some(st) = self.state.inode(ino) else {
            return Ok(None);
        };
        let settling = st.lock().expect("inode state").settling.clone();
        let _one_at_a_time = settling.lock().await;
        {
            let g = st.lock().expect("inode state");
            // With attributes held too, the settle sends both and the change goes after.
            if !g.owes_only_held() || g.held_attr.is_some() || !g.held.as_ref().is_some_and(|h| h.cred == *cred) {
                return Ok(None);
            }
        }
        // Only this function and `settle` take held writes, both under the settling lock.
        let Some((h, _, layout)) = Self::take_held(&st) else {
            return Ok(None);
        };
        self.send_held_with(&st, ino, h, s, layout, false).await
    }

    /// Let every write-behind write of `ino` land (and send the writes held for a small file),
    /// then send the size and times update they owe. Returns (once) the failure of a write
    /// that was already acknowledged to the kernel.
    async fn settle(&self, ino: InodeId) -> FsResult<()> {
        self.settle_with(ino, false).await
    }

    /// [`Ctx::settle`], sending held writes durably with `stable` (for a commit).
    async fn settle_with(&self, ino: InodeId, stable: bool) -> FsResult<()> {
        let Some(st) = self.state.inode(ino) else { return Ok(()) };
        let settling = st.lock().expect("inode state").settling.clone();
        let _one_at_a_time = settling.lock().await;
        {
            let g = st.lock().expect("inode state");
            if g.owes_only_held() && g.held.is_none() {
                return Ok(());
            }
        }
        Self::wait_writes(&st, None, false).await;
        match Self::take_held(&st) {
            Some((h, Some(set), layout)) => {
                self.send_held_with_attrs(&st, ino, h, set, layout, stable).await?;
            }
            Some((h, None, layout)) => {
                let mode = held_mode(layout, stable);
                self.send_held(&st, ino, &h.cred, h.offset, Bytes::from(h.data), mode)
                    .await?;
            }
            None => {}
        }
        // `pending` stays set until the nodes have the new size, so that attributes this mount
        // hands the kernel meanwhile (lookup, getattr) never show it a smaller file.
        let (failed, pending) = {
            let mut g = st.lock().expect("inode state");
            (g.failed.take(), g.pending.clone())
        };
        if let Some((end, cred)) = pending {
            let t = self.attrs.ticket();
            let mut stamp = DirtyChunks::default();
            let r = self.client.extend_size(&cred, ino, end, false, &mut stamp).await;
            self.changed(t, ino, &r);
            match r {
                Ok(e) => {
                    self.saw(&e.attr);
                    let mut g = st.lock().expect("inode state");
                    g.dirty.merge(stamp);
                    if g.pending.as_ref().is_some_and(|(p, _)| *p <= end) {
                        g.pending = None;
                    }
                }
                Err(e) => {
                    let mut g = st.lock().expect("inode state");
                    if !e.is_retryable() {
                        g.pending = None;
                    }
                    if let Some(f) = failed {
                        g.failed.get_or_insert(f);
                    }
                    return Err(e);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Write-behind: queue a write to the chunks of an open chunked file and return at once.
    /// The kernel sees it done; the data is in this process until the nodes take it (bounded by
    /// the mount's write window), overlapping writes keep their order, and a failure is reported
    /// by the next write, flush or fsync. Durability is unchanged: as before, only fsync and
    /// close promise it, and both wait for these writes first.
    async fn write_behind(
        &self,
        st: Arc<Mutex<OpenInode>>,
        cred: Credentials,
        ino: InodeId,
        offset: u64,
        data: Bytes,
        chunk_size: u32,
    ) -> FsResult<()> {
        let end = sealfs_client::write_end(offset, data.len())?;
        if let Some(e) = st.lock().expect("inode state").failed.clone() {
            return Err(e);
        }
        let units = data.len().div_ceil(WINDOW_UNIT) as u32;
        let permit = self
            .state
            .window
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(|_| FsError::Io("the write window is closed".into()))?;
        Self::wait_writes(&st, Some((offset, end)), true).await;
        owe_size(&mut st.lock().expect("inode state"), end, cred);
        tokio::spawn(self.clone().land(st, ino, offset, end, data, chunk_size, permit));
        Ok(())
    }

    /// Send a queued write-behind write (registered in flight, its window room held) to the
    /// chunks, and record how it ended.
    #[allow(clippy::too_many_arguments)]
    async fn land(
        self,
        st: Arc<Mutex<OpenInode>>,
        ino: InodeId,
        offset: u64,
        end: u64,
        data: Bytes,
        chunk_size: u32,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let mut dirty = DirtyChunks::default();
        let r = self
            .client
            .write_chunks(ino, offset, data, chunk_size, false, &mut dirty)
            .await;
        let settled = {
            let mut g = st.lock().expect("inode state");
            g.landed((offset, end));
            match r {
                Ok(()) => g.dirty.merge(dirty),
                Err(e) => {
                    warn!(ino, offset, "a write-behind write failed: {e}");
                    g.failed.get_or_insert(e);
                }
            }
            g.settled.clone()
        };
        drop(permit);
        settled.notify_waiters();
    }

    /// Move an open file out of the way of an unlink: it lives on under a hidden name in the
    /// same directory until its last handle here is released. Returns false when `name` is not
    /// a file open in this mount.
    async fn hide_if_open(&self, cred: &Credentials, parent: InodeId, name: &[u8]) -> FsResult<bool> {
        if self.state.inodes.is_empty() {
            return Ok(false);
        }
        let e = match self.client.lookup(cred, parent, name).await {
            Ok(e) => e,
            Err(FsError::NotFound) => return Ok(false),
            Err(e) => return Err(e),
        };
        if e.attr.kind == FileKind::Directory || !self.state.is_open(e.attr.ino) {
            return Ok(false);
        }
        let Some(st) = self.state.inode(e.attr.ino) else {
            return Ok(false);
        };
        if e.attr.nlink > 1 {
            // Other names keep the inode alive: a plain unlink is right.
            return Ok(false);
        }
        let hidden = hidden_name(e.attr.ino);
        let t = self.attrs.ticket();
        let r = self.client.rename(cred, parent, name, parent, &hidden, 1).await;
        self.names_changed(t, parent, parent, &r);
        self.names.touched(parent, &hidden);
        self.names.removal_ended(parent, name, r.is_ok());
        r?;
        st.lock().expect("inode state").hidden = Some((parent, hidden));
        Ok(true)
    }

    async fn fill_dir(
        &self,
        cred: &Credentials,
        ino: InodeId,
        fh: u64,
        offset: u64,
        plus: bool,
    ) -> FsResult<(Vec<DirEntry>, Option<Entry>)> {
        let stream = self.state.dirs.get(&fh).map(|d| d.clone()).ok_or(FsError::BadFd)?;
        let mut s = stream.lock().await;
        // Cookies grow along a listing: drop what the kernel already has.
        while s.buf.front().is_some_and(|e| e.cookie <= offset) {
            let e = s.buf.pop_front().expect("front exists");
            s.after = e.cookie;
        }
        if s.after != offset.max(2) || s.plus != plus || (s.buf.is_empty() && !s.eof) {
            let from = if offset < 3 { 0 } else { offset };
            let (entries, eof) = self.client.readdir(cred, ino, from, DIR_PAGE, plus).await?;
            s.buf = entries
                .into_iter()
                .filter(|e| !e.name.starts_with(HIDDEN_PREFIX))
                .collect();
            s.eof = eof;
            s.after = offset.max(2);
            s.plus = plus;
        }
        let dir = if offset < 2 {
            Some(self.client.getattr(cred, ino).await?)
        } else {
            None
        };
        Ok((s.buf.iter().cloned().collect(), dir))
    }
}

/// A mode with a set-id bit that a write by an unprivileged caller clears.
fn has_set_id(perm: u32) -> bool {
    perm & libc::S_ISUID != 0 || (perm & libc::S_ISGID != 0 && perm & libc::S_IXGRP != 0)
}

fn generation_of(a: &FileAttr) -> Generation {
    Generation(a.generation)
}

impl fuser::Filesystem for SealFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO_SIZE as u32);
        let _ = config.set_max_readahead(MAX_IO_SIZE as u32);
        let _ = config.set_max_background(64);
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_ASYNC_READ
            // The mount clears set-id bits on writes itself (see `write`), so the kernel stops
            // asking it for security.capability before every write.
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        let _ = config.add_capabilities(wanted & config.capabilities());
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_bytes(name);
        let cred = creds(req);
        if self.names.answers_absent(&self.attrs, &cred, parent.0, &name) {
            // A folder this mount made, the caller may search it, and no process made this
            // name in it.
            return reply.error(Errno::ENOENT);
        }
        self.spawn(
            reply,
            move |cx| async move {
                let t = cx.attrs.ticket();
                let e = cx.client.lookup(&cred, parent.0, &name).await?;
                cx.attrs.offer(t, &e.attr);
                Ok((e, cx))
            },
            |r, (e, cx)| cx.entry(r, e),
        );
    }

    /// The kernel evicted the inode (it sends FORGET then, with all its lookups), and its page
    /// cache with it: the data version kept for close-to-open has nothing left to keep, so
    /// memory stays bounded by what the kernel caches, not by how many files were ever seen.
    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        if !self.state.is_open(ino.0) {
            self.state.versions.remove(&ino.0);
        }
        self.attrs.forget(ino.0);
        self.names.forget(ino.0);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some((a, left)) = self.attrs.get(ino.0) {
            // Answered here, on the thread that read the request: no task, no round trip.
            return reply.attr(&left, &fuse_attr(&self.state.visible(a)));
        }
        let cred = creds(req);
        self.spawn(
            reply,
            move |cx| async move {
                let t = cx.attrs.ticket();
                let e = cx.client.getattr(&cred, ino.0).await?;
                cx.attrs.offer(t, &e.attr);
                Ok((cx.state.visible(e.attr), cx.ttl.get()))
            },
            |r, (a, ttl)| r.attr(&ttl, &fuse_attr(&a)),
        );
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let cred = creds(req);
        let via_open_handle = fh.is_some_and(|fh| {
            self.state
                .files
                .get(&fh.0)
                .is_some_and(|h| h.flags & libc::O_ACCMODE != libc::O_RDONLY)
        });
        let s = SetAttr {
            perm: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: time_update(atime),
            mtime: time_update(mtime),
            via_open_handle,
        };
        if let Some(a) = self.hold_setattr(&cred, ino.0, &s) {
            // Held with the file's held writes: no round trip now.
            return reply.attr(&self.ttl.get(), &fuse_attr(&a));
        }
        self.spawn(
            reply,
            move |cx| async move {
                if s.size.is_some() {
                    // Unstable writes below the cut must not land after it.
                    cx.commit(ino.0).await?;
                } else if let Some(e) = cx.setattr_with_held(&cred, ino.0, &s).await? {
                    return Ok((cx.state.visible(e.attr), cx.ttl.get()));
                } else {
                    // The owed size update must not undo a mode change (set-id bits).
                    cx.settle(ino.0).await?;
                }
                // A file with writes not yet durable (they will be at its next fsync or close):
                // the change is made durable with them rather than synced on its own.
                let with_writes = s.size.is_none()
                    && cx
                        .state
                        .inode(ino.0)
                        .is_some_and(|st| !st.lock().expect("inode state").dirty.is_empty());
                let t = cx.attrs.ticket();
                let mut stamp = DirtyChunks::default();
                let r = if with_writes {
                    cx.client.setattr_with_writes(&cred, ino.0, &s, &mut stamp).await
                } else {
                    cx.client.setattr(&cred, ino.0, &s).await
                };
                cx.changed(t, ino.0, &r);
                let e = r?;
                cx.owe(ino.0, stamp).await?;
                if s.size.is_some() {
                    if let Some(st) = cx.state.inode(ino.0) {
                        st.lock().expect("inode state").layout = Some(e.layout);
                    }
                    cx.saw(&e.attr);
                    // A store of bytes past the new end would grow the kernel's file again.
                    cx.state.fence_stores(ino.0).await;
                }
                Ok((cx.state.visible(e.attr), cx.ttl.get()))
            },
            |r, (a, ttl)| r.attr(&ttl, &fuse_attr(&a)),
        );
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let cred = creds(req);
        self.spawn(
            reply,
            move |cx| async move { cx.client.readlink(&cred, ino.0).await },
            |r, t| r.data(&t),
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let cred = creds(req);
        let name = name_bytes(name);
        let Some(kind) = FileKind::from_mode(mode) else {
            return reply.error(Errno::EINVAL);
        };
        if kind == FileKind::Directory || kind == FileKind::Symlink {
            return reply.error(Errno::EINVAL);
        }
        self.spawn(
            reply,
            move |cx| async move {
                let t = cx.attrs.ticket();
                let r = cx
                    .client
                    .create(&cred, parent.0, &name, kind, mode & 0o7777, u64::from(rdev), true, 0)
                    .await;
                let e = cx.created(t, parent.0, &name, r, true)?;
                Ok((e, cx))
            },
            |r, (e, cx)| cx.entry(r, e),
        );
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let cred = creds(req);
        let name = name_bytes(name);
        self.spawn(
            reply,
            move |cx| async move {
                let t = cx.attrs.ticket();
                let r = cx.client.mkdir(&cred, parent.0, &name, mode & 0o7777).await;
                if let Ok(e) = &r {
                    cx.names.made_at(&cx.attrs, t, e.attr.ino);
                }
                let e = cx.created(t, parent.0, &name, r, true)?;
                Ok((e, cx))
            },
            |r, (e, cx)| cx.entry(r, e),
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let cred = creds(req);
        let name = name_bytes(name);
        self.spawn(
            reply,
            move |cx| async move {
                if !cx.hide_if_open(&cred, parent.0, &name).await? {
                    let t = cx.attrs.ticket();
                    let r = cx.client.unlink(&cred, parent.0, &name).await;
                    cx.names_changed(t, parent.0, parent.0, &r);
                    cx.names.removal_ended(parent.0, &name, r.is_ok());
                    r?;
                }
                Ok(())
            },
            |r, ()| r.ok(),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let cred = creds(req);
        let name = name_bytes(name);
        self.spawn(
            reply,
            move |cx| async move {
                let t = cx.attrs.ticket();
                let r = cx.client.rmdir(&cred, parent.0, &name).await;
                cx.names_changed(t, parent.0, parent.0, &r);
                cx.names.removal_ended(parent.0, &name, r.is_ok());
                if let Ok(c) = &r {
                    c.touched.iter().for_each(|d| cx.names.forget(*d));
                }
                r
            },
            |r, _| r.ok(),
        );
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let cred = creds(req);
        let name = name_bytes(link_name);
        let target = target.as_os_str().as_bytes().to_vec();
        self.spawn(
            reply,
            move |cx| async move {
                let t = cx.attrs.ticket();
                let r = cx.client.symlink(&cred, parent.0, &name, &target).await;
                Ok((cx.created(t, parent.0, &name, r, true)?, cx))
            },
            |r, (e, cx)| cx.entry(r, e),
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let cred = creds(req);
        let name = name_bytes(name);
        let newname = name_bytes(newname);
        let flags = flags.bits() & (libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE);
        self.spawn(
            reply,
            move |cx| async move {
                if flags == 0 {
                    // The target is about to be unlinked by the rename: keep it alive if open here.
                    cx.hide_if_open(&cred, newparent.0, &newname).await?;
                }
                let wire_flags = u32::from(flags & libc::RENAME_NOREPLACE != 0)
                    | (u32::from(flags & libc::RENAME_EXCHANGE != 0) << 1);
                let t = cx.attrs.ticket();
                let r = cx
                    .client
                    .rename(&cred, parent.0, &name, newparent.0, &newname, wire_flags)
                    .await;
                cx.names_changed(t, parent.0, newparent.0, &r);
                cx.names.touched(newparent.0, &newname);
                // An exchange leaves a name at the source too.
                cx.names
                    .removal_ended(parent.0, &name, r.is_ok() && flags & libc::RENAME_EXCHANGE == 0);
                r
            },
            |r, _| r.ok(),
        );
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let cred = creds(req);
        let name = name_bytes(newname);
        self.spawn(
            reply,
            move |cx| async move {
                cx.settle_attrs(ino.0).await?;
                let t = cx.attrs.ticket();
                let r = cx.client.link(&cred, ino.0, newparent.0, &name).await;
                if r.is_err() {
                    cx.attrs.changed(t, ino.0, None);
                }
                Ok((cx.created(t, newparent.0, &name, r, false)?, cx))
            },
            |r, (e, cx)| cx.entry(r, e),
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let cred = creds(req);
        let flags = flags.0;
        self.spawn(
            reply,
            move |cx| async move {
                cx.settle_attrs(ino.0).await?;
                let t = cx.attrs.ticket();
                let (e, data) = cx.client.open_inline(&cred, ino.0, flags).await?;
                cx.attrs.offer(t, &e.attr);
                // Close-to-open: keep the page cache only if the file is as this mount last saw it.
                let keep = cx
                    .state
                    .versions
                    .get(&ino.0)
                    .is_some_and(|v| *v == (e.attr.mtime, e.attr.size));
                cx.saw(&e.attr);
                // The data is kept only if no change of the file ended while it was read.
                let fh = cx
                    .state
                    .open_file_with(ino.0, flags, e.layout, data, || cx.attrs.unchanged_since(t, ino.0));
                // Read-around data fetched before this open must not reach the kernel after it
                // drops its pages (a changed file), nor after a writer opened.
                cx.state.fence_stores(ino.0).await;
                Ok((fh, keep))
            },
            move |r, (fh, keep)| {
                let mut open = FopenFlags::empty();
                if keep {
                    open |= FopenFlags::FOPEN_KEEP_CACHE;
                }
                // A read-only descriptor has nothing of its own to land at close, and this mount
                // takes no POSIX locks (the kernel keeps them): its close needs no FLUSH round
                // trip. Writes held through other descriptors land at theirs.
                if flags & libc::O_ACCMODE == libc::O_RDONLY {
                    open |= FopenFlags::FOPEN_NOFLUSH;
                }
                r.opened(FileHandle(fh), open)
            },
        );
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let cred = creds(req);
        let around = u64::from(size) < self.around.block && flags.0 & libc::O_DIRECT == 0;
        self.spawn(
            reply,
            move |cx| async move {
                let Some(st) = cx.state.inode(ino.0) else {
                    return cx.client.read(&cred, ino.0, offset, size).await;
                };
                // Reads see this mount's own writes: let write-behind land first.
                cx.settle(ino.0).await?;
                let (layout, inline, writers) = {
                    let g = st.lock().expect("inode state");
                    (g.layout, g.inline.as_ref().map(|k| k.data.clone()), g.writers)
                };
                if let (Some(l), Some(data)) = (layout, inline) {
                    if l.inline {
                        // A small file read whole at open, unchanged by this mount since.
                        let start = offset.min(data.len() as u64) as usize;
                        let end = offset.saturating_add(u64::from(size)).min(data.len() as u64) as usize;
                        return Ok(data.slice(start..end));
                    }
                }
                let known_size = cx.state.versions.get(&ino.0).map(|v| v.1);
                let end = offset.saturating_add(u64::from(size));
                match (layout, known_size) {
                    // Open here with a known layout, and the range within the size this mount
                    // knows (close-to-open): straight to the chunks, no round trip to the inode.
                    (Some(l), Some(known)) if !l.inline && end <= known => {
                        // With a handle that may write open, nothing read around could be kept.
                        if around && writers == 0 && known <= cx.around.max_file {
                            return cx.read_around(&cred, &st, ino, offset, end, l.chunk_size).await;
                        }
                        cx.client.read_chunks(ino.0, offset, end, l.chunk_size).await
                    }
                    _ => cx.client.read(&cred, ino.0, offset, size).await,
                }
            },
            |r, d| r.data(&d),
        );
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let cred = creds(req);
        // A writer without CAP_FSETID clears the file's set-id bits (FUSE_HANDLE_KILLPRIV_V2):
        // done before the write, when the file may have any.
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) && self.may_have_set_id(ino.0);
        let data = if kill {
            Bytes::copy_from_slice(data)
        } else {
            match self.try_write_behind(&cred, ino.0, offset, data) {
                Ok(len) => return reply.written(len),
                Err(data) => data,
            }
        };
        self.spawn(
            reply,
            move |cx| async move {
                let len = data.len() as u32;
                let st = cx.state.inode(ino.0);
                let known = st.as_ref().and_then(|s| s.lock().expect("inode state").layout);
                if let (Some(st), Some(layout)) = (&st, known) {
                    if !layout.inline && !data.is_empty() {
                        if kill {
                            cx.kill_set_id(&cred, st, ino.0).await?;
                        }
                        cx.write_behind(st.clone(), cred, ino.0, offset, data, layout.chunk_size)
                            .await?;
                        return Ok(len);
                    }
                }
                // Written through below: the node clears set-id bits of a write by non-root.
                // An inline (small) file, or one not open here: written through, as one call.
                cx.settle(ino.0).await?;
                cx.write_through(st.as_ref(), &cred, ino.0, offset, data, unstable(known))
                    .await?;
                if kill {
                    cx.drop_kernel_attrs(ino.0);
                }
                Ok(len)
            },
            |r, n| r.written(n),
        );
    }

    fn flush(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        if self.state.quiet(ino.0) {
            return reply.ok();
        }
        self.spawn(reply, move |cx| async move { cx.commit(ino.0).await }, |r, ()| r.ok());
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if self.state.quiet(ino.0) {
            // Nothing to land first: only a hidden name (or a change noted since) may need the
            // nodes.
            match self.state.release_file(fh.0) {
                Some(rel) if rel.hidden.is_some() || !rel.owed.is_empty() => self.spawn(
                    reply,
                    move |cx| async move {
                        cx.released(rel).await;
                        Ok(())
                    },
                    |r, ()| r.ok(),
                ),
                _ => reply.ok(),
            }
            return;
        }
        self.spawn(
            reply,
            move |cx| async move {
                // Writes after the last flush (mmap writeback) land and are committed before the
                // inode's state goes; a failure here has nobody left to report to but the log.
                if let Err(e) = cx.commit(ino.0).await {
                    warn!(ino = ino.0, "writes at release failed: {e}");
                }
                if let Some(rel) = cx.state.release_file(fh.0) {
                    cx.released(rel).await;
                }
                Ok(())
            },
            |r, ()| r.ok(),
        );
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.spawn(
            reply,
            // Every other change of an inode was durable before its reply: the commit (chunks,
            // then the size it owes, synced on every replica) is all an fsync has left to do.
            move |cx| async move { cx.commit(ino.0).await },
            |r, ()| r.ok(),
        );
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let cred = creds(req);
        self.spawn(
            reply,
            move |cx| async move {
                // Opening a directory needs read permission, as open(2) checks.
                cx.client.open(&cred, ino.0, libc::O_RDONLY | libc::O_DIRECTORY).await?;
                let fh = cx.state.new_fh();
                cx.state
                    .dirs
                    .insert(fh, Arc::new(tokio::sync::Mutex::new(DirStream::default())));
                Ok(fh)
            },
            |r, fh| r.opened(FileHandle(fh), FopenFlags::empty()),
        );
    }

    fn readdir(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, reply: ReplyDirectory) {
        let cred = creds(req);
        self.spawn(
            reply,
            move |cx| async move { cx.fill_dir(&cred, ino.0, fh.0, offset, false).await },
            move |mut r, (entries, dir)| {
                if offset < 1 && r.add(ino, 1, FileType::Directory, ".") {
                    return r.ok();
                }
                if offset < 2 {
                    let up = dir
                        .map(|d| if d.parent != 0 { d.parent } else { ino.0 })
                        .unwrap_or(ino.0);
                    if r.add(INodeNo(up), 2, FileType::Directory, "..") {
                        return r.ok();
                    }
                }
                for e in entries {
                    if r.add(INodeNo(e.ino), e.cookie, file_type(e.kind), OsStr::from_bytes(&e.name)) {
                        break;
                    }
                }
                r.ok()
            },
        );
    }

    fn readdirplus(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, reply: ReplyDirectoryPlus) {
        let cred = creds(req);
        self.spawn(
            reply,
            move |cx| async move {
                let (mut entries, dir) = cx.fill_dir(&cred, ino.0, fh.0, offset, true).await?;
                // Files open here as this mount shows them (writes and changes it holds).
                for a in entries.iter_mut().filter_map(|e| e.attr.as_mut()) {
                    *a = cx.state.visible(a.clone());
                }
                Ok(((entries, dir), cx.ttl.get()))
            },
            move |mut r, ((entries, dir), ttl)| {
                if let Some(d) = &dir {
                    let a = fuse_attr(&d.attr);
                    if offset < 1 && r.add(ino, 1, ".", &ttl, &a, generation_of(&d.attr)) {
                        return r.ok();
                    }
                    if offset < 2
                        && r.add(
                            INodeNo(if d.parent != 0 { d.parent } else { ino.0 }),
                            2,
                            "..",
                            &Duration::ZERO,
                            &a,
                            Generation(0),
                        )
                    {
                        return r.ok();
                    }
                }
                for e in entries {
                    let Some(a) = &e.attr else { continue };
                    if r.add(
                        INodeNo(e.ino),
                        e.cookie,
                        OsStr::from_bytes(&e.name),
                        &ttl,
                        &fuse_attr(a),
                        generation_of(a),
                    ) {
                        break;
                    }
                }
                r.ok()
            },
        );
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.state.dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Directory changes are durable before they are acknowledged.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(
            reply,
            move |cx| async move { cx.client.statfs().await },
            |r, s| {
                let bsize = 4096u64;
                // Inodes are not preallocated: report what is used plus what the free space
                // could hold at one block per file.
                let free_blocks = s.free_bytes / bsize;
                r.statfs(
                    s.total_bytes / bsize,
                    free_blocks,
                    free_blocks,
                    s.inodes + free_blocks,
                    free_blocks,
                    bsize as u32,
                    255,
                    bsize as u32,
                )
            },
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let cred = creds(req);
        let name = name_bytes(name);
        let value = value.to_vec();
        let flags = (flags as u32) & 3;
        self.spawn(
            reply,
            move |cx| async move {
                cx.settle_attrs(ino.0).await?;
                let t = cx.attrs.ticket();
                let r = cx.client.setxattr(&cred, ino.0, &name, &value, flags).await;
                cx.attrs.changed(t, ino.0, None);
                r
            },
            |r, ()| r.ok(),
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let caps = name.as_bytes() == CAPS_XATTR;
        if caps && self.attrs.caps_absent(ino.0) {
            // Asked before every write: answered here while nothing changed the file.
            return reply.error(Errno::from_i32(libc::ENODATA));
        }
        let cred = creds(req);
        let name = name_bytes(name);
        self.spawn(
            reply,
            move |cx| async move {
                cx.settle_attrs(ino.0).await?;
                let t = cx.attrs.ticket();
                let r = cx.client.getxattr(&cred, ino.0, &name).await;
                if caps && matches!(r, Err(FsError::NoData)) {
                    cx.attrs.offer_no_caps(t, ino.0);
                }
                r
            },
            move |r, v| xattr_reply(r, size, &v),
        );
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let cred = creds(req);
        self.spawn(
            reply,
            move |cx| async move {
                cx.settle_attrs(ino.0).await?;
                cx.client.listxattr(&cred, ino.0).await
            },
            move |r, names| {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                xattr_reply(r, size, &buf)
            },
        );
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        // The kernel lets only callers with CAP_SETFCAP remove file capabilities, except when
        // it drops them itself because an unprivileged process writes the file, in that
        // process's name: it vouched for this call either way, and the nodes, which allow
        // root alone to change security.*, would fail that write.
        let cred = if name == CAPS_XATTR {
            Credentials::root()
        } else {
            creds(req)
        };
        self.spawn(
            reply,
            move |cx| async move {
                cx.settle_attrs(ino.0).await?;
                let t = cx.attrs.ticket();
                let r = cx.client.removexattr(&cred, ino.0, &name).await;
                cx.attrs.changed(t, ino.0, None);
                r
            },
            |r, ()| r.ok(),
        );
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let cred = creds(req);
        let mask = mask.bits() as u32;
        self.spawn(
            reply,
            move |cx| async move {
                cx.settle_attrs(ino.0).await?;
                cx.client.access(&cred, ino.0, mask).await
            },
            |r, ()| r.ok(),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let cred = creds(req);
        let name = name_bytes(name);
        let exclusive = flags & libc::O_EXCL != 0;
        self.spawn(
            reply,
            move |cx| async move {
                let t = cx.attrs.ticket();
                let r = cx
                    .client
                    .create(
                        &cred,
                        parent.0,
                        &name,
                        FileKind::Regular,
                        mode & 0o7777,
                        0,
                        exclusive,
                        flags,
                    )
                    .await;
                let mut e = cx.created(t, parent.0, &name, r, exclusive)?;
                if !exclusive && flags & libc::O_TRUNC != 0 && e.attr.size > 0 {
                    // An existing file opened with O_TRUNC.
                    let s = SetAttr {
                        size: Some(0),
                        via_open_handle: true,
                        ..Default::default()
                    };
                    let t = cx.attrs.ticket();
                    let r = cx.client.setattr(&cred, e.attr.ino, &s).await;
                    cx.changed(t, e.attr.ino, &r);
                    e = r?;
                }
                cx.saw(&e.attr);
                let fh = cx.state.open_file(e.attr.ino, flags, e.layout);
                cx.state.fence_stores(e.attr.ino).await;
                Ok((e, fh, cx.ttl.get()))
            },
            |r, (e, fh, ttl)| {
                r.created(
                    &ttl,
                    &fuse_attr(&e.attr),
                    generation_of(&e.attr),
                    FileHandle(fh),
                    FopenFlags::empty(),
                )
            },
        );
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let cred = creds(req);
        if mode != 0 {
            // Punching holes, zeroing ranges and keep-size preallocation are not supported.
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        }
        self.spawn(
            reply,
            move |cx| async move {
                let end = offset
                    .checked_add(length)
                    .filter(|e| *e <= MAX_FILE_SIZE)
                    .ok_or(FsError::FileTooBig)?;
                cx.settle(ino.0).await?;
                let cur = cx.client.getattr(&cred, ino.0).await?;
                if end > cur.attr.size {
                    let s = SetAttr {
                        size: Some(end),
                        via_open_handle: true,
                        ..Default::default()
                    };
                    let t = cx.attrs.ticket();
                    let r = cx.client.setattr(&cred, ino.0, &s).await;
                    cx.changed(t, ino.0, &r);
                    let e = r?;
                    if let Some(st) = cx.state.inode(ino.0) {
                        st.lock().expect("inode state").layout = Some(e.layout);
                    }
                    cx.saw(&e.attr);
                }
                Ok(())
            },
            |r, ()| r.ok(),
        );
    }
}

fn xattr_reply(r: ReplyXattr, size: u32, v: &[u8]) {
    if size == 0 {
        r.size(v.len() as u32)
    } else if v.len() > size as usize {
        r.error(Errno::from_i32(libc::ERANGE))
    } else {
        r.data(v)
    }
}
