//! The storage node's gRPC service: decode, check that this node serves the partition, run the
//! operation, encode. Errors become tonic::Status through sealfs-proto.

use std::sync::Arc;

use sealfs_core::attr::{SetAttr, TimeUpdate};
use sealfs_core::config::MAX_IO_SIZE;
use sealfs_core::ids::ino_partition;
use sealfs_core::{FsError, FsResult};
use sealfs_proto::attach;
use sealfs_proto::pb::{self, node_server};
use sealfs_proto::{creds_from_ctx, split_pieces, status_from_error, time_from_pb};
use tonic::{Request, Response, Status};

use crate::node::{step_partition, Node};
use crate::replication::ChunkOp;

/// The gRPC face of a node.
pub struct NodeService(pub Arc<Node>);

type R<T> = Result<Response<T>, Status>;

fn done<T>(r: FsResult<T>) -> R<T> {
    r.map(Response::new).map_err(|e| status_from_error(&e))
}

fn tu(t: Option<&pb::TimeUpdate>) -> Option<TimeUpdate> {
    t.map(|t| {
        if t.now {
            TimeUpdate::Now
        } else {
            TimeUpdate::Set(time_from_pb(t.time.as_ref()))
        }
    })
}

fn chunk_id(c: Option<&pb::ChunkId>) -> FsResult<(u64, u64)> {
    c.map(|c| (c.ino, c.index))
        .ok_or_else(|| FsError::Invalid("missing chunk id".into()))
}

impl NodeService {
    async fn chunk_partition(&self, ctx: Option<&pb::Ctx>, ino: u64, index: u64) -> FsResult<u32> {
        let p = self.0.router.map().chunk_partition(ino, index);
        self.0.check(ctx, p).await?;
        Ok(p)
    }

    /// WriteChunk and WriteChunkPieces: one write, or several to one chunk, checked to fit the
    /// chunk and applied (and replicated) as one change.
    async fn write_chunk_any(&self, req: Request<pb::WriteChunkRequest>) -> R<pb::WriteChunkReply> {
        let (_, mut ext, mut r) = req.into_parts();
        attach::take_into(&mut ext, &mut r.data);
        done(
            async {
                let (ino, index) = chunk_id(r.chunk.as_ref())?;
                let p = self.chunk_partition(r.ctx.as_ref(), ino, index).await?;
                if r.chunk_size == 0 || r.data.len() > MAX_IO_SIZE {
                    return Err(FsError::Invalid(format!(
                        "chunk write of {} bytes with chunk size {}",
                        r.data.len(),
                        r.chunk_size
                    )));
                }
                // Checked here, before anything is written or forwarded.
                split_pieces(r.offset, &r.data, &r.pieces, u64::from(r.chunk_size))?;
                let epoch = self.0.router.map().epoch;
                let op = ChunkOp::Write {
                    offset: r.offset,
                    data: r.data,
                    stable: r.stable,
                    pieces: r.pieces,
                };
                self.0.chunk_op(p, ino, index, op).await?;
                Ok(pb::WriteChunkReply {
                    verifier: self.0.chunks.verifier,
                    epoch,
                })
            }
            .await,
        )
    }
}

#[tonic::async_trait]
impl node_server::Node for NodeService {
    async fn lookup(&self, req: Request<pb::LookupRequest>) -> R<pb::EntryReply> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.parent).await?;
                let attr = self
                    .0
                    .op_lookup(&creds_from_ctx(r.ctx.as_ref()), r.parent, &r.name)
                    .await?;
                Ok(pb::EntryReply {
                    attr: Some(attr),
                    dir: None,
                })
            }
            .await,
        )
    }

    async fn get_attr(&self, req: Request<pb::InoRequest>) -> R<pb::AttrReply> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.ino).await?;
                Ok(pb::AttrReply {
                    attr: Some(self.0.op_getattr(r.ino)?),
                    ..Default::default()
                })
            }
            .await,
        )
    }

    async fn set_attr(&self, req: Request<pb::SetAttrRequest>) -> R<pb::AttrReply> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.ino).await?;
                let s = SetAttr {
                    perm: r.perm,
                    uid: r.uid,
                    gid: r.gid,
                    size: r.size,
                    atime: tu(r.atime.as_ref()),
                    mtime: tu(r.mtime.as_ref()),
                    via_open_handle: r.via_open_handle,
                };
                let deferred = r.defer_sync && s.size.is_none();
                // Read before the change: a replica in sync since this epoch has it.
                let epoch = self.0.router.map().epoch;
                let first = (!r.write_data.is_empty()).then_some((r.write_offset, &r.write_data[..]));
                let cred = creds_from_ctx(r.ctx.as_ref());
                let Some(attr) = self.0.op_setattr(&cred, r.ino, &s, !deferred, first).await? else {
                    // The held writes do not fit inline: nothing was changed.
                    return Ok(pb::AttrReply::default());
                };
                Ok(pb::AttrReply {
                    attr: Some(attr),
                    verifier: if deferred { self.0.chunks.verifier } else { 0 },
                    epoch: if deferred { epoch } else { 0 },
                    wrote: first.is_some(),
                    ..Default::default()
                })
            }
            .await,
        )
    }

    async fn create(&self, req: Request<pb::CreateRequest>) -> R<pb::EntryReply> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.parent).await?;
                let (attr, dir) = self.0.op_create(&creds_from_ctx(r.ctx.as_ref()), &r).await?;
                Ok(pb::EntryReply { attr: Some(attr), dir })
            }
            .await,
        )
    }

    async fn mkdir(&self, req: Request<pb::MkdirRequest>) -> R<pb::EntryReply> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.parent).await?;
                let (attr, dir) = self
                    .0
                    .op_mkdir(&creds_from_ctx(r.ctx.as_ref()), r.parent, &r.name, r.perm)
                    .await?;
                Ok(pb::EntryReply { attr: Some(attr), dir })
            }
            .await,
        )
    }

    async fn unlink(&self, req: Request<pb::NameRequest>) -> R<pb::ChangeReply> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.parent).await?;
                self.0
                    .op_unlink(&creds_from_ctx(r.ctx.as_ref()), r.parent, &r.name)
                    .await
            }
            .await,
        )
    }

    async fn rmdir(&self, req: Request<pb::NameRequest>) -> R<pb::ChangeReply> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.parent).await?;
                self.0
                    .op_rmdir(&creds_from_ctx(r.ctx.as_ref()), r.parent, &r.name)
                    .await
            }
            .await,
        )
    }

    async fn rename(&self, req: Request<pb::RenameRequest>) -> R<pb::ChangeReply> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.parent).await?;
                self.0
                    .op_rename(
                        &creds_from_ctx(r.ctx.as_ref()),
                        r.parent,
                        &r.name,
                        r.new_parent,
                        &r.new_name,
                        r.flags,
                    )
                    .await
            }
            .await,
        )
    }

    async fn link(&self, req: Request<pb::LinkRequest>) -> R<pb::EntryReply> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.new_parent).await?;
                let (attr, dir) = self
                    .0
                    .op_link(&creds_from_ctx(r.ctx.as_ref()), r.ino, r.new_parent, &r.new_name)
                    .await?;
                Ok(pb::EntryReply { attr: Some(attr), dir })
            }
            .await,
        )
    }

    async fn read_dir(&self, req: Request<pb::ReadDirRequest>) -> R<pb::ReadDirReply> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.ino).await?;
                self.0
                    .op_readdir(&creds_from_ctx(r.ctx.as_ref()), r.ino, r.cookie, r.max_entries, r.plus)
            }
            .await,
        )
    }

    async fn read_link(&self, req: Request<pb::InoRequest>) -> R<pb::ReadLinkReply> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.ino).await?;
                Ok(pb::ReadLinkReply {
                    target: self.0.op_readlink(r.ino)?,
                })
            }
            .await,
        )
    }

    async fn open(&self, req: Request<pb::OpenRequest>) -> R<pb::AttrReply> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.ino).await?;
                let (attr, inline_data) = self.0.op_open(&creds_from_ctx(r.ctx.as_ref()), r.ino, r.flags)?;
                Ok(pb::AttrReply {
                    attr: Some(attr),
                    inline_data,
                    ..Default::default()
                })
            }
            .await,
        )
    }

    async fn access(&self, req: Request<pb::AccessRequest>) -> R<pb::Empty> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.ino).await?;
                self.0.op_access(&creds_from_ctx(r.ctx.as_ref()), r.ino, r.mask)?;
                Ok(pb::Empty {})
            }
            .await,
        )
    }

    async fn read(&self, req: Request<pb::ReadRequest>) -> R<pb::ReadReply> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.ino).await?;
                self.0.op_read(&creds_from_ctx(r.ctx.as_ref()), &r)
            }
            .await,
        )
    }

    async fn write(&self, req: Request<pb::WriteRequest>) -> R<pb::WriteReply> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.ino).await?;
                self.0.op_write(&creds_from_ctx(r.ctx.as_ref()), &r).await
            }
            .await,
        )
    }

    async fn extend_size(&self, req: Request<pb::ExtendRequest>) -> R<pb::ExtendReply> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.ino).await?;
                // Read before the change: a replica in sync since this epoch has it.
                let epoch = self.0.router.map().epoch;
                let attr = self
                    .0
                    .op_extend(&creds_from_ctx(r.ctx.as_ref()), r.ino, r.end, r.sync)
                    .await?;
                Ok(pb::ExtendReply {
                    attr: Some(attr),
                    verifier: self.0.chunks.verifier,
                    epoch,
                })
            }
            .await,
        )
    }

    async fn sync_inode(&self, req: Request<pb::SyncInodeRequest>) -> R<pb::Empty> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.ino).await?;
                let p = ino_partition(r.ino);
                let since_epoch = if r.verifier != 0 {
                    self.0
                        .vouch(p, r.verifier, r.epoch, "unsynced size or attribute changes")?;
                    r.epoch
                } else {
                    0
                };
                self.0.sync_partition(p, since_epoch).await?;
                Ok(pb::Empty {})
            }
            .await,
        )
    }

    async fn read_chunk(&self, req: Request<pb::ReadChunkRequest>) -> R<pb::ReadChunkReply> {
        let (_, ext, r) = req.into_parts();
        let data = async {
            let (ino, index) = chunk_id(r.chunk.as_ref())?;
            let size = (r.size as usize).min(MAX_IO_SIZE);
            if r.from_replica {
                let p = self.0.check_replica_read(ino, index)?;
                return self.0.chunks.read(p, ino, index, u64::from(r.offset), size).await;
            }
            let p = self.chunk_partition(r.ctx.as_ref(), ino, index).await?;
            match self.0.chunks.read(p, ino, index, u64::from(r.offset), size).await {
                Err(FsError::Corrupt(why)) => {
                    // Never serve it; put it right from another copy if there is one.
                    if let Err(e) = self.0.repair_chunk(p, ino, index).await {
                        return Err(FsError::Corrupt(format!("{why}; not repaired: {e}")));
                    }
                    self.0.chunks.read(p, ino, index, u64::from(r.offset), size).await
                }
                r => r,
            }
        }
        .await
        .map_err(|e| status_from_error(&e))?;
        Ok(attach::reply(
            &ext,
            pb::ReadChunkReply::default(),
            attach::READ_CHUNK_DATA,
            data,
            |m, d| m.data = d,
        ))
    }

    async fn write_chunk(&self, req: Request<pb::WriteChunkRequest>) -> R<pb::WriteChunkReply> {
        self.write_chunk_any(req).await
    }

    async fn write_chunk_pieces(&self, req: Request<pb::WriteChunkRequest>) -> R<pb::WriteChunkReply> {
        self.write_chunk_any(req).await
    }

    async fn commit(&self, req: Request<pb::CommitRequest>) -> R<pb::CommitReply> {
        let r = req.into_inner();
        done(
            async {
                let mut list = Vec::with_capacity(r.chunks.len());
                for c in &r.chunks {
                    let p = self.chunk_partition(r.ctx.as_ref(), c.ino, c.index).await?;
                    self.0.vouch(p, r.verifier, r.epoch, "unstable writes")?;
                    list.push((p, c.ino, c.index));
                }
                let commit = ChunkOp::Commit { since_epoch: r.epoch };
                futures::future::try_join_all(
                    list.into_iter()
                        .map(|(p, ino, index)| self.0.chunk_op(p, ino, index, commit.clone())),
                )
                .await?;
                Ok(pb::CommitReply {
                    verifier: self.0.chunks.verifier,
                })
            }
            .await,
        )
    }

    async fn truncate_chunk(&self, req: Request<pb::TruncateChunkRequest>) -> R<pb::Empty> {
        let r = req.into_inner();
        done(
            async {
                let (ino, index) = chunk_id(r.chunk.as_ref())?;
                let p = self.chunk_partition(r.ctx.as_ref(), ino, index).await?;
                self.0.chunk_op(p, ino, index, ChunkOp::Truncate(r.length)).await?;
                Ok(pb::Empty {})
            }
            .await,
        )
    }

    async fn replicate_meta(&self, req: Request<pb::ReplicateMetaRequest>) -> R<pb::ReplicateReply> {
        done(
            self.0
                .apply_replicated_meta(req.into_inner())
                .await
                .map(|epoch| pb::ReplicateReply { epoch }),
        )
    }

    async fn replicate_chunk_pieces(&self, req: Request<pb::ReplicateChunkRequest>) -> R<pb::ReplicateReply> {
        self.replicate_chunk(req).await
    }

    async fn replicate_chunk(&self, req: Request<pb::ReplicateChunkRequest>) -> R<pb::ReplicateReply> {
        let (_, mut ext, mut r) = req.into_parts();
        if let Some(pb::replicate_chunk_request::Op::Write(w)) = r.op.as_mut() {
            attach::take_into(&mut ext, &mut w.data);
        }
        done(
            self.0
                .apply_replicated_chunk(r)
                .await
                .map(|epoch| pb::ReplicateReply { epoch }),
        )
    }

    async fn fill(&self, req: Request<pb::FillRequest>) -> R<pb::FillReply> {
        done(self.0.apply_fill(req.into_inner()).await)
    }

    async fn get_xattr(&self, req: Request<pb::XattrRequest>) -> R<pb::XattrReply> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.ino).await?;
                Ok(pb::XattrReply {
                    value: self.0.op_getxattr(&creds_from_ctx(r.ctx.as_ref()), r.ino, &r.name)?,
                })
            }
            .await,
        )
    }

    async fn set_xattr(&self, req: Request<pb::XattrRequest>) -> R<pb::Empty> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.ino).await?;
                self.0
                    .op_setxattr(&creds_from_ctx(r.ctx.as_ref()), r.ino, &r.name, &r.value, r.flags)
                    .await?;
                Ok(pb::Empty {})
            }
            .await,
        )
    }

    async fn list_xattr(&self, req: Request<pb::InoRequest>) -> R<pb::ListXattrReply> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.ino).await?;
                Ok(pb::ListXattrReply {
                    names: self.0.op_listxattr(&creds_from_ctx(r.ctx.as_ref()), r.ino)?,
                })
            }
            .await,
        )
    }

    async fn remove_xattr(&self, req: Request<pb::XattrRequest>) -> R<pb::Empty> {
        let r = req.into_inner();
        done(
            async {
                self.0.check_ino(r.ctx.as_ref(), r.ino).await?;
                self.0
                    .op_removexattr(&creds_from_ctx(r.ctx.as_ref()), r.ino, &r.name)
                    .await?;
                Ok(pb::Empty {})
            }
            .await,
        )
    }

    async fn apply_step(&self, req: Request<pb::StepRequest>) -> R<pb::StepReply> {
        let r = req.into_inner();
        done(
            async {
                let kind = r
                    .step
                    .and_then(|s| s.kind)
                    .ok_or_else(|| FsError::Invalid("step request without a step".into()))?;
                if let Some(p) = step_partition(&kind) {
                    if p != r.partition {
                        return Err(FsError::Invalid("step names another partition than its target".into()));
                    }
                }
                self.0.check(r.ctx.as_ref(), r.partition).await?;
                let ino = self
                    .0
                    .apply_marked(r.intent_id, r.step_index, r.partition, &kind, true)
                    .await?;
                Ok(pb::StepReply { ino })
            }
            .await,
        )
    }

    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<pb::WatchEvents, Status>>;

    async fn watch(&self, _req: Request<pb::WatchRequest>) -> R<Self::WatchStream> {
        let subscriber = sealfs_proto::auth::current_origin().unwrap_or(0);
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            self.0.changes.watch(subscriber),
        )))
    }

    async fn stat_fs(&self, _req: Request<pb::Ctx>) -> R<pb::StatFsReply> {
        let (total, free) = self.0.chunks.space();
        done(Ok(pb::StatFsReply {
            total_bytes: total,
            free_bytes: free,
            inodes: self.0.store.estimate_keys(),
        }))
    }
}
