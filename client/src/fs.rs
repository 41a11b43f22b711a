//! `SealClient`: file-system operations over the cluster. Frontends call these and nothing else;
//! permission and POSIX rules are enforced by the node that owns the inode, from the credentials
//! each call carries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use futures::future::try_join_all;
use sealfs_core::attr::{FileAttr, FileKind, SetAttr, TimeUpdate};
use sealfs_core::config::{ClientConfig, INLINE_MAX, MAX_FILE_SIZE, MAX_IO_SIZE};
use sealfs_core::{Credentials, FsError, FsResult, InodeId, PartitionId};
use sealfs_proto::{attach, attr_to_pb, ctx, pb, required_attr, time_to_pb};

use crate::batch::{write_one, Gatherer, GATHER_MAX};
use crate::router::Router;

/// Where a file's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Data is stored in the inode record.
    pub inline: bool,
    /// Chunk size of the file's data.
    pub chunk_size: u32,
}

/// An inode's attributes and data layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub attr: FileAttr,
    pub layout: Layout,
    /// Directories: the parent directory (0 when unknown).
    pub parent: InodeId,
    /// Create, mkdir, symlink, link: how the parent directory changed, when the node saw it.
    pub dir: Option<DirChange>,
}

/// A directory's attributes just before and just after one change to it, read atomically
/// with the change (what NFSv3 calls weak cache consistency data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirChange {
    /// The directory as it was just before the change.
    pub before: FileAttr,
    /// The directory as the change left it.
    pub after: FileAttr,
}

/// What unlink, rmdir and rename changed: the (source) parent and, for a rename into another
/// directory, the target parent. None where the node could not tell atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// The (source) parent directory.
    pub dir: Option<DirChange>,
    /// A rename's target directory, when it is another one.
    pub new_dir: Option<DirChange>,
    /// Other inodes whose attributes changed (the unlinked, renamed or replaced one). Empty
    /// from a node that does not say: then any inode may have changed.
    pub touched: Vec<InodeId>,
}

/// How a write is done.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteMode {
    /// Durable before the call returns; otherwise the write (chunk data, or the inode's change)
    /// is added to the caller's `DirtyChunks` for a later [`SealClient::commit`].
    pub stable: bool,
    /// Check write permission on every call (stateless callers such as NFS); FUSE checked it at
    /// open.
    pub check_perm: bool,
    /// The file's data layout, when the caller knows it: saves a round trip per write.
    pub known: Option<Layout>,
}

/// One directory entry of a listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: InodeId,
    pub kind: FileKind,
    /// Resume a listing after this entry with this cookie (stable across concurrent changes).
    pub cookie: u64,
    /// Filled by readdir-plus.
    pub attr: Option<FileAttr>,
}

/// Metadata changes other processes made, as one node sends them ([`SealClient::watch`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Inodes whose attributes changed, or that are gone.
    pub inodes: Vec<InodeId>,
    /// Directory entries added, removed or replaced: (parent, name).
    pub entries: Vec<(InodeId, Bytes)>,
    /// Changes were dropped (this client fell behind): anything cached may be stale.
    pub reset: bool,
}

/// A live stream of one node's changes.
pub struct ChangeStream(tonic::Streaming<pb::WatchEvents>);

impl ChangeStream {
    /// The next batch; None when the node ended the stream.
    pub async fn next(&mut self) -> FsResult<Option<Changes>> {
        match self.0.message().await {
            Ok(Some(m)) => Ok(Some(Changes {
                inodes: m.inodes,
                entries: m.entries.into_iter().map(|e| (e.parent, e.name)).collect(),
                reset: m.reset,
            })),
            Ok(None) => Ok(None),
            Err(s) => Err(sealfs_proto::error_from_status(&s)),
        }
    }
}

/// Cluster capacity.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatFs {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub inodes: u64,
}

/// The end of a write of `len` bytes at `offset`, or EFBIG past the largest file size.
pub fn write_end(offset: u64, len: usize) -> FsResult<u64> {
    offset
        .checked_add(len as u64)
        .filter(|e| *e <= MAX_FILE_SIZE)
        .ok_or(FsError::FileTooBig)
}

/// `[offset, end)` of a file cut at its chunk boundaries: (chunk index, offset in the chunk,
/// length) per piece. `chunk_size` is not 0.
fn chunk_pieces(offset: u64, end: u64, chunk_size: u32) -> Vec<(u64, u32, u32)> {
    let cs = u64::from(chunk_size);
    let mut pieces = Vec::new();
    let mut pos = offset;
    while pos < end {
        let in_off = pos % cs;
        let len = (cs - in_off).min(end - pos);
        pieces.push((pos / cs, in_off as u32, len as u32));
        pos += len;
    }
    pieces
}

/// Join chunk pieces (data, wanted length) into the first `total` bytes they cover. A short
/// piece is a hole read as zeros when `holes`; otherwise a short piece gives None.
fn assemble(parts: &[(Bytes, u32)], total: u64, holes: bool) -> Option<Bytes> {
    if !holes && parts.iter().any(|(d, len)| d.len() < *len as usize) {
        // Only the pieces inside `total` matter: a short last piece beyond it is fine.
        let mut covered = 0u64;
        for (d, len) in parts {
            let need = u64::from(*len).min(total.saturating_sub(covered));
            if (d.len() as u64) < need {
                return None;
            }
            covered += u64::from(*len);
        }
    }
    if parts.len() == 1 && parts[0].0.len() as u64 >= total {
        return Some(parts[0].0.slice(..total as usize));
    }
    let mut out = BytesMut::with_capacity(total as usize);
    for (data, len) in parts {
        let n = data.len().min(*len as usize);
        out.extend_from_slice(&data[..n]);
        // A short chunk is a hole: zeros up to the file size.
        out.resize(out.len() + (*len as usize - n), 0);
    }
    out.truncate(total as usize);
    Some(out.freeze())
}

/// How many chunked files' layouts a client remembers (a few MiB at most).
const LAYOUT_CACHE_MAX: usize = 100_000;

/// Chunks written without being made durable yet, per partition, with what the partition's
/// primary answered: its write verifier and map epoch. A commit hands them back, so the node that
/// commits can tell whether those writes can still be on disk (it took them itself, or it was an
/// in-sync replica since before they were made); if not, the commit fails instead of claiming
/// durability for data that may be lost.
#[derive(Debug, Default, Clone)]
pub struct DirtyChunks {
    parts: HashMap<PartitionId, DirtyPart>,
    /// The file's size and times are owed, or the inode was changed without a sync, since the
    /// last commit.
    size_dirty: bool,
    /// What the inode's node answered the first unsynced size change with (its verifier, the
    /// earliest epoch), for the sync to check, as chunks' commits do.
    size_stamp: Option<(u64, u64)>,
}

#[derive(Debug, Clone)]
struct DirtyPart {
    verifier: u64,
    epoch: u64,
    chunks: Vec<(InodeId, u64)>,
}

impl DirtyChunks {
    /// Nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty() && !self.size_dirty
    }

    /// How many chunks hold unstable writes.
    pub fn chunks(&self) -> usize {
        self.parts.values().map(|d| d.chunks.len()).sum()
    }

    fn add(&mut self, p: PartitionId, verifier: u64, epoch: u64, ino: InodeId, index: u64) {
        let e = self.parts.entry(p).or_insert(DirtyPart {
            verifier,
            epoch,
            chunks: Vec::new(),
        });
        e.epoch = e.epoch.min(epoch);
        if !e.chunks.contains(&(ino, index)) {
            e.chunks.push((ino, index));
        }
    }

    /// Merge another set into this one.
    pub fn merge(&mut self, other: DirtyChunks) {
        for (p, d) in other.parts {
            for (ino, idx) in d.chunks {
                self.add(p, d.verifier, d.epoch, ino, idx);
            }
        }
        self.size_dirty |= other.size_dirty;
        if let Some((v, e)) = other.size_stamp {
            self.stamp_size(v, e);
        }
    }

    /// Record an unsynced change of the inode (its size and times, or another attribute) the
    /// inode's node answered with `verifier` at `epoch`.
    fn stamp_size(&mut self, verifier: u64, epoch: u64) {
        self.size_dirty = true;
        let s = self.size_stamp.get_or_insert((verifier, epoch));
        s.1 = s.1.min(epoch);
    }
}

fn layout_of(a: &pb::Attr) -> Layout {
    Layout {
        inline: a.inline,
        chunk_size: a.chunk_size.max(1),
    }
}

fn entry_of(a: Option<&pb::Attr>) -> FsResult<Entry> {
    let attr = required_attr(a)?;
    let a = a.expect("checked by required_attr");
    Ok(Entry {
        attr,
        layout: layout_of(a),
        parent: a.parent,
        dir: None,
    })
}

/// An entry with its parent's change, from a create-like reply.
fn created_entry(r: &pb::EntryReply) -> FsResult<Entry> {
    let mut e = entry_of(r.attr.as_ref())?;
    e.dir = dir_change_of(r.dir.as_ref());
    Ok(e)
}

/// A wire `DirChange`; malformed ones are dropped (the caller then just revalidates).
fn dir_change_of(d: Option<&pb::DirChange>) -> Option<DirChange> {
    let d = d?;
    Some(DirChange {
        before: sealfs_proto::attr_from_pb(d.before.as_ref()?).ok()?,
        after: sealfs_proto::attr_from_pb(d.after.as_ref()?).ok()?,
    })
}

fn changed_of(r: &pb::ChangeReply) -> Changed {
    Changed {
        dir: dir_change_of(r.dir.as_ref()),
        new_dir: dir_change_of(r.new_dir.as_ref()),
        touched: r.touched.clone(),
    }
}

fn tu(t: Option<TimeUpdate>) -> Option<pb::TimeUpdate> {
    t.map(|t| match t {
        TimeUpdate::Now => pb::TimeUpdate { now: true, time: None },
        TimeUpdate::Set(ts) => pb::TimeUpdate {
            now: false,
            time: Some(time_to_pb(ts)),
        },
    })
}

/// The cluster as a file system.
#[derive(Clone)]
pub struct SealClient {
    router: Arc<Router>,
    /// Small unstable chunk writes, gathered per chunk.
    gather: Arc<Gatherer>,
    /// Chunk sizes of files known to be chunked (immutable facts, see `read_checked`).
    layouts: Arc<DashMap<InodeId, u32>>,
}

impl SealClient {
    /// Connect to the cluster whose manager the config names, waiting up to `wait` for it.
    pub async fn connect(config: ClientConfig, wait: Duration) -> FsResult<SealClient> {
        Ok(SealClient::from_router(Router::connect(config, wait).await?))
    }

    /// A client over an existing router (storage nodes share theirs).
    pub fn from_router(router: Arc<Router>) -> SealClient {
        SealClient {
            gather: Gatherer::new(router.clone()),
            router,
            layouts: Arc::new(DashMap::new()),
        }
    }

    /// The router underneath.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The cluster id (for NFS file handles).
    pub fn cluster_id(&self) -> u64 {
        self.router.map().cluster_id
    }

    fn ino_part(&self, ino: InodeId) -> PartitionId {
        self.router.map().inode_partition(ino)
    }

    /// Subscribe to the metadata changes that the node at `addr` commits for other processes.
    /// The first batch is empty: from then on the stream misses nothing of that node's.
    pub async fn watch(&self, addr: &str) -> FsResult<ChangeStream> {
        let mut c = self.router.stream_client(addr)?;
        let req = pb::WatchRequest {
            ctx: Some(ctx(self.router.map().epoch, &Credentials::root())),
        };
        let s = c.watch(req).await.map_err(|s| sealfs_proto::error_from_status(&s))?;
        Ok(ChangeStream(s.into_inner()))
    }

    /// Look `name` up in `parent`.
    pub async fn lookup(&self, cred: &Credentials, parent: InodeId, name: &[u8]) -> FsResult<Entry> {
        let name = Bytes::copy_from_slice(name);
        let r = self
            .router
            .call(self.ino_part(parent), |mut c, epoch| {
                let req = pb::LookupRequest {
                    ctx: Some(ctx(epoch, cred)),
                    parent,
                    name: name.clone(),
                };
                async move { c.lookup(req).await }
            })
            .await?;
        entry_of(r.attr.as_ref())
    }

    /// Attributes of an inode.
    pub async fn getattr(&self, cred: &Credentials, ino: InodeId) -> FsResult<Entry> {
        let r = self
            .router
            .call(self.ino_part(ino), |mut c, epoch| {
                let req = pb::InoRequest {
                    ctx: Some(ctx(epoch, cred)),
                    ino,
                };
                async move { c.get_attr(req).await }
            })
            .await?;
        entry_of(r.attr.as_ref())
    }

    /// Change attributes (mode, owner, size, times); the node applies the POSIX rules.
    pub async fn setattr(&self, cred: &Credentials, ino: InodeId, s: &SetAttr) -> FsResult<Entry> {
        let r = self.setattr_inner(cred, ino, s, None, None).await?;
        entry_of(r.attr.as_ref())
    }

    /// [`SealClient::setattr`] of a file whose unsynced writes are in `dirty`: the change is
    /// left unsynced too (replicated, not yet on disk) and noted in `dirty`, so that the commit
    /// that makes the writes durable makes it durable with them. A size change is synced as
    /// always.
    pub async fn setattr_with_writes(
        &self,
        cred: &Credentials,
        ino: InodeId,
        s: &SetAttr,
        dirty: &mut DirtyChunks,
    ) -> FsResult<Entry> {
        let r = self.setattr_inner(cred, ino, s, Some(dirty), None).await?;
        entry_of(r.attr.as_ref())
    }

    /// [`SealClient::setattr_with_writes`] carrying unstable writes of a small file that the
    /// caller held back, `(offset, data)`: the inode's node writes them inline first (no
    /// permission check: the caller checked at open), in the same update, also left for the
    /// commit (`dirty`; without it, both are synced on every replica before the reply). `None`
    /// when they do not fit inline (or the node is older than this and made the change alone):
    /// the caller writes them, then sends the change again.
    pub async fn setattr_after_writes(
        &self,
        cred: &Credentials,
        ino: InodeId,
        s: &SetAttr,
        first: (u64, Bytes),
        dirty: Option<&mut DirtyChunks>,
    ) -> FsResult<Option<Entry>> {
        if s.size.is_some() {
            return Err(FsError::Invalid("writes sent with a truncation".into()));
        }
        let r = self.setattr_inner(cred, ino, s, dirty, Some(first)).await?;
        if !r.wrote {
            return Ok(None);
        }
        entry_of(r.attr.as_ref()).map(Some)
    }

    /// A SetAttr call (`first`: writes to make before it, see `setattr_after_writes`).
    async fn setattr_inner(
        &self,
        cred: &Credentials,
        ino: InodeId,
        s: &SetAttr,
        dirty: Option<&mut DirtyChunks>,
        first: Option<(u64, Bytes)>,
    ) -> FsResult<pb::AttrReply> {
        if s.size.is_some_and(|sz| sz > MAX_FILE_SIZE) {
            return Err(FsError::FileTooBig);
        }
        let defer_sync = dirty.is_some() && s.size.is_none();
        let (write_offset, write_data) = first.unwrap_or_default();
        let r = self
            .router
            .call(self.ino_part(ino), |mut c, epoch| {
                let req = pb::SetAttrRequest {
                    ctx: Some(ctx(epoch, cred)),
                    ino,
                    perm: s.perm,
                    uid: s.uid,
                    gid: s.gid,
                    size: s.size,
                    atime: tu(s.atime),
                    mtime: tu(s.mtime),
                    via_open_handle: s.via_open_handle,
                    defer_sync,
                    write_offset,
                    write_data: write_data.clone(),
                };
                async move { c.set_attr(req).await }
            })
            .await?;
        // A node that synced anyway (one older than `defer_sync`) answers without a verifier.
        if let (Some(d), true) = (dirty, defer_sync && r.verifier != 0) {
            d.stamp_size(r.verifier, r.epoch);
        }
        Ok(r)
    }

    /// Create a non-directory (regular file, fifo, socket, device) in `parent`. With
    /// `exclusive` false an existing file is opened instead (checked against `open_flags`).
    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        cred: &Credentials,
        parent: InodeId,
        name: &[u8],
        kind: FileKind,
        perm: u32,
        rdev: u64,
        exclusive: bool,
        open_flags: i32,
    ) -> FsResult<Entry> {
        self.create_inner(
            cred,
            parent,
            name,
            kind,
            perm,
            rdev,
            Bytes::new(),
            exclusive,
            open_flags,
        )
        .await
    }

    /// Create a symbolic link.
    pub async fn symlink(&self, cred: &Credentials, parent: InodeId, name: &[u8], target: &[u8]) -> FsResult<Entry> {
        self.create_inner(
            cred,
            parent,
            name,
            FileKind::Symlink,
            0o777,
            0,
            Bytes::copy_from_slice(target),
            true,
            0,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_inner(
        &self,
        cred: &Credentials,
        parent: InodeId,
        name: &[u8],
        kind: FileKind,
        perm: u32,
        rdev: u64,
        target: Bytes,
        exclusive: bool,
        open_flags: i32,
    ) -> FsResult<Entry> {
        let name = Bytes::copy_from_slice(name);
        let r = self
            .router
            .call(self.ino_part(parent), |mut c, epoch| {
                let req = pb::CreateRequest {
                    ctx: Some(ctx(epoch, cred)),
                    parent,
                    name: name.clone(),
                    kind: kind as u32,
                    perm,
                    rdev,
                    symlink_target: target.clone(),
                    exclusive,
                    open_flags,
                };
                async move { c.create(req).await }
            })
            .await?;
        created_entry(&r)
    }

    /// Create a directory.
    pub async fn mkdir(&self, cred: &Credentials, parent: InodeId, name: &[u8], perm: u32) -> FsResult<Entry> {
        let name = Bytes::copy_from_slice(name);
        let r = self
            .router
            .call(self.ino_part(parent), |mut c, epoch| {
                let req = pb::MkdirRequest {
                    ctx: Some(ctx(epoch, cred)),
                    parent,
                    name: name.clone(),
                    perm,
                };
                async move { c.mkdir(req).await }
            })
            .await?;
        created_entry(&r)
    }

    /// Remove a non-directory entry.
    pub async fn unlink(&self, cred: &Credentials, parent: InodeId, name: &[u8]) -> FsResult<Changed> {
        self.remove(cred, parent, name, false).await
    }

    /// Remove an empty directory.
    pub async fn rmdir(&self, cred: &Credentials, parent: InodeId, name: &[u8]) -> FsResult<Changed> {
        self.remove(cred, parent, name, true).await
    }

    /// Remove the entry `name` of `parent`: a directory (`dir`) or anything else.
    async fn remove(&self, cred: &Credentials, parent: InodeId, name: &[u8], dir: bool) -> FsResult<Changed> {
        let name = Bytes::copy_from_slice(name);
        let r = self
            .router
            .call(self.ino_part(parent), |mut c, epoch| {
                let req = pb::NameRequest {
                    ctx: Some(ctx(epoch, cred)),
                    parent,
                    name: name.clone(),
                };
                async move {
                    if dir {
                        c.rmdir(req).await
                    } else {
                        c.unlink(req).await
                    }
                }
            })
            .await?;
        Ok(changed_of(&r))
    }

    /// Rename, with RENAME_NOREPLACE (1) and RENAME_EXCHANGE (2) flags.
    pub async fn rename(
        &self,
        cred: &Credentials,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<Changed> {
        let name = Bytes::copy_from_slice(name);
        let new_name = Bytes::copy_from_slice(new_name);
        let r = self
            .router
            .call(self.ino_part(parent), |mut c, epoch| {
                let req = pb::RenameRequest {
                    ctx: Some(ctx(epoch, cred)),
                    parent,
                    name: name.clone(),
                    new_parent,
                    new_name: new_name.clone(),
                    flags,
                };
                async move { c.rename(req).await }
            })
            .await?;
        Ok(changed_of(&r))
    }

    /// Add a hard link to `ino` as `new_name` in `new_parent`.
    pub async fn link(
        &self,
        cred: &Credentials,
        ino: InodeId,
        new_parent: InodeId,
        new_name: &[u8],
    ) -> FsResult<Entry> {
        let new_name = Bytes::copy_from_slice(new_name);
        let r = self
            .router
            .call(self.ino_part(new_parent), |mut c, epoch| {
                let req = pb::LinkRequest {
                    ctx: Some(ctx(epoch, cred)),
                    ino,
                    new_parent,
                    new_name: new_name.clone(),
                };
                async move { c.link(req).await }
            })
            .await?;
        created_entry(&r)
    }

    /// One page of a directory listing after `cookie` (0: from the start).
    pub async fn readdir(
        &self,
        cred: &Credentials,
        ino: InodeId,
        cookie: u64,
        max_entries: u32,
        plus: bool,
    ) -> FsResult<(Vec<DirEntry>, bool)> {
        let r = self
            .router
            .call(self.ino_part(ino), |mut c, epoch| {
                let req = pb::ReadDirRequest {
                    ctx: Some(ctx(epoch, cred)),
                    ino,
                    cookie,
                    max_entries,
                    plus,
                };
                async move { c.read_dir(req).await }
            })
            .await?;
        let mut out = Vec::with_capacity(r.entries.len());
        for e in r.entries {
            let kind = u8::try_from(e.kind)
                .ok()
                .and_then(FileKind::from_u8)
                .ok_or_else(|| FsError::Io("bad entry kind".into()))?;
            let attr = match e.attr.as_ref() {
                Some(a) => Some(sealfs_proto::attr_from_pb(a)?),
                None => None,
            };
            out.push(DirEntry {
                name: e.name.to_vec(),
                ino: e.ino,
                kind,
                cookie: e.cookie,
                attr,
            });
        }
        if plus {
            // Inodes on other nodes (subdirectories, moved files) are fetched in parallel.
            let missing: Vec<usize> = (0..out.len()).filter(|i| out[*i].attr.is_none()).collect();
            let root = Credentials::root();
            let fetched = try_join_all(missing.iter().map(|i| {
                let ino = out[*i].ino;
                let root = &root;
                async move {
                    match self.getattr(root, ino).await {
                        Ok(e) => Ok(Some(e.attr)),
                        Err(FsError::NotFound) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            }))
            .await?;
            for (i, a) in missing.into_iter().zip(fetched) {
                out[i].attr = a;
            }
            out.retain(|e| e.attr.is_some());
        }
        Ok((out, r.eof))
    }

    /// The target of a symbolic link.
    pub async fn readlink(&self, cred: &Credentials, ino: InodeId) -> FsResult<Vec<u8>> {
        let r = self
            .router
            .call(self.ino_part(ino), |mut c, epoch| {
                let req = pb::InoRequest {
                    ctx: Some(ctx(epoch, cred)),
                    ino,
                };
                async move { c.read_link(req).await }
            })
            .await?;
        Ok(r.target.to_vec())
    }

    /// Check that `cred` may open `ino` with `flags` (and truncate it for O_TRUNC); returns
    /// fresh attributes (close-to-open consistency).
    pub async fn open(&self, cred: &Credentials, ino: InodeId, flags: i32) -> FsResult<Entry> {
        Ok(self.open_inline(cred, ino, flags).await?.0)
    }

    /// [`open`](Self::open), also returning the whole data of a small file kept in its inode
    /// when opened for reading (read in the same step as the attributes, so they agree).
    pub async fn open_inline(&self, cred: &Credentials, ino: InodeId, flags: i32) -> FsResult<(Entry, Option<Bytes>)> {
        let r = self
            .router
            .call(self.ino_part(ino), |mut c, epoch| {
                let req = pb::OpenRequest {
                    ctx: Some(ctx(epoch, cred)),
                    ino,
                    flags,
                };
                async move { c.open(req).await }
            })
            .await?;
        let e = entry_of(r.attr.as_ref())?;
        // Sent only for reading; a node that does not send it sends none (and an empty file's
        // data is empty either way).
        let whole = e.layout.inline && r.inline_data.len() as u64 == e.attr.size;
        Ok((e, whole.then_some(r.inline_data)))
    }

    /// access(2): check `mask` (R_OK 4, W_OK 2, X_OK 1) for `cred`.
    pub async fn access(&self, cred: &Credentials, ino: InodeId, mask: u32) -> FsResult<()> {
        self.router
            .call(self.ino_part(ino), |mut c, epoch| {
                let req = pb::AccessRequest {
                    ctx: Some(ctx(epoch, cred)),
                    ino,
                    mask,
                };
                async move { c.access(req).await }
            })
            .await?;
        Ok(())
    }

    /// Read up to `size` bytes at `offset` (short at end of file).
    pub async fn read(&self, cred: &Credentials, ino: InodeId, offset: u64, size: u32) -> FsResult<Bytes> {
        Ok(self.read_checked(cred, ino, offset, size, false).await?.0)
    }

    /// Read, checking read permission first when `check_perm` (stateless callers: NFS), and
    /// return the file's attributes as of the read too.
    pub async fn read_checked(
        &self,
        cred: &Credentials,
        ino: InodeId,
        offset: u64,
        size: u32,
        check_perm: bool,
    ) -> FsResult<(Bytes, FileAttr)> {
        let size = size.min(MAX_IO_SIZE as u32);
        let inode = self.router.call(self.ino_part(ino), |mut c, epoch| {
            let req = pb::ReadRequest {
                ctx: Some(ctx(epoch, cred)),
                ino,
                offset,
                size,
                check_perm,
            };
            async move { c.read(req).await }
        });
        // A chunked file stays chunked with the same chunk size for life, so once its layout is
        // known the chunks can be read while the inode is checked: one round trip, not two.
        let known = self.layouts.get(&ino).map(|c| *c);
        let (r, early) = match known {
            Some(cs) if size > 0 => {
                let end = offset.saturating_add(u64::from(size));
                let (r, pieces) = tokio::join!(inode, self.chunk_pieces_raw(ino, offset, end, cs));
                (r?, Some(pieces))
            }
            _ => (inode.await?, None),
        };
        let attr = required_attr(r.attr.as_ref())?;
        let a = r.attr.as_ref().expect("checked by required_attr");
        if a.inline {
            return Ok((r.data, attr));
        }
        let cs = a.chunk_size.max(1);
        self.remember_layout(ino, cs);
        let end = (offset + u64::from(size)).min(a.size);
        if offset >= end {
            return Ok((Bytes::new(), attr));
        }
        if let Some(Ok(pieces)) = early {
            // The chunks were read before the size was: a piece that came back short may be a
            // write that landed in between (data before size), so only full pieces are used.
            if let Some(data) = assemble(&pieces, end - offset, false) {
                return Ok((data, attr));
            }
        }
        Ok((self.read_chunks(ino, offset, end, cs).await?, attr))
    }

    /// The chunk size of `ino` if it is known to be a chunked file (it stays one for life).
    pub fn known_chunk_size(&self, ino: InodeId) -> Option<u32> {
        self.layouts.get(&ino).map(|c| *c)
    }

    /// Note that `ino` is chunked with chunk size `cs` (see `read_checked`).
    fn remember_layout(&self, ino: InodeId, cs: u32) {
        if self.layouts.len() >= LAYOUT_CACHE_MAX {
            // Ids are never reused and layouts never change, so dropping entries only costs
            // round trips; a full clear keeps this simple and bounded.
            self.layouts.clear();
        }
        self.layouts.insert(ino, cs);
    }

    /// Read `[offset, end)` of a chunked file straight from its chunks (`chunk_size` from its
    /// layout), for a caller that knows the file's size covers the range: holes read as zeros.
    pub async fn read_chunks(&self, ino: InodeId, offset: u64, end: u64, chunk_size: u32) -> FsResult<Bytes> {
        if chunk_size == 0 {
            return Err(FsError::Io("file has no chunk size".into()));
        }
        let parts = self.chunk_pieces_raw(ino, offset, end, chunk_size).await?;
        Ok(assemble(&parts, end - offset, true).expect("holes allowed"))
    }

    /// The pieces of `[offset, end)` as the chunks' nodes returned them: (data, wanted length);
    /// data is shorter where a chunk ends early (a hole, or past the chunk's end).
    async fn chunk_pieces_raw(
        &self,
        ino: InodeId,
        offset: u64,
        end: u64,
        chunk_size: u32,
    ) -> FsResult<Vec<(Bytes, u32)>> {
        let pieces = chunk_pieces(offset, end, chunk_size);
        let map = self.router.map();
        try_join_all(pieces.iter().map(|&(index, off, len)| {
            let p = map.chunk_partition(ino, index);
            async move {
                let r = self
                    .router
                    .call(p, |mut c, epoch| {
                        let req = pb::ReadChunkRequest {
                            ctx: Some(ctx(epoch, &Credentials::root())),
                            chunk: Some(pb::ChunkId { ino, index }),
                            offset: off,
                            size: len,
                            from_replica: false,
                        };
                        async move {
                            let (md, mut msg, mut ext) = c.read_chunk(req).await?.into_parts();
                            attach::take_into(&mut ext, &mut msg.data);
                            Ok(tonic::Response::from_parts(md, msg, ext))
                        }
                    })
                    .await?;
                Ok::<_, FsError>((r.data, len))
            }
        }))
        .await
    }

    /// Write `data` at `offset`. Small files are written inline, in one round trip. A write is
    /// `stable` (durable before the reply) or not; an unstable one (chunk data, or data written
    /// inline) is added to `dirty` for a later [`SealClient::commit`].
    pub async fn write(
        &self,
        cred: &Credentials,
        ino: InodeId,
        offset: u64,
        data: Bytes,
        mode: WriteMode,
        dirty: &mut DirtyChunks,
    ) -> FsResult<Entry> {
        let WriteMode {
            stable,
            check_perm,
            known,
        } = mode;
        let end = write_end(offset, data.len())?;
        if data.len() > MAX_IO_SIZE {
            return Err(FsError::Invalid(format!(
                "write of {} bytes exceeds {MAX_IO_SIZE}",
                data.len()
            )));
        }
        let part = self.ino_part(ino);
        let mut chunk_size = known.map(|l| l.chunk_size).unwrap_or(0);
        // A permission check (stateless callers) is made by the inode's node on this same call.
        if known.is_none_or(|l| l.inline) || check_perm {
            let r = self
                .router
                .call(part, |mut c, epoch| {
                    let req = pb::WriteRequest {
                        ctx: Some(ctx(epoch, cred)),
                        ino,
                        offset,
                        data: if end <= INLINE_MAX { data.clone() } else { Bytes::new() },
                        check_perm,
                        length: data.len() as u64,
                        defer_sync: !stable,
                    };
                    async move { c.write(req).await }
                })
                .await?;
            if r.verifier != 0 {
                // Written inline, or made chunked, without a sync: owed to the commit, as the
                // size is.
                dirty.stamp_size(r.verifier, r.epoch);
            }
            if r.written {
                return entry_of(r.attr.as_ref());
            }
            chunk_size = r.attr.as_ref().map(|a| a.chunk_size).unwrap_or(0);
        }
        self.write_chunks(ino, offset, data, chunk_size, stable, dirty).await?;
        self.extend_size(cred, ino, end, stable, dirty).await
    }

    /// Write `data` at `offset` straight to the chunks of a chunked file (`chunk_size` from its
    /// layout), without touching the inode: the caller extends the file's size afterwards with
    /// [`SealClient::extend_size`] (the FUSE client does it once per batch of writes). Unstable
    /// writes are added to `dirty`.
    pub async fn write_chunks(
        &self,
        ino: InodeId,
        offset: u64,
        data: Bytes,
        chunk_size: u32,
        stable: bool,
        dirty: &mut DirtyChunks,
    ) -> FsResult<()> {
        if chunk_size == 0 {
            return Err(FsError::Io("file has no chunk size".into()));
        }
        let end = write_end(offset, data.len())?;
        let mut start = 0;
        let pieces: Vec<_> = chunk_pieces(offset, end, chunk_size)
            .into_iter()
            .map(|(index, in_off, len)| {
                let piece = data.slice(start..start + len as usize);
                start += len as usize;
                (index, in_off, piece)
            })
            .collect();
        let results = try_join_all(pieces.into_iter().map(|(index, off, piece)| async move {
            let w = if !stable && piece.len() <= GATHER_MAX {
                self.gather.write(ino, index, off, piece, chunk_size).await?
            } else {
                write_one(&self.router, ino, index, off, piece, stable, chunk_size).await?
            };
            Ok::<_, FsError>((w.partition, index, w.verifier, w.epoch))
        }))
        .await?;
        if !stable {
            for (p, index, v, e) in results {
                dirty.add(p, v, e, ino, index);
            }
            dirty.size_dirty = true;
        }
        Ok(())
    }

    /// Grow the file's size to at least `end` after chunk writes (and set its mtime and ctime);
    /// durably with `sync`, else noted in `dirty` for the commit. Returns its attributes.
    pub async fn extend_size(
        &self,
        cred: &Credentials,
        ino: InodeId,
        end: u64,
        sync: bool,
        dirty: &mut DirtyChunks,
    ) -> FsResult<Entry> {
        let r = self
            .router
            .call(self.ino_part(ino), |mut c, epoch| {
                let req = pb::ExtendRequest {
                    ctx: Some(ctx(epoch, cred)),
                    ino,
                    end,
                    sync,
                };
                async move { c.extend_size(req).await }
            })
            .await?;
        if !sync {
            dirty.stamp_size(r.verifier, r.epoch);
        }
        entry_of(r.attr.as_ref())
    }

    /// Make unstable writes durable: fsync the chunks on every replica that took them, and the
    /// inode's size. Fails with EIO when the node committing cannot vouch for the writes (it
    /// restarted since, and was not an in-sync replica before them).
    pub async fn commit(&self, ino: InodeId, dirty: DirtyChunks) -> FsResult<()> {
        if dirty.is_empty() {
            return Ok(());
        }
        // The size goes with the chunks, not after them: an unsynced size change is in the WAL
        // and may reach the disk at any time anyway, so waiting for the chunks first kept no
        // order a crash could rely on.
        let size = async {
            if dirty.size_dirty {
                self.sync_inode(ino, dirty.size_stamp).await?;
            }
            Ok::<_, FsError>(())
        };
        let chunks = try_join_all(dirty.parts.into_iter().map(|(p, d)| async move {
            let chunks: Vec<pb::ChunkId> = d
                .chunks
                .into_iter()
                .map(|(ino, index)| pb::ChunkId { ino, index })
                .collect();
            self.router
                .call(p, |mut c, epoch| {
                    let req = pb::CommitRequest {
                        ctx: Some(ctx(epoch, &Credentials::root())),
                        chunks: chunks.clone(),
                        verifier: d.verifier,
                        epoch: d.epoch,
                    };
                    async move { c.commit(req).await }
                })
                .await
        }));
        let (size, chunks) = tokio::join!(size, chunks);
        chunks?;
        size
    }

    /// Make the inode record durable on every replica (its size and times after unstable
    /// writes), failing with EIO if the node cannot vouch for the unsynced size change `stamp`
    /// (verifier, epoch) stands for.
    async fn sync_inode(&self, ino: InodeId, stamp: Option<(u64, u64)>) -> FsResult<()> {
        let (verifier, since) = stamp.unwrap_or((0, 0));
        self.router
            .call(self.ino_part(ino), |mut c, epoch| {
                let req = pb::SyncInodeRequest {
                    ctx: Some(ctx(epoch, &Credentials::root())),
                    ino,
                    verifier,
                    epoch: since,
                };
                async move { c.sync_inode(req).await }
            })
            .await?;
        Ok(())
    }

    /// Read an extended attribute.
    pub async fn getxattr(&self, cred: &Credentials, ino: InodeId, name: &[u8]) -> FsResult<Vec<u8>> {
        let name = Bytes::copy_from_slice(name);
        let r = self
            .router
            .call(self.ino_part(ino), |mut c, epoch| {
                let req = pb::XattrRequest {
                    ctx: Some(ctx(epoch, cred)),
                    ino,
                    name: name.clone(),
                    value: Bytes::new(),
                    flags: 0,
                };
                async move { c.get_xattr(req).await }
            })
            .await?;
        Ok(r.value.to_vec())
    }

    /// Set an extended attribute (flags: XATTR_CREATE 1, XATTR_REPLACE 2).
    pub async fn setxattr(
        &self,
        cred: &Credentials,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let name = Bytes::copy_from_slice(name);
        let value = Bytes::copy_from_slice(value);
        self.router
            .call(self.ino_part(ino), |mut c, epoch| {
                let req = pb::XattrRequest {
                    ctx: Some(ctx(epoch, cred)),
                    ino,
                    name: name.clone(),
                    value: value.clone(),
                    flags,
                };
                async move { c.set_xattr(req).await }
            })
            .await?;
        Ok(())
    }

    /// Names of an inode's extended attributes.
    pub async fn listxattr(&self, cred: &Credentials, ino: InodeId) -> FsResult<Vec<Vec<u8>>> {
        let r = self
            .router
            .call(self.ino_part(ino), |mut c, epoch| {
                let req = pb::InoRequest {
                    ctx: Some(ctx(epoch, cred)),
                    ino,
                };
                async move { c.list_xattr(req).await }
            })
            .await?;
        Ok(r.names.into_iter().map(|n| n.to_vec()).collect())
    }

    /// Remove an extended attribute.
    pub async fn removexattr(&self, cred: &Credentials, ino: InodeId, name: &[u8]) -> FsResult<()> {
        let name = Bytes::copy_from_slice(name);
        self.router
            .call(self.ino_part(ino), |mut c, epoch| {
                let req = pb::XattrRequest {
                    ctx: Some(ctx(epoch, cred)),
                    ino,
                    name: name.clone(),
                    value: Bytes::new(),
                    flags: 0,
                };
                async move { c.remove_xattr(req).await }
            })
            .await?;
        Ok(())
    }

    /// Capacity of the whole cluster: the sum over nodes that serve partitions.
    pub async fn statfs(&self) -> FsResult<StatFs> {
        let map = self.router.map();
        let mut ids: Vec<_> = map
            .assignment
            .iter()
            .filter_map(|r| r.in_sync.first().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut total = StatFs::default();
        for id in ids {
            let Some(node) = map.node(id) else { continue };
            if node.state != sealfs_core::NodeState::Up {
                continue;
            }
            let mut c = self.router.node_client(&node.addr)?;
            if let Ok(r) = c.stat_fs(ctx(map.epoch, &Credentials::root())).await {
                let r = r.into_inner();
                total.total_bytes += r.total_bytes;
                total.free_bytes += r.free_bytes;
                total.inodes += r.inodes;
            }
        }
        Ok(total)
    }

    /// Wire form of attributes, for frontends that forward them.
    pub fn attr_to_wire(e: &Entry) -> pb::Attr {
        attr_to_pb(&e.attr, e.layout.inline, e.layout.chunk_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_vouches_with_the_first_answer_and_the_earliest_epoch() {
        let mut d = DirtyChunks::default();
        assert!(d.is_empty());
        d.stamp_size(7, 12);
        assert!(!d.is_empty(), "an unsynced size alone is something to commit");
        d.stamp_size(7, 10);
        let mut later = DirtyChunks::default();
        later.stamp_size(9, 15);
        later.add(3, 9, 14, 42, 0);
        d.merge(later);
        // Another node's later answer does not replace the first: the committing node must
        // vouch from before the earliest change.
        assert_eq!(d.size_stamp, Some((7, 10)));
        assert_eq!(d.chunks(), 1);
        let mut chunks_only = DirtyChunks::default();
        chunks_only.add(3, 9, 14, 42, 0);
        assert_eq!(chunks_only.size_stamp, None);
        assert!(!chunks_only.size_dirty);
    }
}
