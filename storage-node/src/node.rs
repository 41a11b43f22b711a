//! The storage node's state and the cross-partition protocol.
//!
//! An operation that touches several partitions (mkdir, rmdir, rename, link, unlink of an inode
//! kept elsewhere) is a list of steps, each applied atomically on the partition it names. When
//! every partition is served here, all steps run in one RocksDB batch. Otherwise the coordinator
//! first persists an intent record with the whole list (in the partition of the request), then
//! applies the steps in order (remote ones by RPC), each together with an applied-marker in the
//! step's partition so that a replay returns the recorded result instead of applying it twice,
//! then answers and deletes the intent and the markers in the background (an intent whose
//! deletion a stop cut short is replayed at the next start: its steps find their markers and
//! are skipped). Steps before `commit_at` may fail: the intent is then
//! aborted and the steps that did apply are undone. From `commit_at` on the intent only rolls
//! forward. Intents left by a crash are replayed at start-up; the directories they touch answer
//! "unavailable, retry" until then, so no client sees half an operation.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use prost::Message;
use sealfs_client::Router;
use sealfs_core::attr::{FileAttr, FileKind, TimeSpec};
use sealfs_core::ids::ino_partition;
use sealfs_core::{Credentials, FsError, FsResult, InodeId, PartitionId};
use sealfs_proto::pb::{self, step::Kind};
use sealfs_proto::{attr_from_pb, attr_to_pb, ctx};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::chunks::ChunkStore;
use crate::keys;
use crate::locks::{Held, Locks};
use crate::records::{DentryRecord, GcRecord, InodeRecord, FLAG_DYING};
use crate::store::MetaStore;
use crate::tx::Tx;

const INTENT_VERSION: u32 = 1;
/// How long a step sent on behalf of another node's intent waits for a lock before it answers
/// "busy, retry": two coordinators waiting on each other's locks thus back off, never deadlock.
const STEP_LOCK_WAIT: Duration = Duration::from_secs(2);

/// What [`Node::execute`] did: each step's result, and the attributes of the watched
/// directories as the operation left them (None where not read atomically).
pub struct Executed {
    /// One result per step (a new inode's id for CreateInode, else 0).
    pub results: Vec<u64>,
    /// The watched directories' attributes, in the order they were asked for.
    pub watched: Vec<Option<FileAttr>>,
}

impl Executed {
    /// Take the attributes of the `i`th watched directory.
    pub fn take_watched(&mut self, i: usize) -> Option<FileAttr> {
        self.watched.get_mut(i).and_then(Option::take)
    }
}

/// A storage node.
pub struct Node {
    pub id: u64,
    pub store: MetaStore,
    pub chunks: ChunkStore,
    pub router: Arc<Router>,
    pub locks: Locks,
    /// Directories with an intent being replayed or retried: their entries are not served until
    /// it is done (value: how many such intents).
    pub pending: DashMap<InodeId, u32>,
    /// Files whose chunks are still being cut after a truncate: no writes until it is done.
    pub pending_gc: DashMap<InodeId, ()>,
    /// Wakes the background worker that removes chunk data.
    pub cleanup: Notify,
    /// Forwarding, fencing and fills (replication.rs).
    pub repl: crate::replication::Replication,
    /// Committed metadata changes, for the clients watching them (watch.rs).
    pub changes: crate::watch::Changes,
    /// Intents of answered operations, for [`Node::finish_worker`] to delete.
    pub finishing: Finishing,
    /// Creates waiting for their directory's turn (batch.rs).
    pub creates: crate::batch::CreateQueues,
    /// What the background scrub found (scrub.rs).
    pub scrub: crate::scrub::ScrubStats,
}

/// An intent whose steps are done: the partition of its record, its id and the record.
type Finished = (PartitionId, u64, pb::IntentRecord);

/// The queue of intents left to delete once their operation was answered: deleting one (and
/// then its markers) takes two more replicated commits, which the caller need not wait for.
pub struct Finishing {
    tx: tokio::sync::mpsc::UnboundedSender<Finished>,
    rx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Finished>>>,
}

impl Default for Finishing {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Finishing {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

/// The partition a step changes (None: a Forget, which names it in the request).
pub fn step_partition(step: &Kind) -> Option<PartitionId> {
    Some(match step {
        Kind::CreateInode(s) => s.partition,
        Kind::PrepareRmdir(s) => ino_partition(s.ino),
        Kind::CancelRmdir(s) => ino_partition(s.ino),
        Kind::DropInode(s) => ino_partition(s.ino),
        Kind::AdjustInode(s) => ino_partition(s.ino),
        Kind::PutEntry(s) => ino_partition(s.parent),
        Kind::DelEntry(s) => ino_partition(s.parent),
        Kind::Forget(_) => return None,
    })
}

/// A step's kind, as failpoints name it.
fn step_name(step: &Kind) -> &'static str {
    match step {
        Kind::CreateInode(_) => "create-inode",
        Kind::PrepareRmdir(_) => "prepare-rmdir",
        Kind::CancelRmdir(_) => "cancel-rmdir",
        Kind::DropInode(_) => "drop-inode",
        Kind::AdjustInode(_) => "adjust-inode",
        Kind::PutEntry(_) => "put-entry",
        Kind::DelEntry(_) => "del-entry",
        Kind::Forget(_) => "forget",
    }
}

/// The inode a step locks on the node applying it (0: none).
fn step_lock_ino(step: &Kind) -> InodeId {
    match step {
        Kind::CreateInode(_) | Kind::Forget(_) => 0,
        Kind::PrepareRmdir(s) => s.ino,
        Kind::CancelRmdir(s) => s.ino,
        Kind::DropInode(s) => s.ino,
        Kind::AdjustInode(s) => s.ino,
        Kind::PutEntry(s) => s.parent,
        Kind::DelEntry(s) => s.parent,
    }
}

/// The directory whose entries a step changes, if any.
fn step_dir(step: &Kind) -> Option<InodeId> {
    match step {
        Kind::PutEntry(s) => Some(s.parent),
        Kind::DelEntry(s) => Some(s.parent),
        _ => None,
    }
}

/// Wire attributes of a stored inode.
pub fn rec_to_pb(rec: &InodeRecord) -> pb::Attr {
    let mut a = attr_to_pb(&rec.attr, rec.is_inline(), rec.chunk_size);
    a.parent = rec.parent;
    a
}

fn jitter(d: Duration) -> Duration {
    d + Duration::from_millis(rand::random::<u64>() % (d.as_millis() as u64 / 2 + 1))
}

impl Node {
    /// Whether this node is the primary of `p` in its current map.
    pub fn serves(&self, p: PartitionId) -> bool {
        self.router.map().primary(p).is_some_and(|n| n.id == self.id)
    }

    /// Partitions this node is primary of.
    pub fn served_partitions(&self) -> Vec<PartitionId> {
        self.router.map().primary_partitions(self.id)
    }

    /// Check that a request for partition `p` may be served here, refreshing the map when the
    /// caller has seen a newer one.
    pub async fn check(&self, c: Option<&pb::Ctx>, p: PartitionId) -> FsResult<()> {
        let caller = c.map(|c| c.epoch).unwrap_or(0);
        let mut map = self.router.map();
        if caller > map.epoch {
            self.router.refresh_map(map.epoch).await;
            map = self.router.map();
        }
        if !map.has_partition(p) {
            return Err(FsError::Stale);
        }
        if map.primary(p).is_some_and(|n| n.id == self.id) {
            if self.repl.was_away() {
                return Err(FsError::Unavailable(
                    "this node was paused; it waits for the manager's word".into(),
                ));
            }
            if self.repl.fenced.contains_key(&p) {
                return Err(FsError::Unavailable(format!(
                    "partition {p} waits for the manager to drop a failed replica"
                )));
            }
            Ok(())
        } else {
            Err(FsError::WrongEpoch {
                caller,
                node: map.epoch,
            })
        }
    }

    /// Check the partition of an inode.
    pub async fn check_ino(&self, c: Option<&pb::Ctx>, ino: InodeId) -> FsResult<()> {
        self.check(c, ino_partition(ino)).await
    }

    /// Refuse to serve entries of a directory whose intent is still being recovered.
    pub fn check_not_pending(&self, dir: InodeId) -> FsResult<()> {
        if self.pending.contains_key(&dir) {
            return Err(FsError::Unavailable(
                "directory has an operation being recovered".into(),
            ));
        }
        Ok(())
    }

    /// Refuse writes to a file whose truncation is still being applied to its chunks.
    pub fn check_no_pending_gc(&self, ino: InodeId) -> FsResult<()> {
        if self.pending_gc.contains_key(&ino) {
            return Err(FsError::Unavailable("file has a truncation being recovered".into()));
        }
        Ok(())
    }

    fn mark_pending(&self, dirs: &[InodeId]) {
        for d in dirs {
            *self.pending.entry(*d).or_insert(0) += 1;
        }
    }

    fn unmark_pending(&self, dirs: &[InodeId]) {
        for d in dirs {
            self.pending.remove_if_mut(d, |_, n| {
                *n -= 1;
                *n == 0
            });
        }
    }

    /// Attributes (and parent) of any inode: a local read, or a call to the node that has it.
    pub async fn remote_attr(&self, ino: InodeId) -> FsResult<(FileAttr, InodeId)> {
        let a = self.attr_pb_any(ino).await?;
        Ok((attr_from_pb(&a)?, a.parent))
    }

    /// Wire attributes of any inode.
    pub async fn attr_pb_any(&self, ino: InodeId) -> FsResult<pb::Attr> {
        let p = ino_partition(ino);
        if self.serves(p) {
            return Ok(rec_to_pb(&self.store.inode(ino)?));
        }
        let r = self
            .router
            .call(p, |mut c, epoch| {
                let req = pb::InoRequest {
                    ctx: Some(ctx(epoch, &Credentials::root())),
                    ino,
                };
                async move { c.get_attr(req).await }
            })
            .await?;
        r.attr
            .ok_or_else(|| FsError::Io("getattr reply without attributes".into()))
    }

    /// Look an entry up in a directory on any node, without permission checks.
    pub async fn remote_dentry(&self, parent: InodeId, name: &[u8]) -> FsResult<Option<DentryRecord>> {
        let p = ino_partition(parent);
        if self.serves(p) {
            return self.store.get_dentry(parent, name);
        }
        let name = bytes::Bytes::copy_from_slice(name);
        let r = self
            .router
            .call(p, |mut c, epoch| {
                let req = pb::LookupRequest {
                    ctx: Some(ctx(epoch, &Credentials::root())),
                    parent,
                    name: name.clone(),
                };
                async move { c.lookup(req).await }
            })
            .await;
        match r {
            Ok(r) => {
                let a = r
                    .attr
                    .ok_or_else(|| FsError::Io("lookup reply without attributes".into()))?;
                Ok(Some(DentryRecord {
                    ino: a.ino,
                    kind: attr_from_pb(&a)?.kind,
                }))
            }
            Err(FsError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A new inode id in partition `p` (served here), never handed out before.
    pub async fn alloc_ino(&self, p: PartitionId) -> FsResult<InodeId> {
        self.store
            .alloc_ino(p, async |ops| self.commit_ops(ops, true).await)
            .await
    }

    async fn new_intent_id(&self) -> FsResult<u64> {
        Ok((self.id << 40) | self.store.alloc_intent_seq().await?)
    }

    /// Record (inside `tx`) that the chunks of `ino` from byte `from` up to `to` must go.
    pub fn queue_chunk_removal(
        &self,
        tx: &mut Tx<'_>,
        ino: InodeId,
        from: u64,
        to: u64,
        chunk_size: u32,
    ) -> FsResult<()> {
        if to <= from {
            return Ok(());
        }
        let key = keys::gc(ino_partition(ino), ino);
        let mut rec = GcRecord { from, to, chunk_size };
        if let Some(old) = tx.get(&key)? {
            rec = GcRecord::decode(&old)?.merge(rec);
        }
        tx.put(key, rec.encode().to_vec());
        Ok(())
    }

    /// Drop an inode record (and queue removal of its chunks).
    fn drop_inode(&self, tx: &mut Tx<'_>, rec: &InodeRecord) -> FsResult<()> {
        tx.del_inode(rec.attr.ino)?;
        if rec.attr.kind == FileKind::Regular && !rec.is_inline() && rec.attr.size > 0 {
            self.queue_chunk_removal(tx, rec.attr.ino, 0, rec.attr.size, rec.chunk_size)?;
        }
        Ok(())
    }

    /// Apply one step to a transaction. Returns the inode id a CreateInode allocated (else 0).
    pub async fn apply_step(&self, tx: &mut Tx<'_>, step: &Kind) -> FsResult<u64> {
        let now = TimeSpec::now();
        let parent_times = |parent: &mut InodeRecord, nlink_delta: i32| {
            let n = i64::from(parent.attr.nlink) + i64::from(nlink_delta);
            parent.attr.nlink = n.clamp(1, i64::from(u32::MAX)) as u32;
            parent.attr.mtime = now;
            parent.attr.ctime = now;
        };
        match step {
            Kind::CreateInode(s) => {
                let a = s
                    .attr
                    .as_ref()
                    .ok_or_else(|| FsError::Invalid("create step without attr".into()))?;
                let mut attr = attr_from_pb(a)?;
                let ino = self.alloc_ino(s.partition).await?;
                attr.ino = ino;
                let rec = InodeRecord {
                    attr,
                    parent: s.parent,
                    chunk_size: self.router.map().chunk_size,
                    flags: 0,
                    data: Vec::new(),
                };
                tx.put_inode(&rec);
                Ok(ino)
            }
            Kind::PrepareRmdir(s) => {
                let mut rec = tx.dir(s.ino)?;
                if !tx.dir_is_empty(s.ino)? {
                    return Err(FsError::NotEmpty);
                }
                rec.flags |= FLAG_DYING;
                tx.put_inode(&rec);
                Ok(0)
            }
            Kind::CancelRmdir(s) => {
                if let Some(mut rec) = tx.get_inode(s.ino)? {
                    rec.flags &= !FLAG_DYING;
                    tx.put_inode(&rec);
                }
                Ok(0)
            }
            Kind::DropInode(s) => {
                if let Some(rec) = tx.get_inode(s.ino)? {
                    self.drop_inode(tx, &rec)?;
                }
                Ok(0)
            }
            Kind::AdjustInode(s) => {
                let mut rec = tx.inode(s.ino)?;
                let nlink = i64::from(rec.attr.nlink) + i64::from(s.nlink_delta);
                rec.attr.nlink = nlink.clamp(0, i64::from(u32::MAX)) as u32;
                if s.set_parent != 0 {
                    rec.parent = s.set_parent;
                }
                let t = s
                    .now
                    .as_ref()
                    .map(|t| TimeSpec {
                        sec: t.sec,
                        nsec: t.nsec,
                    })
                    .unwrap_or(now);
                rec.attr.ctime = t;
                if s.touch_mtime {
                    rec.attr.mtime = t;
                }
                if rec.attr.nlink == 0 && rec.attr.kind != FileKind::Directory {
                    self.drop_inode(tx, &rec)?;
                } else {
                    tx.put_inode(&rec);
                }
                Ok(0)
            }
            Kind::PutEntry(s) => {
                let mut parent = tx.dir(s.parent)?;
                if parent.flags & FLAG_DYING != 0 {
                    return Err(FsError::NotFound);
                }
                let kind = u8::try_from(s.kind)
                    .ok()
                    .and_then(FileKind::from_u8)
                    .ok_or_else(|| FsError::Invalid("bad kind in step".into()))?;
                if s.check_expect {
                    match (tx.get_dentry(s.parent, &s.name)?, s.expect_ino) {
                        (None, 0) => {}
                        (Some(d), e) if d.ino == e => {}
                        (None, _) => return Err(FsError::NotFound),
                        (Some(_), _) => return Err(FsError::Exists),
                    }
                }
                if s.ino == 0 {
                    return Err(FsError::Invalid("entry without an inode".into()));
                }
                tx.put_dentry(s.parent, &s.name, DentryRecord { ino: s.ino, kind });
                if s.touch_parent || s.parent_nlink_delta != 0 {
                    parent_times(&mut parent, s.parent_nlink_delta);
                    tx.put_inode(&parent);
                }
                Ok(0)
            }
            Kind::DelEntry(s) => {
                let d = tx.get_dentry(s.parent, &s.name)?.ok_or(FsError::NotFound)?;
                if s.expect_ino != 0 && d.ino != s.expect_ino {
                    return Err(FsError::NotFound);
                }
                tx.del_dentry(s.parent, &s.name);
                if s.touch_parent || s.parent_nlink_delta != 0 {
                    let mut parent = tx.inode(s.parent)?;
                    parent_times(&mut parent, s.parent_nlink_delta);
                    tx.put_inode(&parent);
                }
                Ok(0)
            }
            Kind::Forget(_) => Ok(0),
        }
    }

    /// Apply step `index` of intent `id` to partition `p` (served here), together with its
    /// applied-marker; a step already applied returns its recorded result. `take_lock` is false
    /// when the caller already holds the lock of what the step changes.
    pub async fn apply_marked(
        &self,
        id: u64,
        index: u32,
        p: PartitionId,
        step: &Kind,
        take_lock: bool,
    ) -> FsResult<u64> {
        if let Kind::Forget(_) = step {
            let mut tx = Tx::new(&self.store);
            for (k, _) in self.store.scan_prefix(&keys::applied_prefix(p, id))? {
                tx.delete(k);
            }
            self.commit(tx, false).await?;
            return Ok(0);
        }
        let _held = if take_lock {
            Some(self.locks.lock_timeout(&[step_lock_ino(step)], STEP_LOCK_WAIT).await?)
        } else {
            None
        };
        let marker = keys::applied(p, id, index);
        if let Some(v) = self.store.get_u64(&marker)? {
            return Ok(v);
        }
        let mut tx = Tx::new(&self.store);
        let r = self.apply_step(&mut tx, step).await?;
        tx.put(marker, r.to_be_bytes().to_vec());
        let removal = tx.records_removal();
        self.commit(tx, true).await?;
        if removal {
            self.cleanup.notify_one();
        }
        Ok(r)
    }

    async fn send_step(&self, id: u64, index: u32, p: PartitionId, step: &Kind, locked: bool) -> FsResult<u64> {
        if self.serves(p) {
            return self.apply_marked(id, index, p, step, !locked).await;
        }
        let r = self
            .router
            .call(p, |mut c, epoch| {
                let req = pb::StepRequest {
                    ctx: Some(ctx(epoch, &Credentials::root())),
                    intent_id: id,
                    step_index: index,
                    step: Some(pb::Step {
                        kind: Some(step.clone()),
                    }),
                    partition: p,
                };
                async move { c.apply_step(req).await }
            })
            .await?;
        Ok(r.ino)
    }

    /// Run a multi-step operation requested in partition `cp`. `steps` are applied in order;
    /// steps before `commit_at` may fail and abort. `held` are the locks of every inode served
    /// here that the steps change.
    ///
    /// The attributes of the `watch`ed directories are read after the last step, before the
    /// locks go (for NFS weak cache consistency); None where that cannot be atomic (not served
    /// here, or the locks had to be let go while a step waited).
    pub async fn execute(
        &self,
        cp: PartitionId,
        steps: Vec<Kind>,
        commit_at: usize,
        held: Held<'_>,
        watch: &[InodeId],
    ) -> FsResult<Executed> {
        let mut parts = Vec::with_capacity(steps.len());
        for s in &steps {
            parts.push(step_partition(s).ok_or_else(|| FsError::Invalid("forget is not an operation step".into()))?);
        }
        if parts.iter().all(|p| self.serves(*p)) {
            // Everything is here: one atomic batch, no intent needed.
            let mut tx = Tx::new(&self.store);
            let mut results = Vec::with_capacity(steps.len());
            for s in &steps {
                let s = resolve(s, &results);
                results.push(self.apply_step(&mut tx, &s).await?);
            }
            // Only a removal record gives the clean-up worker work: woken by every operation,
            // it scanned every partition it serves after each unlink (with four workers removing
            // empty files, 1.37 ms of node CPU per remove against 0.88-0.94 ms without).
            let removal = tx.records_removal();
            self.commit(tx, true).await?;
            let watched = self.watched(watch);
            drop(held);
            if removal {
                self.cleanup.notify_one();
            }
            return Ok(Executed { results, watched });
        }
        let id = self.new_intent_id().await?;
        let rec = pb::IntentRecord {
            version: INTENT_VERSION,
            steps: steps
                .iter()
                .zip(&parts)
                .map(|(s, p)| pb::IntentStep {
                    partition: *p,
                    step: Some(pb::Step { kind: Some(s.clone()) }),
                })
                .collect(),
            commit_at: commit_at as u32,
        };
        let mut tx = Tx::new(&self.store);
        tx.put(keys::intent(cp, id), rec.encode_to_vec());
        self.commit(tx, true).await?;
        let mut watched = vec![None; watch.len()];
        let results = self
            .run_intent(cp, id, &rec, Some(held), || watched = self.watched(watch))
            .await?;
        Ok(Executed { results, watched })
    }

    fn watched(&self, watch: &[InodeId]) -> Vec<Option<FileAttr>> {
        watch
            .iter()
            .map(|&w| {
                if !self.serves(ino_partition(w)) {
                    return None;
                }
                self.store.get_inode(w).ok().flatten().map(|r| r.attr)
            })
            .collect()
    }

    /// Drive an intent to its end, first-hand (`held` set: a client waits, and a failure before
    /// the commit point aborts) or in recovery (`held` None: retry until the cluster lets it finish).
    async fn run_intent(
        &self,
        cp: PartitionId,
        id: u64,
        rec: &pb::IntentRecord,
        held: Option<Held<'_>>,
        before_unlock: impl FnOnce(),
    ) -> FsResult<Vec<u64>> {
        let interactive = held.is_some();
        let mut held = held;
        // Directories served here that this intent changes: closed to readers while it lingers.
        let dirs: Vec<InodeId> = rec
            .steps
            .iter()
            .filter(|s| self.serves(s.partition))
            .filter_map(|s| s.step.as_ref().and_then(|s| s.kind.as_ref()).and_then(step_dir))
            .collect();
        let mut marked = !interactive;
        let mut results: Vec<u64> = Vec::with_capacity(rec.steps.len());
        let commit_at = rec.commit_at as usize;
        let outcome = 'steps: {
            for (i, st) in rec.steps.iter().enumerate() {
                let Some(kind) = st.step.as_ref().and_then(|s| s.kind.as_ref()) else {
                    break 'steps Err(FsError::Io(format!("intent {id:#x}: empty step")));
                };
                let kind = resolve(kind, &results);
                let mut delay = Duration::from_millis(50);
                loop {
                    match self.send_step(id, i as u32, st.partition, &kind, held.is_some()).await {
                        Ok(r) => {
                            results.push(r);
                            crate::failpoint::hit(&format!("intent-after-step-{i}"));
                            break;
                        }
                        Err(e) if i < commit_at && (interactive || !e.is_retryable()) => {
                            debug!(intent = id, step = i, "aborting: {e}");
                            self.undo(id, rec, &results[..i], held.is_some()).await;
                            break 'steps Err(e);
                        }
                        Err(e) if e.is_retryable() => {
                            // Let go of our locks: whoever holds what this step waits for may be
                            // waiting for us. Our directories stay closed to readers meanwhile.
                            if held.take().is_some() && !marked {
                                self.mark_pending(&dirs);
                                marked = true;
                            }
                            debug!(intent = id, step = i, "step waits: {e}");
                            tokio::time::sleep(jitter(delay)).await;
                            delay = (delay * 2).min(Duration::from_secs(2));
                        }
                        Err(e) => {
                            // Past the commit point a step that cannot apply has nothing left
                            // to do (its target is already gone): move on.
                            warn!(
                                intent = id,
                                step = i,
                                "step failed after the commit point, skipped: {e}"
                            );
                            results.push(0);
                            break;
                        }
                    }
                }
            }
            Ok(results)
        };
        if outcome.is_ok() && held.is_some() {
            before_unlock();
        }
        drop(held);
        if marked || !interactive {
            // A replay, or an intent whose directories are closed to readers until it is gone.
            self.finish_intent(cp, id, rec).await;
            if marked {
                self.unmark_pending(&dirs);
            }
        } else if let Err(back) = self.finishing.tx.send((cp, id, rec.clone())) {
            let (cp, id, rec) = back.0;
            self.finish_intent(cp, id, &rec).await;
        }
        outcome
    }

    /// Background worker: finishes the intents of answered operations (`finish_intent`), each
    /// in a task of its own, until `cancel`; then those still queued, for a few seconds at most
    /// (what is left then is replayed at the next start).
    pub async fn finish_worker(self: Arc<Self>, cancel: CancellationToken) {
        let rx = self.finishing.rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut rx) = rx else { return };
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let next = tokio::select! {
                n = rx.recv() => n,
                _ = cancel.cancelled() => None,
            };
            let Some((cp, id, rec)) = next else { break };
            let node = self.clone();
            tasks.spawn(async move { node.finish_intent(cp, id, &rec).await });
            while tasks.try_join_next().is_some() {}
        }
        let node = self.clone();
        let drain = async move {
            while let Ok((cp, id, rec)) = rx.try_recv() {
                node.finish_intent(cp, id, &rec).await;
            }
            while tasks.join_next().await.is_some() {}
        };
        if tokio::time::timeout(Duration::from_secs(3), drain).await.is_err() {
            info!("intents still being finished at stop: replayed at the next start");
        }
    }

    /// Undo the applied prepare steps of an aborted intent (best effort, with retries).
    async fn undo(&self, id: u64, rec: &pb::IntentRecord, results: &[u64], locked: bool) {
        for (j, done) in rec.steps.iter().enumerate().take(results.len()).rev() {
            let undo = match done.step.as_ref().and_then(|s| s.kind.as_ref()) {
                Some(Kind::PrepareRmdir(s)) => Kind::CancelRmdir(pb::CancelRmdirStep { ino: s.ino }),
                Some(Kind::CreateInode(_)) => Kind::DropInode(pb::DropInodeStep { ino: results[j] }),
                _ => continue,
            };
            let index = (rec.steps.len() + j) as u32;
            let mut delay = Duration::from_millis(50);
            for _ in 0..20 {
                match self.send_step(id, index, done.partition, &undo, locked).await {
                    Ok(_) => break,
                    Err(e) if e.is_retryable() => {
                        tokio::time::sleep(jitter(delay)).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                    Err(e) => {
                        warn!(intent = id, step = j, "undo failed: {e}");
                        break;
                    }
                }
            }
        }
    }

    async fn finish_intent(&self, cp: PartitionId, id: u64, rec: &pb::IntentRecord) {
        let first = rec
            .steps
            .first()
            .and_then(|s| s.step.as_ref())
            .and_then(|s| s.kind.as_ref());
        crate::failpoint::hit(&format!("intent-before-finish-{}", first.map_or("none", step_name)));
        // The intent must be gone for good before the markers go: a replay without markers would
        // apply steps twice.
        let mut tx = Tx::new(&self.store);
        tx.delete(keys::intent(cp, id));
        if let Err(e) = self.commit(tx, true).await {
            warn!(intent = id, "cannot delete finished intent: {e}");
            return;
        }
        let mut parts: Vec<PartitionId> = rec.steps.iter().map(|s| s.partition).collect();
        parts.sort_unstable();
        parts.dedup();
        for p in parts {
            if let Err(e) = self
                .send_step(id, u32::MAX, p, &Kind::Forget(pb::ForgetStep {}), true)
                .await
            {
                debug!(intent = id, partition = p, "markers not forgotten: {e}");
            }
        }
    }

    /// Replay the intents of partition `p` (just taken over: after a start-up or a failover) that
    /// a crash left behind. The directories they touch answer "retry" until their intent is done.
    pub async fn recover(self: &Arc<Self>, p: PartitionId) {
        let intents = match self.store.scan_prefix(&keys::intent_prefix(p)) {
            Ok(v) => v,
            Err(e) => {
                warn!(partition = p, "cannot scan intents: {e}");
                return;
            }
        };
        let mut todo = Vec::new();
        for (k, v) in intents {
            let Some(id) = keys::parse_intent(&k) else { continue };
            match pb::IntentRecord::decode(v.as_slice()) {
                Ok(rec) if rec.version == INTENT_VERSION => {
                    let dirs: Vec<InodeId> = rec
                        .steps
                        .iter()
                        .filter(|s| self.serves(s.partition))
                        .filter_map(|s| s.step.as_ref().and_then(|s| s.kind.as_ref()).and_then(step_dir))
                        .collect();
                    self.mark_pending(&dirs);
                    todo.push((id, rec));
                }
                Ok(rec) => warn!(intent = id, "intent of unknown version {} left alone", rec.version),
                Err(e) => warn!(intent = id, "corrupt intent left alone: {e}"),
            }
        }
        if todo.is_empty() {
            return;
        }
        info!(
            partition = p,
            count = todo.len(),
            "replaying intents left by a crash or a previous primary"
        );
        let node = self.clone();
        tokio::spawn(async move {
            for (id, rec) in todo {
                match node.run_intent(p, id, &rec, None, || {}).await {
                    Ok(_) => debug!(intent = id, "replayed"),
                    Err(e) => info!(intent = id, "intent aborted on replay: {e}"),
                }
            }
            node.cleanup.notify_one();
        });
    }

    /// Mark files of partition `p` with a truncation not yet applied to their chunks.
    pub fn load_pending_gc(&self, p: PartitionId) {
        for (k, v) in self.store.scan_prefix(&keys::gc_prefix(p)).unwrap_or_default() {
            if let (Some(ino), Ok(_)) = (keys::parse_gc(&k), GcRecord::decode(&v)) {
                self.pending_gc.insert(ino, ());
            }
        }
    }

    /// Background worker: applies chunk removal records (unlinked files, truncations).
    pub async fn cleanup_worker(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let mut left = false;
            for p in self.served_partitions() {
                let records = match self.store.scan_prefix(&keys::gc_prefix(p)) {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(partition = p, "cannot scan chunk removals: {e}");
                        continue;
                    }
                };
                for (k, v) in records {
                    let (Some(ino), Ok(rec)) = (keys::parse_gc(&k), GcRecord::decode(&v)) else {
                        warn!("corrupt chunk removal record left alone");
                        continue;
                    };
                    match self.apply_gc(ino, rec).await {
                        Ok(()) => {}
                        Err(e) => {
                            debug!(ino, "chunk removal waits: {e}");
                            left = true;
                        }
                    }
                }
            }
            let wait = if left {
                Duration::from_secs(2)
            } else {
                Duration::from_secs(30)
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.cleanup.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Cut the chunks a removal record names, then delete the record unless it changed meanwhile.
    pub async fn apply_gc(&self, ino: InodeId, rec: GcRecord) -> FsResult<()> {
        self.cut_chunks(ino, rec.from, rec.to, rec.chunk_size).await?;
        let _held = self.locks.lock(&[ino]).await;
        let key = keys::gc(ino_partition(ino), ino);
        if self.store.get(&key)?.as_deref() == Some(&rec.encode()[..]) {
            let mut tx = Tx::new(&self.store);
            tx.delete(key);
            self.commit(tx, false).await?;
            self.pending_gc.remove(&ino);
        }
        Ok(())
    }

    /// Cut the chunks of `ino` so that nothing at or past `from` remains (up to the old size `to`).
    pub async fn cut_chunks(&self, ino: InodeId, from: u64, to: u64, chunk_size: u32) -> FsResult<()> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        if to <= from || chunk_size == 0 {
            return Ok(());
        }
        let cs = u64::from(chunk_size);
        let first = from / cs;
        let last = (to - 1) / cs;
        let map = self.router.map();
        let futs = (first..=last).map(|index| {
            let keep = if index == first { from % cs } else { 0 };
            let p = map.chunk_partition(ino, index);
            async move {
                if self.serves(p) {
                    return self
                        .chunk_op(p, ino, index, crate::replication::ChunkOp::Truncate(keep))
                        .await;
                }
                self.router
                    .call(p, |mut c, epoch| {
                        let req = pb::TruncateChunkRequest {
                            ctx: Some(ctx(epoch, &Credentials::root())),
                            chunk: Some(pb::ChunkId { ino, index }),
                            length: keep,
                        };
                        async move { c.truncate_chunk(req).await }
                    })
                    .await
                    .map(|_| ())
            }
        });
        // Bounded fan-out keeps a huge file's removal from flooding the cluster.
        stream::iter(futs).buffer_unordered(16).try_collect::<Vec<()>>().await?;
        Ok(())
    }
}

/// Fill `ino_from_step` references with the results of earlier steps.
fn resolve(step: &Kind, results: &[u64]) -> Kind {
    match step {
        Kind::PutEntry(s) if s.ino_from_step > 0 => {
            let mut s = s.clone();
            s.ino = results.get(s.ino_from_step as usize - 1).copied().unwrap_or(0);
            s.ino_from_step = 0;
            Kind::PutEntry(s)
        }
        other => other.clone(),
    }
}
