//! File-system operations as the node that owns the parent (or the inode) runs them: name and
//! permission checks from sealfs-core, then one atomic transaction, or the step protocol of
//! node.rs when other partitions are involved.

use std::sync::Arc;

use bytes::Bytes;
use sealfs_core::attr::{FileAttr, FileKind, SetAttr, TimeSpec};
use sealfs_core::config::{INLINE_MAX, MAX_FILE_SIZE, MAX_IO_SIZE, MAX_XATTR_COUNT, MAX_XATTR_TOTAL, MAX_XATTR_VALUE};
use sealfs_core::ids::ino_partition;
use sealfs_core::name::{validate_name, NAME_MAX, SYMLINK_MAX};
use sealfs_core::perm::{self, Credentials};
use sealfs_core::{FsError, FsResult, InodeId, ROOT_INO};
use sealfs_proto::pb::{self, step::Kind};
use sealfs_proto::{attr_to_pb, ctx, time_to_pb};

use crate::batch::{Created, HandOver, Turn};
use crate::keys;
use crate::node::{rec_to_pb, Node};
use crate::records::{DentryRecord, GcRecord, InodeRecord, FLAG_DYING, FLAG_INLINE};
use crate::tx::Tx;

/// Most hard links one inode (or subdirectories one directory) may have.
pub const LINK_MAX: u32 = 65000;

fn kind_of(v: u32) -> FsResult<FileKind> {
    u8::try_from(v)
        .ok()
        .and_then(FileKind::from_u8)
        .ok_or_else(|| FsError::Invalid(format!("bad file kind {v}")))
}

/// Write `data` at `offset` into inline file `rec` (size, mtime and ctime follow; a writer other
/// than root clears set-id bits). False, leaving `rec` alone, when it does not fit inline: the
/// file is chunked, the write ends past the inline size, or its data did not come with it (a
/// caller sends it only when the write fits its idea of the inline size; a client from before
/// 64 KiB sends none past 4 KiB).
fn write_inline(cred: &Credentials, rec: &mut InodeRecord, offset: u64, data: &[u8]) -> FsResult<bool> {
    match rec.attr.kind {
        FileKind::Regular => {}
        FileKind::Directory => return Err(FsError::IsDir),
        _ => return Err(FsError::Invalid("write to a special file".into())),
    }
    let end = offset.checked_add(data.len() as u64).ok_or(FsError::FileTooBig)?;
    if !rec.is_inline() || end > INLINE_MAX || data.is_empty() {
        return Ok(false);
    }
    let (off, end) = (offset as usize, end as usize);
    if rec.data.len() < end {
        rec.data.resize(end, 0);
    }
    rec.data[off..end].copy_from_slice(data);
    rec.attr.size = rec.data.len() as u64;
    rec.attr.mtime = TimeSpec::now();
    rec.attr.ctime = rec.attr.mtime;
    if !cred.is_root() {
        kill_priv(&mut rec.attr);
    }
    rec.update_blocks();
    Ok(true)
}

fn kill_priv(attr: &mut FileAttr) {
    attr.perm &= !libc::S_ISUID;
    if attr.perm & libc::S_IXGRP != 0 {
        attr.perm &= !libc::S_ISGID;
    }
}

/// A directory's attributes around a change (None: `after` was not read atomically).
fn dir_change(before: &FileAttr, after: Option<FileAttr>) -> Option<pb::DirChange> {
    after.map(|a| pb::DirChange {
        before: Some(attr_to_pb(before, false, 0)),
        after: Some(attr_to_pb(&a, false, 0)),
    })
}

fn live_dir(rec: InodeRecord) -> FsResult<InodeRecord> {
    if rec.attr.kind != FileKind::Directory {
        return Err(FsError::NotDir);
    }
    if rec.flags & FLAG_DYING != 0 {
        return Err(FsError::NotFound);
    }
    Ok(rec)
}

impl Node {
    /// Write a chunk durably wherever it lives (used when inline data becomes chunk 0).
    async fn write_chunk_stable(&self, ino: InodeId, index: u64, data: Bytes, chunk_size: u32) -> FsResult<()> {
        let p = self.router.map().chunk_partition(ino, index);
        if self.serves(p) {
            let op = crate::replication::ChunkOp::Write {
                offset: 0,
                data,
                stable: true,
                pieces: Vec::new(),
            };
            return self.chunk_op(p, ino, index, op).await;
        }
        self.router
            .call(p, |mut c, epoch| {
                let req = pb::WriteChunkRequest {
                    ctx: Some(ctx(epoch, &Credentials::root())),
                    chunk: Some(pb::ChunkId { ino, index }),
                    offset: 0,
                    data: data.clone(),
                    stable: true,
                    chunk_size,
                    pieces: Vec::new(),
                };
                async move { c.write_chunk(req).await }
            })
            .await
            .map(|_| ())
    }

    /// Move inline data out to chunk 0 and mark the inode chunked (caller writes `rec`).
    async fn uninline(&self, rec: &mut InodeRecord) -> FsResult<()> {
        if !rec.data.is_empty() {
            let data = Bytes::from(std::mem::take(&mut rec.data));
            self.write_chunk_stable(rec.attr.ino, 0, data, rec.chunk_size).await?;
        }
        rec.flags &= !FLAG_INLINE;
        Ok(())
    }

    /// lookup(parent, name).
    pub async fn op_lookup(&self, cred: &Credentials, parent: InodeId, name: &[u8]) -> FsResult<pb::Attr> {
        self.check_not_pending(parent)?;
        let dir = self.store.inode(parent)?;
        if dir.attr.kind != FileKind::Directory {
            return Err(FsError::NotDir);
        }
        perm::check_access(cred, &dir.attr, perm::X_OK)?;
        if name == b"." {
            return Ok(rec_to_pb(&dir));
        }
        if name == b".." {
            let up = if parent == ROOT_INO || dir.parent == 0 {
                ROOT_INO
            } else {
                dir.parent
            };
            return self.attr_pb_any(up).await;
        }
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        let d = self.store.get_dentry(parent, name)?.ok_or(FsError::NotFound)?;
        self.attr_pb_any(d.ino).await
    }

    /// getattr(ino).
    pub fn op_getattr(&self, ino: InodeId) -> FsResult<pb::Attr> {
        Ok(rec_to_pb(&self.store.inode(ino)?))
    }

    /// setattr: mode, owner, size, times. Synced on every replica, or with `sync` false (and no
    /// size) only written to their WALs, for a caller that syncs it with the file's writes.
    /// With `first` (offset, data), and no size, that data is written inline before the change,
    /// in the same update; `None` when it does not fit inline (nothing changed then).
    pub async fn op_setattr(
        &self,
        cred: &Credentials,
        ino: InodeId,
        req: &SetAttr,
        sync: bool,
        first: Option<(u64, &[u8])>,
    ) -> FsResult<Option<pb::Attr>> {
        // A truncation queues chunk removals with the new size: never left unsynced.
        let sync = sync || req.size.is_some();
        if req.size.is_some() {
            self.check_no_pending_gc(ino)?;
            if first.is_some() {
                return Err(FsError::Invalid("a write sent with a truncation".into()));
            }
        }
        let _held = self.locks.lock(&[ino]).await;
        let mut rec = self.store.inode(ino)?;
        if let Some((offset, data)) = first {
            if !write_inline(cred, &mut rec, offset, data)? {
                return Ok(None);
            }
        }
        let old_size = rec.attr.size;
        let now = TimeSpec::now();
        if let Some(size) = req.size {
            match rec.attr.kind {
                FileKind::Regular => {}
                FileKind::Directory => return Err(FsError::IsDir),
                _ => return Err(FsError::Invalid("truncate of a special file".into())),
            }
            if size > MAX_FILE_SIZE {
                return Err(FsError::FileTooBig);
            }
        }
        perm::apply_setattr(cred, &mut rec.attr, req, now)?;
        let mut tx = Tx::new(&self.store);
        let mut cut = None;
        if let Some(size) = req.size {
            if !cred.is_root() {
                kill_priv(&mut rec.attr);
            }
            if size != old_size || !req.via_open_handle {
                rec.attr.mtime = now;
            }
            if rec.is_inline() {
                if size <= INLINE_MAX {
                    rec.data.resize(size as usize, 0);
                } else {
                    self.uninline(&mut rec).await?;
                }
            } else if size < old_size {
                // The new size and the record of the chunks to cut commit together, so a crash
                // mid-way still ends with the cut done (by the cleanup worker).
                self.queue_chunk_removal(&mut tx, ino, size, old_size, rec.chunk_size)?;
                cut = Some(GcRecord {
                    from: size,
                    to: old_size,
                    chunk_size: rec.chunk_size,
                });
            }
            rec.attr.size = size;
            rec.update_blocks();
        }
        tx.put_inode(&rec);
        self.commit(tx, sync).await?;
        drop(_held);
        if let Some(g) = cut {
            // Done now so the caller's next write cannot race the cut; the record (merged with
            // any older one) is removed when it matches what was cut.
            let stored = self
                .store
                .get(&keys::gc(ino_partition(ino), ino))?
                .map(|v| GcRecord::decode(&v))
                .transpose()?;
            self.apply_gc(ino, stored.unwrap_or(g)).await?;
        }
        Ok(Some(rec_to_pb(&rec)))
    }

    /// Create a non-directory in `parent` (or open the existing one when not exclusive);
    /// returns its attributes and the parent's change. Creates that arrive in one directory
    /// while another there is committing are committed together after it (batch.rs).
    pub async fn op_create(self: &Arc<Self>, cred: &Credentials, req: &pb::CreateRequest) -> FsResult<Created> {
        validate_name(&req.name)?;
        let kind = kind_of(req.kind)?;
        if kind == FileKind::Directory {
            return Err(FsError::Invalid("create of a directory: use mkdir".into()));
        }
        if kind == FileKind::Symlink && (req.symlink_target.is_empty() || req.symlink_target.len() > SYMLINK_MAX) {
            return Err(if req.symlink_target.is_empty() {
                FsError::NotFound
            } else {
                FsError::NameTooLong
            });
        }
        let parent = req.parent;
        self.check_not_pending(parent)?;
        match self.creates.join(parent, || (cred.clone(), req.clone())) {
            Turn::Wait(rx) => rx.await.unwrap_or_else(|_| {
                Err(FsError::Unavailable(
                    "the create's batch ended without an answer; try again".into(),
                ))
            }),
            Turn::Lead => {
                let _next = HandOver::new(self, parent);
                let mut r = self.create_batch(parent, &[(cred, req)]).await;
                r.pop()
                    .unwrap_or_else(|| Err(FsError::Io("a create batch gave no answer".into())))
            }
        }
    }

    /// Creates in `dir` (checked by [`Node::op_create`]) as one transaction and one synced
    /// commit; an answer for each, in order. One that fails leaves the others to go on; a
    /// commit that fails fails all of them.
    pub(crate) async fn create_batch(
        &self,
        dir: InodeId,
        asks: &[(&Credentials, &pb::CreateRequest)],
    ) -> Vec<FsResult<Created>> {
        let _held = self.locks.lock(&[dir]).await;
        let mut tx = Tx::new(&self.store);
        let mut rec = match self
            .check_not_pending(dir)
            .and_then(|()| tx.inode(dir))
            .and_then(live_dir)
        {
            Ok(r) => r,
            Err(e) => return asks.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut out = Vec::with_capacity(asks.len());
        let mut wrote = false;
        for (cred, req) in asks {
            let r = self.create_in(&mut tx, &mut rec, cred, req).await;
            wrote |= matches!(r, Ok((_, true)));
            out.push(r.map(|(c, _)| c));
        }
        if wrote {
            if let Err(e) = self.commit(tx, true).await {
                for r in out.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(e.clone());
                }
            }
        }
        out
    }

    /// One create inside a batch's transaction, `dir` being the directory's record as the
    /// transaction has it so far. Also says whether it wrote anything (opening an existing
    /// file does not).
    async fn create_in(
        &self,
        tx: &mut Tx<'_>,
        dir: &mut InodeRecord,
        cred: &Credentials,
        req: &pb::CreateRequest,
    ) -> FsResult<(Created, bool)> {
        let kind = kind_of(req.kind)?;
        let parent = req.parent;
        if let Some(d) = tx.get_dentry(parent, &req.name)? {
            if req.exclusive {
                return Err(FsError::Exists);
            }
            perm::check_access(cred, &dir.attr, perm::X_OK)?;
            // Through the transaction: the file may be an earlier create of this batch.
            let a = if self.serves(ino_partition(d.ino)) {
                rec_to_pb(&tx.inode(d.ino)?)
            } else {
                self.attr_pb_any(d.ino).await?
            };
            let attr = sealfs_proto::attr_from_pb(&a)?;
            if attr.kind == FileKind::Directory {
                return Err(FsError::IsDir);
            }
            perm::check_access(cred, &attr, perm::open_mask(req.open_flags))?;
            return Ok(((a, dir_change(&dir.attr, Some(dir.attr.clone()))), false));
        }
        perm::check_dir_write(cred, &dir.attr)?;
        let ino = self.alloc_ino(ino_partition(parent)).await?;
        let (uid, gid, mode) = perm::new_inode_owner(cred, &dir.attr, kind, req.perm);
        let now = TimeSpec::now();
        let target = if kind == FileKind::Symlink {
            req.symlink_target.to_vec()
        } else {
            Vec::new()
        };
        let mut rec = InodeRecord {
            attr: FileAttr {
                ino,
                kind,
                perm: if kind == FileKind::Symlink { 0o777 } else { mode },
                nlink: 1,
                uid,
                gid,
                size: target.len() as u64,
                blocks: 0,
                atime: now,
                mtime: now,
                ctime: now,
                rdev: if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) {
                    req.rdev
                } else {
                    0
                },
                generation: 1,
            },
            parent: 0,
            chunk_size: self.router.map().chunk_size,
            flags: if kind == FileKind::Regular { FLAG_INLINE } else { 0 },
            data: target,
        };
        rec.update_blocks();
        tx.put_inode(&rec);
        tx.put_dentry(parent, &req.name, DentryRecord { ino, kind });
        let before = dir.attr.clone();
        dir.attr.mtime = now;
        dir.attr.ctime = now;
        tx.put_inode(dir);
        Ok(((rec_to_pb(&rec), dir_change(&before, Some(dir.attr.clone()))), true))
    }

    /// mkdir: the new directory's inode goes to the partition hash(parent, name) picks.
    pub async fn op_mkdir(
        &self,
        cred: &Credentials,
        parent: InodeId,
        name: &[u8],
        mode: u32,
    ) -> FsResult<(pb::Attr, Option<pb::DirChange>)> {
        validate_name(name)?;
        self.check_not_pending(parent)?;
        let held = self.locks.lock(&[parent]).await;
        let dir = live_dir(self.store.inode(parent)?)?;
        if self.store.get_dentry(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        perm::check_dir_write(cred, &dir.attr)?;
        if dir.attr.nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        let (uid, gid, mode) = perm::new_inode_owner(cred, &dir.attr, FileKind::Directory, mode);
        let now = TimeSpec::now();
        let mut attr = FileAttr {
            ino: 0,
            kind: FileKind::Directory,
            perm: mode,
            nlink: 2,
            uid,
            gid,
            size: 4096,
            blocks: 8,
            atime: now,
            mtime: now,
            ctime: now,
            rdev: 0,
            generation: 1,
        };
        let q = self.router.map().dir_partition(parent, name);
        let steps = vec![
            Kind::CreateInode(pb::CreateInodeStep {
                partition: q,
                attr: Some(attr_to_pb(&attr, false, 0)),
                parent,
            }),
            Kind::PutEntry(pb::PutEntryStep {
                parent,
                name: name.to_vec().into(),
                ino: 0,
                kind: FileKind::Directory as u32,
                ino_from_step: 1,
                touch_parent: true,
                parent_nlink_delta: 1,
                check_expect: true,
                expect_ino: 0,
            }),
        ];
        let mut done = self.execute(ino_partition(parent), steps, 1, held, &[parent]).await?;
        attr.ino = done.results[0];
        let mut a = attr_to_pb(&attr, false, self.router.map().chunk_size);
        a.parent = parent;
        Ok((a, dir_change(&dir.attr, done.take_watched(0))))
    }

    /// Lock `base` plus the inodes `discover` names (read under the lock), retrying until the
    /// set is stable; returns the guard and what `discover` saw.
    async fn lock_discover<T: Clone + PartialEq>(
        &self,
        base: &[InodeId],
        discover: impl Fn() -> FsResult<(Vec<InodeId>, T)>,
    ) -> FsResult<(crate::locks::Held<'_>, T)> {
        let mut extra: Vec<InodeId> = Vec::new();
        loop {
            let mut all = base.to_vec();
            all.extend(&extra);
            let held = self.locks.lock(&all).await;
            let (want, seen) = discover()?;
            if want.iter().all(|w| *w == 0 || all.contains(w)) {
                return Ok((held, seen));
            }
            extra = want;
        }
    }

    /// The start of unlink and rmdir: lock the folder and the inode its entry `name` names (which
    /// must exist), then read the folder under the lock and check the caller may change it.
    async fn lock_entry_to_remove(
        &self,
        cred: &Credentials,
        parent: InodeId,
        name: &[u8],
    ) -> FsResult<(crate::locks::Held<'_>, DentryRecord, InodeRecord)> {
        self.check_not_pending(parent)?;
        let store = &self.store;
        let (held, d) = self
            .lock_discover(&[parent], || {
                let d = store.get_dentry(parent, name)?.ok_or(FsError::NotFound)?;
                Ok((vec![d.ino], d))
            })
            .await?;
        let dir = live_dir(self.store.inode(parent)?)?;
        perm::check_dir_write(cred, &dir.attr)?;
        Ok((held, d, dir))
    }

    /// unlink(parent, name) of a non-directory.
    pub async fn op_unlink(&self, cred: &Credentials, parent: InodeId, name: &[u8]) -> FsResult<pb::ChangeReply> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        let (held, d, dir) = self.lock_entry_to_remove(cred, parent, name).await?;
        if d.kind == FileKind::Directory {
            return Err(FsError::IsDir);
        }
        let victim = match self.remote_attr(d.ino).await {
            Ok((a, _)) => Some(a),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        if let Some(v) = &victim {
            perm::check_sticky(cred, &dir.attr, v)?;
        }
        let now = TimeSpec::now();
        let mut steps = vec![Kind::DelEntry(pb::DelEntryStep {
            parent,
            name: name.to_vec().into(),
            expect_ino: d.ino,
            touch_parent: true,
            parent_nlink_delta: 0,
        })];
        if victim.is_some() {
            steps.push(Kind::AdjustInode(pb::AdjustInodeStep {
                ino: d.ino,
                nlink_delta: -1,
                set_parent: 0,
                touch_mtime: false,
                now: Some(time_to_pb(now)),
            }));
        }
        let mut done = self.execute(ino_partition(parent), steps, 1, held, &[parent]).await?;
        Ok(pb::ChangeReply {
            dir: dir_change(&dir.attr, done.take_watched(0)),
            new_dir: None,
            touched: vec![d.ino],
        })
    }

    /// rmdir(parent, name) of an empty directory.
    pub async fn op_rmdir(&self, cred: &Credentials, parent: InodeId, name: &[u8]) -> FsResult<pb::ChangeReply> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if name == b"." {
            return Err(FsError::Invalid("rmdir of .".into()));
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        let (held, d, dir) = self.lock_entry_to_remove(cred, parent, name).await?;
        if d.kind != FileKind::Directory {
            return Err(FsError::NotDir);
        }
        let (victim, _) = self.remote_attr(d.ino).await?;
        perm::check_sticky(cred, &dir.attr, &victim)?;
        let steps = vec![
            Kind::PrepareRmdir(pb::PrepareRmdirStep { ino: d.ino }),
            Kind::DelEntry(pb::DelEntryStep {
                parent,
                name: name.to_vec().into(),
                expect_ino: d.ino,
                touch_parent: true,
                parent_nlink_delta: -1,
            }),
            Kind::DropInode(pb::DropInodeStep { ino: d.ino }),
        ];
        let mut done = self.execute(ino_partition(parent), steps, 1, held, &[parent]).await?;
        Ok(pb::ChangeReply {
            dir: dir_change(&dir.attr, done.take_watched(0)),
            new_dir: None,
            touched: vec![d.ino],
        })
    }

    /// link(ino, new_parent, new_name).
    pub async fn op_link(
        &self,
        cred: &Credentials,
        ino: InodeId,
        new_parent: InodeId,
        new_name: &[u8],
    ) -> FsResult<(pb::Attr, Option<pb::DirChange>)> {
        validate_name(new_name)?;
        self.check_not_pending(new_parent)?;
        let held = self.locks.lock(&[new_parent, ino]).await;
        let dir = live_dir(self.store.inode(new_parent)?)?;
        if self.store.get_dentry(new_parent, new_name)?.is_some() {
            return Err(FsError::Exists);
        }
        perm::check_dir_write(cred, &dir.attr)?;
        let (src, _) = self.remote_attr(ino).await?;
        if src.kind == FileKind::Directory {
            return Err(FsError::Perm);
        }
        if src.nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        let now = TimeSpec::now();
        let steps = vec![
            Kind::AdjustInode(pb::AdjustInodeStep {
                ino,
                nlink_delta: 1,
                set_parent: 0,
                touch_mtime: false,
                now: Some(time_to_pb(now)),
            }),
            Kind::PutEntry(pb::PutEntryStep {
                parent: new_parent,
                name: new_name.to_vec().into(),
                ino,
                kind: src.kind as u32,
                ino_from_step: 0,
                touch_parent: true,
                parent_nlink_delta: 0,
                check_expect: true,
                expect_ino: 0,
            }),
        ];
        let mut done = self
            .execute(ino_partition(new_parent), steps, 1, held, &[new_parent])
            .await?;
        Ok((
            self.attr_pb_any(ino).await?,
            dir_change(&dir.attr, done.take_watched(0)),
        ))
    }

    /// rename(parent, name, new_parent, new_name, flags), run by the source parent's node;
    /// returns the changes of the source parent and, when another, the target parent.
    #[allow(clippy::too_many_arguments)]
    pub async fn op_rename(
        &self,
        cred: &Credentials,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<pb::ChangeReply> {
        const NOREPLACE: u32 = 1;
        const EXCHANGE: u32 = 2;
        if flags & !(NOREPLACE | EXCHANGE) != 0 || flags == NOREPLACE | EXCHANGE {
            return Err(FsError::Invalid("bad rename flags".into()));
        }
        if name.len() > NAME_MAX || new_name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        validate_name(name).map_err(|_| FsError::Invalid("cannot rename . or ..".into()))?;
        validate_name(new_name)?;
        self.check_not_pending(parent)?;
        let np_local = self.serves(ino_partition(new_parent));
        if np_local {
            self.check_not_pending(new_parent)?;
        }
        // Entries on this node are read under the lock; the destination, when remote, is read
        // by RPC and re-checked by the PutEntry step's expectation.
        let mut dst_remote = None;
        if !np_local {
            dst_remote = Some(self.remote_dentry(new_parent, new_name).await?);
        }
        let store = &self.store;
        let base = [parent, if np_local { new_parent } else { 0 }];
        let dst_remote_c = dst_remote;
        let (held, (src, dst)) = self
            .lock_discover(&base, || {
                let src = store.get_dentry(parent, name)?.ok_or(FsError::NotFound)?;
                let dst = match &dst_remote_c {
                    Some(d) => *d,
                    None => store.get_dentry(new_parent, new_name)?,
                };
                Ok((vec![src.ino, dst.map(|d| d.ino).unwrap_or(0)], (src, dst)))
            })
            .await?;
        let pdir = live_dir(self.store.inode(parent)?)?;
        perm::check_dir_write(cred, &pdir.attr)?;
        let (npattr, _) = if np_local {
            let r = live_dir(self.store.inode(new_parent)?)?;
            (r.attr, r.parent)
        } else {
            self.remote_attr(new_parent).await?
        };
        if npattr.kind != FileKind::Directory {
            return Err(FsError::NotDir);
        }
        perm::check_access(cred, &npattr, perm::W_OK | perm::X_OK)?;
        let exchange = flags & EXCHANGE != 0;
        if flags & NOREPLACE != 0 && dst.is_some() {
            return Err(FsError::Exists);
        }
        if exchange && dst.is_none() {
            return Err(FsError::NotFound);
        }
        let moved = parent != new_parent;
        let unchanged = |a: &FileAttr| dir_change(a, Some(a.clone()));
        if dst.is_some_and(|d| d.ino == src.ino) {
            return Ok(pb::ChangeReply {
                dir: unchanged(&pdir.attr),
                new_dir: if moved { unchanged(&npattr) } else { None },
                touched: Vec::new(),
            });
        }
        let (src_attr, _) = self.remote_attr(src.ino).await?;
        perm::check_sticky(cred, &pdir.attr, &src_attr)?;
        let dst_attr = match dst {
            Some(d) => Some(self.remote_attr(d.ino).await?.0),
            None => None,
        };
        if let Some(da) = &dst_attr {
            perm::check_sticky(cred, &npattr, da)?;
        }
        let src_dir = src.kind == FileKind::Directory;
        let dst_dir = dst.is_some_and(|d| d.kind == FileKind::Directory);
        if !exchange && dst.is_some() {
            if src_dir && !dst_dir {
                return Err(FsError::NotDir);
            }
            if !src_dir && dst_dir {
                return Err(FsError::IsDir);
            }
        }
        if moved && src_dir {
            perm::check_access(cred, &src_attr, perm::W_OK)?;
            self.check_not_ancestor(src.ino, new_parent).await?;
        }
        if moved && exchange && dst_dir {
            if let Some(da) = &dst_attr {
                perm::check_access(cred, da, perm::W_OK)?;
            }
            self.check_not_ancestor(dst.map(|d| d.ino).unwrap_or(0), parent).await?;
        }
        let now = Some(time_to_pb(TimeSpec::now()));
        let adjust = |ino: InodeId, set_parent: InodeId, delta: i32| {
            Kind::AdjustInode(pb::AdjustInodeStep {
                ino,
                nlink_delta: delta,
                set_parent,
                touch_mtime: false,
                now,
            })
        };
        let mut steps = Vec::new();
        let commit_at;
        if exchange {
            let d = dst.expect("checked");
            let (pd, nd) = if moved {
                (
                    i32::from(dst_dir) - i32::from(src_dir),
                    i32::from(src_dir) - i32::from(dst_dir),
                )
            } else {
                (0, 0)
            };
            steps.push(Kind::PutEntry(pb::PutEntryStep {
                parent: new_parent,
                name: new_name.to_vec().into(),
                ino: src.ino,
                kind: src.kind as u32,
                ino_from_step: 0,
                touch_parent: true,
                parent_nlink_delta: nd,
                check_expect: true,
                expect_ino: d.ino,
            }));
            commit_at = 1;
            steps.push(Kind::PutEntry(pb::PutEntryStep {
                parent,
                name: name.to_vec().into(),
                ino: d.ino,
                kind: d.kind as u32,
                ino_from_step: 0,
                touch_parent: true,
                parent_nlink_delta: pd,
                check_expect: true,
                expect_ino: src.ino,
            }));
            steps.push(adjust(src.ino, if moved && src_dir { new_parent } else { 0 }, 0));
            steps.push(adjust(d.ino, if moved && dst_dir { parent } else { 0 }, 0));
        } else {
            if dst_dir {
                steps.push(Kind::PrepareRmdir(pb::PrepareRmdirStep {
                    ino: dst.expect("dir").ino,
                }));
            }
            steps.push(Kind::PutEntry(pb::PutEntryStep {
                parent: new_parent,
                name: new_name.to_vec().into(),
                ino: src.ino,
                kind: src.kind as u32,
                ino_from_step: 0,
                touch_parent: true,
                parent_nlink_delta: i32::from(src_dir && moved) - i32::from(dst_dir),
                check_expect: true,
                expect_ino: dst.map(|d| d.ino).unwrap_or(0),
            }));
            commit_at = steps.len();
            steps.push(Kind::DelEntry(pb::DelEntryStep {
                parent,
                name: name.to_vec().into(),
                expect_ino: src.ino,
                touch_parent: true,
                parent_nlink_delta: -i32::from(src_dir && moved),
            }));
            steps.push(adjust(src.ino, if moved && src_dir { new_parent } else { 0 }, 0));
            if let Some(d) = dst {
                if dst_dir {
                    steps.push(Kind::DropInode(pb::DropInodeStep { ino: d.ino }));
                } else {
                    steps.push(adjust(d.ino, 0, -1));
                }
            }
        }
        let mut done = self
            .execute(ino_partition(parent), steps, commit_at, held, &[parent, new_parent])
            .await?;
        let (pafter, npafter) = (done.take_watched(0), done.take_watched(1));
        Ok(pb::ChangeReply {
            dir: dir_change(&pdir.attr, pafter),
            new_dir: if moved { dir_change(&npattr, npafter) } else { None },
            touched: std::iter::once(src.ino).chain(dst.map(|d| d.ino)).collect(),
        })
    }

    /// EINVAL if `dir` is `ancestor` or below it (a directory cannot move into itself).
    async fn check_not_ancestor(&self, ancestor: InodeId, dir: InodeId) -> FsResult<()> {
        let mut cur = dir;
        for _ in 0..4096 {
            if cur == ancestor {
                return Err(FsError::Invalid("cannot move a directory below itself".into()));
            }
            if cur == ROOT_INO || cur == 0 {
                return Ok(());
            }
            cur = self.remote_attr(cur).await?.1;
        }
        Err(FsError::Loop)
    }

    /// One page of a directory listing.
    pub fn op_readdir(
        &self,
        cred: &Credentials,
        ino: InodeId,
        cookie: u64,
        max: u32,
        plus: bool,
    ) -> FsResult<pb::ReadDirReply> {
        self.check_not_pending(ino)?;
        let dir = self.store.inode(ino)?;
        if dir.attr.kind != FileKind::Directory {
            return Err(FsError::NotDir);
        }
        perm::check_access(cred, &dir.attr, perm::R_OK)?;
        let (list, eof) = self.store.list_dir(ino, cookie, max.clamp(1, 4096) as usize)?;
        let mut entries = Vec::with_capacity(list.len());
        for (name, cookie, d) in list {
            let attr = if plus && self.serves(ino_partition(d.ino)) {
                self.store.get_inode(d.ino)?.map(|r| rec_to_pb(&r))
            } else {
                None
            };
            entries.push(pb::DirEntryMsg {
                name: name.into(),
                ino: d.ino,
                kind: d.kind as u32,
                cookie,
                attr,
            });
        }
        Ok(pb::ReadDirReply { entries, eof })
    }

    /// readlink.
    pub fn op_readlink(&self, ino: InodeId) -> FsResult<Bytes> {
        let rec = self.store.inode(ino)?;
        if rec.attr.kind != FileKind::Symlink {
            return Err(FsError::Invalid("not a symlink".into()));
        }
        Ok(Bytes::from(rec.data))
    }

    /// Permission check of an open.
    /// open: the permission check, fresh attributes and, for reading a file whose data lives in
    /// its inode, that data (the caller's first read then needs no round trip).
    pub fn op_open(&self, cred: &Credentials, ino: InodeId, flags: i32) -> FsResult<(pb::Attr, Bytes)> {
        let rec = self.store.inode(ino)?;
        if rec.attr.kind == FileKind::Directory && flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(FsError::IsDir);
        }
        perm::check_access(cred, &rec.attr, perm::open_mask(flags))?;
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            self.check_no_pending_gc(ino)?;
        }
        let readable = flags & libc::O_ACCMODE != libc::O_WRONLY && flags & libc::O_TRUNC == 0;
        let data = if readable && rec.attr.kind == FileKind::Regular && rec.is_inline() {
            Bytes::copy_from_slice(&rec.data)
        } else {
            Bytes::new()
        };
        Ok((rec_to_pb(&rec), data))
    }

    /// access(2).
    pub fn op_access(&self, cred: &Credentials, ino: InodeId, mask: u32) -> FsResult<()> {
        let rec = self.store.inode(ino)?;
        if mask & 7 == 0 {
            return Ok(());
        }
        perm::check_access(cred, &rec.attr, mask)
    }

    /// Read inline data (or say where the data is).
    pub fn op_read(&self, cred: &Credentials, req: &pb::ReadRequest) -> FsResult<pb::ReadReply> {
        let (ino, offset, size) = (req.ino, req.offset, req.size.min(MAX_IO_SIZE as u32));
        let rec = self.store.inode(ino)?;
        if rec.attr.kind == FileKind::Directory {
            return Err(FsError::IsDir);
        }
        if req.check_perm {
            perm::check_io(cred, &rec.attr, false)?;
        }
        let data = if rec.is_inline() {
            let start = (offset.min(rec.data.len() as u64)) as usize;
            let end = (offset.saturating_add(u64::from(size)).min(rec.data.len() as u64)) as usize;
            Bytes::copy_from_slice(&rec.data[start..end])
        } else {
            Bytes::new()
        };
        Ok(pb::ReadReply {
            data,
            attr: Some(rec_to_pb(&rec)),
        })
    }

    /// Write inline data, or turn the file into chunks when the write does not fit inline.
    pub async fn op_write(&self, cred: &Credentials, req: &pb::WriteRequest) -> FsResult<pb::WriteReply> {
        let ino = req.ino;
        // Read before the change: a replica in sync since this epoch has it.
        let epoch = self.router.map().epoch;
        self.check_no_pending_gc(ino)?;
        let _held = self.locks.lock(&[ino]).await;
        let mut rec = self.store.inode(ino)?;
        match rec.attr.kind {
            FileKind::Regular => {}
            FileKind::Directory => return Err(FsError::IsDir),
            _ => return Err(FsError::Invalid("write to a special file".into())),
        }
        if req.check_perm {
            perm::check_io(cred, &rec.attr, true)?;
        }
        let len = req.length.max(req.data.len() as u64);
        if !req.data.is_empty() && req.data.len() as u64 != len {
            return Err(FsError::Invalid("write length does not match its data".into()));
        }
        let end = req.offset.checked_add(len).ok_or(FsError::FileTooBig)?;
        if end > MAX_FILE_SIZE {
            return Err(FsError::FileTooBig);
        }
        if !rec.is_inline() {
            return Ok(pb::WriteReply {
                attr: Some(rec_to_pb(&rec)),
                written: false,
                ..Default::default()
            });
        }
        if len == 0 {
            // A write of nothing changes nothing, not even the times.
            return Ok(pb::WriteReply {
                attr: Some(rec_to_pb(&rec)),
                written: true,
                ..Default::default()
            });
        }
        let written = write_inline(cred, &mut rec, req.offset, &req.data)?;
        if !written {
            self.uninline(&mut rec).await?;
        }
        let mut tx = Tx::new(&self.store);
        tx.put_inode(&rec);
        // An unstable write's change (inline data, or the change to chunked before unstable
        // chunk writes) is synced by the caller's commit (the inline data a change to chunked
        // moved is in chunk 0 already, synced).
        let deferred = req.defer_sync;
        self.commit(tx, !deferred).await?;
        Ok(pb::WriteReply {
            attr: Some(rec_to_pb(&rec)),
            written,
            verifier: if deferred { self.chunks.verifier } else { 0 },
            epoch: if deferred { epoch } else { 0 },
        })
    }

    /// After chunk writes: grow the size to `end` and stamp mtime/ctime.
    pub async fn op_extend(&self, cred: &Credentials, ino: InodeId, end: u64, sync: bool) -> FsResult<pb::Attr> {
        if end > MAX_FILE_SIZE {
            return Err(FsError::FileTooBig);
        }
        self.check_no_pending_gc(ino)?;
        let _held = self.locks.lock(&[ino]).await;
        let mut rec = self.store.inode(ino)?;
        if rec.is_inline() {
            return Err(FsError::Invalid("extend of an inline file".into()));
        }
        let now = TimeSpec::now();
        rec.attr.size = rec.attr.size.max(end);
        rec.attr.mtime = now;
        rec.attr.ctime = now;
        if !cred.is_root() && rec.attr.perm & (libc::S_ISUID | libc::S_ISGID) != 0 {
            kill_priv(&mut rec.attr);
        }
        rec.update_blocks();
        let mut tx = Tx::new(&self.store);
        tx.put_inode(&rec);
        self.commit(tx, sync).await?;
        Ok(rec_to_pb(&rec))
    }

    /// getxattr.
    pub fn op_getxattr(&self, cred: &Credentials, ino: InodeId, name: &[u8]) -> FsResult<Bytes> {
        let rec = self.store.inode(ino)?;
        perm::check_xattr(cred, &rec.attr, name, false)?;
        self.store
            .get(&keys::xattr(ino_partition(ino), ino, name))?
            .map(Bytes::from)
            .ok_or(FsError::NoData)
    }

    /// setxattr (flags: 1 create, 2 replace).
    pub async fn op_setxattr(
        &self,
        cred: &Credentials,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        if value.len() > MAX_XATTR_VALUE {
            return Err(FsError::TooBig);
        }
        let _held = self.locks.lock(&[ino]).await;
        let mut rec = self.store.inode(ino)?;
        perm::check_xattr(cred, &rec.attr, name, true)?;
        let key = keys::xattr(ino_partition(ino), ino, name);
        let old = self.store.get(&key)?;
        let exists = old.is_some();
        if flags & 1 != 0 && exists {
            return Err(FsError::Exists);
        }
        if flags & 2 != 0 && !exists {
            return Err(FsError::NoData);
        }
        // Bound what one inode may hold, so no caller can grow a record set without limit.
        let prefix = keys::xattr_prefix(ino_partition(ino), ino);
        let all = self.store.scan_prefix(&prefix)?;
        let total: usize = all.iter().map(|(k, v)| k.len() - prefix.len() + v.len()).sum();
        let after = total - old.map(|v| name.len() + v.len()).unwrap_or(0) + name.len() + value.len();
        if after > MAX_XATTR_TOTAL || (!exists && all.len() >= MAX_XATTR_COUNT) {
            return Err(FsError::NoSpace);
        }
        let mut tx = Tx::new(&self.store);
        tx.put(key, value.to_vec());
        rec.attr.ctime = TimeSpec::now();
        tx.put_inode(&rec);
        self.commit(tx, true).await
    }

    /// listxattr: the names the caller may see.
    pub fn op_listxattr(&self, cred: &Credentials, ino: InodeId) -> FsResult<Vec<Bytes>> {
        self.store.inode(ino)?;
        let prefix = keys::xattr_prefix(ino_partition(ino), ino);
        Ok(self
            .store
            .scan_prefix(&prefix)?
            .into_iter()
            .map(|(k, _)| Bytes::copy_from_slice(&k[prefix.len()..]))
            .filter(|n| cred.is_root() || !n.starts_with(b"trusted."))
            .collect())
    }

    /// removexattr.
    pub async fn op_removexattr(&self, cred: &Credentials, ino: InodeId, name: &[u8]) -> FsResult<()> {
        let _held = self.locks.lock(&[ino]).await;
        let mut rec = self.store.inode(ino)?;
        perm::check_xattr(cred, &rec.attr, name, true)?;
        let key = keys::xattr(ino_partition(ino), ino, name);
        if self.store.get(&key)?.is_none() {
            return Err(FsError::NoData);
        }
        let mut tx = Tx::new(&self.store);
        tx.delete(key);
        rec.attr.ctime = TimeSpec::now();
        tx.put_inode(&rec);
        self.commit(tx, true).await
    }

    /// Create the root directory if this node serves its partition and it does not exist yet.
    pub async fn ensure_root(&self) -> FsResult<()> {
        if !self.serves(ino_partition(ROOT_INO)) || self.store.get_inode(ROOT_INO)?.is_some() {
            return Ok(());
        }
        let now = TimeSpec::now();
        let rec = InodeRecord {
            attr: FileAttr {
                ino: ROOT_INO,
                kind: FileKind::Directory,
                perm: 0o755,
                nlink: 2,
                uid: 0,
                gid: 0,
                size: 4096,
                blocks: 8,
                atime: now,
                mtime: now,
                ctime: now,
                rdev: 0,
                generation: 1,
            },
            parent: ROOT_INO,
            chunk_size: self.router.map().chunk_size,
            flags: 0,
            data: Vec::new(),
        };
        let mut tx = Tx::new(&self.store);
        tx.put_inode(&rec);
        self.commit(tx, true).await?;
        tracing::info!("created the root directory");
        Ok(())
    }
}
