//! Replication of partitions (primary-backup), as written down in docs/ARCHITECTURE.md:
//!
//! - **Forwarding.** The primary applies every change of a partition (a metadata batch, a chunk
//!   write, truncation or commit) locally and on every other in-sync replica, and on the replicas
//!   it is filling, in parallel, and answers only when all of them have it. Changes that conflict
//!   are already ordered by the primary's inode locks (held until replication is done), so
//!   replicas may apply concurrent batches in any order.
//! - **Fencing.** A replica applies a change only if the sender is the partition's primary in its
//!   own map (refreshed when the sender has a newer one); a deposed primary is refused and fails
//!   the client's request instead of acknowledging it.
//! - **A replica that fails** to take a change is reported to the manager, which drops it from the
//!   partition (epoch bump); only then is the change acknowledged without it. It is filled again.
//! - **Filling.** A new or returning replica gets a copy while writes go on: the primary first
//!   tells it to start afresh, then forwards every new change to it, then copies a snapshot of the
//!   partition's keys and its chunk files. The replica skips copied keys and byte ranges that a
//!   forwarded change already wrote (they are newer). When the copy is done the primary reports it
//!   and the manager moves the replica into the in-sync set.
//! - **Coming back.** A replica that was dropped and comes back (a node restarted after the
//!   failure timeout) still holds most chunks as they were. It keeps its chunk files at the start
//!   of the fill; the primary sends, for each piece of each chunk, a SHA-256 of every block
//!   instead of the bytes, and then only the blocks whose digests the replica's own bytes do not
//!   match. Chunks a forwarded change reaches before their comparison are dropped first (they
//!   then fill as on a new replica), and kept chunks the copy never names are removed at the end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use futures::future::join_all;
use sealfs_core::placement::ClusterMap;
use sealfs_core::{Credentials, FsError, FsResult, InodeId, NodeId, PartitionId};
use sealfs_proto::attach;
use sealfs_proto::pb::{self, fill_request, replicate_chunk_request};
use sealfs_proto::{ctx, error_from_status, map_from_pb, split_pieces};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::keys;
use crate::node::Node;
use crate::store::KvOps;
use crate::tx::Tx;

/// A change to one chunk, as forwarded to replicas.
#[derive(Debug, Clone)]
pub enum ChunkOp {
    /// `data` at `offset`, or, with `pieces`, the writes they describe (see [`split_pieces`]).
    Write {
        offset: u32,
        data: Bytes,
        stable: bool,
        pieces: Vec<pb::ChunkPiece>,
    },
    Truncate(u64),
    /// Make earlier writes durable; the oldest was answered at map epoch `since_epoch` (0:
    /// unknown), which every replica checks it may not have lost (see [`Replication::held_since`]).
    Commit {
        since_epoch: u64,
    },
}

/// A fill this node runs as primary.
#[derive(Debug)]
pub struct FillOut {
    pub fill_id: u64,
    /// The target acknowledged the start: forward it every change from now on.
    pub begun: std::sync::atomic::AtomicBool,
    pub bytes_done: AtomicU64,
    pub bytes_total: AtomicU64,
    /// Chunk bytes the target held already (compared equal, not sent).
    pub bytes_same: AtomicU64,
}

/// A fill this node receives: what forwarded changes wrote since it began, which copied data
/// must not overwrite.
#[derive(Debug, Default)]
pub struct FillIn {
    pub fill_id: u64,
    pub sender: NodeId,
    keys: HashSet<Vec<u8>>,
    /// (inode, index) -> written byte ranges [start, end).
    chunks: HashMap<(InodeId, u64), Vec<(u64, u64)>>,
    /// Chunks kept from before (`keep_chunks`) that nothing has looked at yet: compared before
    /// use, dropped before a forwarded change or copied bytes land in them, removed at the end
    /// if the copy never names them.
    stale: HashSet<(InodeId, u64)>,
    /// Kept chunks being compared: cut to the primary's length at their first comparison.
    kept: HashSet<(InodeId, u64)>,
}

impl FillIn {
    fn touch_chunk(&mut self, id: (InodeId, u64), start: u64, end: u64) {
        if end > start {
            self.chunks.entry(id).or_default().push((start, end));
        }
    }

    /// The parts of [start, end) no forwarded change has written.
    fn untouched(&self, id: (InodeId, u64), start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut free = vec![(start, end)];
        for &(a, b) in self.chunks.get(&id).map(|v| v.as_slice()).unwrap_or(&[]) {
            free = free
                .into_iter()
                .flat_map(|(s, e)| {
                    let mut parts = Vec::new();
                    if a >= e || b <= s {
                        parts.push((s, e));
                    } else {
                        if s < a {
                            parts.push((s, a));
                        }
                        if b < e {
                            parts.push((b, e));
                        }
                    }
                    parts
                })
                .collect();
        }
        free
    }
}

/// Replication state of a node.
#[derive(Default)]
pub struct Replication {
    pub fills_out: DashMap<(PartitionId, NodeId), Arc<FillOut>>,
    pub fills_in: DashMap<PartitionId, Arc<Mutex<FillIn>>>,
    /// Fills of a partition to a target that failed in a row (for any cause): from `DELTA_TRIES`
    /// on, the next ones copy everything until one succeeds, so nothing about kept chunks can
    /// hold a replica back for good.
    pub delta_failures: DashMap<(PartitionId, NodeId), u32>,
    /// Partition -> the earliest map epoch since which this process holds every change of the
    /// partition that was acknowledged: 0 where it lost nothing (it started after a clean stop,
    /// or received a copy of the partition), else the epoch it first saw itself in the in-sync
    /// set after a crash (the manager moves the epoch when such a node registers).
    pub held_since: DashMap<PartitionId, u64>,
    /// The last map epoch `on_map` handled.
    pub seen_epoch: AtomicU64,
    /// Serializes map handling.
    pub map_lock: Mutex<Option<Arc<ClusterMap>>>,
    /// Partitions where an in-sync replica missed a change that is applied here, and the manager
    /// could not be told yet: they serve nothing until the manager drops that replica, because
    /// the replicas no longer agree.
    pub fenced: DashMap<PartitionId, (NodeId, String)>,
    /// When the last heartbeat to the manager started (ms since the epoch), and how long the
    /// manager waits before it replaces a silent node.
    pub heartbeat_started_ms: AtomicU64,
    pub failure_timeout_ms: AtomicU64,
    /// Held shared by every change from before it picks its forward targets until it is applied
    /// here; a fill takes it exclusively once, after it starts forwarding and before it copies,
    /// so no change can miss both the forwarding and the copy.
    pub commit_gate: tokio::sync::RwLock<()>,
}

/// Now, in milliseconds since 1970.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Replication {
    /// Whether this process went without even trying to heartbeat for about as long as the
    /// manager waits before promoting another replica (it was paused or starved): until the next
    /// heartbeat brings the manager's word, it must not act as a primary, whose role may have
    /// passed to another node meanwhile.
    pub fn was_away(&self) -> bool {
        let started = self.heartbeat_started_ms.load(Ordering::SeqCst);
        let timeout = self.failure_timeout_ms.load(Ordering::SeqCst);
        started != 0 && timeout != 0 && now_ms().saturating_sub(started) + 500 > timeout
    }
}

/// Largest fill batch of keys, and piece of chunk data.
const FILL_BATCH: usize = 1 << 20;
/// Fills one node runs at once as primary.
const MAX_FILLS: usize = 4;
/// Chunk bytes compared in one step of a fill whose target kept its chunks.
const COMPARE_PIECE: usize = 4 << 20;
/// Bytes one digest of such a step covers: what a differing block costs to send.
const COMPARE_BLOCK: usize = 64 << 10;
/// Failed fills in a row (of a partition to a target) before the next copies everything.
const DELTA_TRIES: u32 = 2;

/// SHA-256 of each `block` bytes of `data` (the last may be shorter).
fn digests(data: &[u8], block: usize) -> Vec<Bytes> {
    use sha2::{Digest, Sha256};
    data.chunks(block.max(1))
        .map(|b| Bytes::copy_from_slice(&Sha256::digest(b)))
        .collect()
}

/// [`digests`] on a blocking thread: a piece takes milliseconds to hash.
async fn digests_off_runtime(data: Bytes, block: usize) -> FsResult<Vec<Bytes>> {
    tokio::task::spawn_blocking(move || digests(&data, block))
        .await
        .map_err(|e| FsError::Io(format!("digest task failed: {e}")))
}

/// The byte ranges `[start, end)` of blocks `differ` (indexes of `block`-byte blocks from
/// `offset`, the piece `len` bytes long), adjacent ones merged; an index past the piece is an
/// error (a replica must not make the primary send what it does not have).
fn differing_ranges(offset: u64, len: u64, block: u64, differ: &[u32]) -> FsResult<Vec<(u64, u64)>> {
    let mut idx: Vec<u64> = differ.iter().map(|&i| u64::from(i)).collect();
    idx.sort_unstable();
    idx.dedup();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for i in idx {
        let start = i
            .checked_mul(block)
            .filter(|s| *s < len)
            .ok_or_else(|| FsError::Invalid(format!("a replica asked for block {i} of a {len}-byte piece")))?;
        let (s, e) = (offset + start, offset + (start + block).min(len));
        match out.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => out.push((s, e)),
        }
    }
    Ok(out)
}

fn split_ops(ops: &KvOps) -> BTreeMap<PartitionId, (Vec<pb::KvPut>, Vec<Bytes>)> {
    let mut by_part: BTreeMap<PartitionId, (Vec<pb::KvPut>, Vec<Bytes>)> = BTreeMap::new();
    for (k, v) in ops {
        let Some(p) = keys::key_partition(k) else { continue };
        let e = by_part.entry(p).or_default();
        match v {
            Some(v) => e.0.push(pb::KvPut {
                key: Bytes::copy_from_slice(k),
                value: Bytes::copy_from_slice(v),
            }),
            None => e.1.push(Bytes::copy_from_slice(k)),
        }
    }
    by_part
}

impl Node {
    /// The partition of a chunk this node may serve a replica read of: it must hold it in sync.
    pub fn check_replica_read(&self, ino: InodeId, index: u64) -> FsResult<PartitionId> {
        let map = self.router.map();
        let p = map.chunk_partition(ino, index);
        if map.replicas(p).is_some_and(|r| r.in_sync.contains(&self.id)) {
            Ok(p)
        } else {
            Err(FsError::Unavailable(format!(
                "node {} holds no in-sync copy of partition {p}",
                self.id
            )))
        }
    }

    /// Repair a chunk whose local copy failed its checksum from another in-sync replica.
    pub async fn repair_chunk(&self, p: PartitionId, ino: InodeId, index: u64) -> FsResult<()> {
        let map = self.router.map();
        let others: Vec<(NodeId, String)> = map
            .replicas(p)
            .map(|r| {
                r.in_sync
                    .iter()
                    .filter(|n| **n != self.id)
                    .filter_map(|n| map.node(*n).map(|i| (i.id, i.addr.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let mut last = FsError::Corrupt("no other in-sync copy to repair from".into());
        for (id, addr) in others {
            match self
                .fetch_replica_chunk(&addr, map.epoch, ino, index, map.chunk_size)
                .await
            {
                Ok(good) => match self.chunks.repair(p, ino, index, good).await {
                    Ok(blocks) => {
                        warn!(
                            partition = p,
                            ino,
                            index,
                            from = id,
                            blocks,
                            "repaired a corrupt chunk from a replica"
                        );
                        return Ok(());
                    }
                    Err(e) => last = e,
                },
                Err(e) => {
                    warn!(
                        partition = p,
                        ino,
                        index,
                        from = id,
                        "cannot read the replica's copy: {e}"
                    );
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn fetch_replica_chunk(
        &self,
        addr: &str,
        epoch: u64,
        ino: InodeId,
        index: u64,
        chunk_size: u32,
    ) -> FsResult<Bytes> {
        let mut client = self.router.node_client(addr)?;
        let piece = sealfs_core::config::MAX_IO_SIZE as u32;
        let mut out = Vec::new();
        let mut off = 0u32;
        loop {
            let req = pb::ReadChunkRequest {
                ctx: Some(ctx(epoch, &Credentials::root())),
                chunk: Some(pb::ChunkId { ino, index }),
                offset: off,
                size: piece,
                from_replica: true,
            };
            let (_, mut msg, mut ext) = client
                .read_chunk(req)
                .await
                .map_err(|s| error_from_status(&s))?
                .into_parts();
            attach::take_into(&mut ext, &mut msg.data);
            let data = msg.data;
            let n = data.len() as u32;
            out.extend_from_slice(&data);
            off += n;
            if n < piece || off >= chunk_size {
                return Ok(Bytes::from(out));
            }
        }
    }

    /// Apply a transaction here and on every other replica of the partitions it touches.
    pub async fn commit(&self, tx: Tx<'_>, sync: bool) -> FsResult<()> {
        self.commit_ops(tx.into_ops(), sync).await
    }

    /// Apply writes here and on every other replica of the partitions they touch; durable on all
    /// of them with `sync`.
    pub async fn commit_ops(&self, ops: KvOps, sync: bool) -> FsResult<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let by_part = split_ops(&ops);
        let change = self.changes.of(&ops);
        let gate = self.repl.commit_gate.read().await;
        let local = async {
            let r = self.store.write_ops(ops, sync).await;
            drop(gate);
            r
        };
        let remote = join_all(
            by_part
                .into_iter()
                .map(|(p, (puts, dels))| self.forward_meta(p, puts, dels, sync, 0)),
        );
        let (l, r) = tokio::join!(local, remote);
        l?;
        // Published once it is applied here, even if a replica failed: reads here show it.
        self.changes.publish(change);
        r.into_iter().collect()
    }

    /// Make every earlier unsynced change of partition `p` durable here and on its other
    /// replicas (each syncs its whole WAL, the only log it has); the oldest of them was answered
    /// at map epoch `since_epoch` (0: unknown), which every replica checks it may not have lost.
    pub async fn sync_partition(&self, p: PartitionId, since_epoch: u64) -> FsResult<()> {
        let (l, r) = tokio::join!(
            self.store.sync(),
            self.forward_meta(p, Vec::new(), Vec::new(), true, since_epoch)
        );
        l?;
        r
    }

    /// Send metadata puts and deletes of partition `p` to its other replicas (none of either
    /// with `sync`: a sync of what they took before, the oldest at map epoch `since_epoch`).
    async fn forward_meta(
        &self,
        p: PartitionId,
        puts: Vec<pb::KvPut>,
        deletes: Vec<Bytes>,
        sync: bool,
        since_epoch: u64,
    ) -> FsResult<()> {
        let req = move |epoch: u64| pb::ReplicateMetaRequest {
            ctx: Some(ctx(epoch, &Credentials::root())),
            sender: self.id,
            partition: p,
            puts: puts.clone(),
            deletes: deletes.clone(),
            sync,
            since_epoch,
        };
        self.forward(p, &|mut c, epoch| {
            let r = req(epoch);
            async move { c.replicate_meta(r).await.map(|_| ()) }
        })
        .await
    }

    /// Apply a chunk change here and on every other replica of partition `p`.
    pub async fn chunk_op(&self, p: PartitionId, ino: InodeId, index: u64, op: ChunkOp) -> FsResult<()> {
        let gate = self.repl.commit_gate.read().await;
        let local = async {
            let _applied_here = gate;
            match &op {
                ChunkOp::Write {
                    offset,
                    data,
                    stable,
                    pieces,
                } => {
                    let split = split_pieces(*offset, data, pieces, u64::from(u32::MAX))?;
                    self.chunks.write_pieces(p, ino, index, split, *stable).await
                }
                ChunkOp::Truncate(len) => self.chunks.truncate(p, ino, index, *len).await,
                ChunkOp::Commit { .. } => self.chunks.commit(vec![(p, ino, index)]).await,
            }
        };
        // A write's data goes beside the message (see sealfs_proto::attach).
        let since_epoch = match op {
            ChunkOp::Commit { since_epoch } => since_epoch,
            _ => 0,
        };
        let (wire, data) = match &op {
            ChunkOp::Write {
                offset,
                data,
                stable,
                pieces,
            } => (
                replicate_chunk_request::Op::Write(pb::ChunkWrite {
                    offset: *offset,
                    data: Bytes::new(),
                    stable: *stable,
                    pieces: pieces.clone(),
                }),
                Some(data.clone()),
            ),
            ChunkOp::Truncate(len) => (replicate_chunk_request::Op::Truncate(*len), None),
            ChunkOp::Commit { .. } => (replicate_chunk_request::Op::Commit(true), None),
        };
        let send = |mut c: pb::node_client::NodeClient<sealfs_proto::auth::AuthChannel>, epoch: u64| {
            let req = move |op: replicate_chunk_request::Op, data: Option<Bytes>| {
                let r = pb::ReplicateChunkRequest {
                    ctx: Some(ctx(epoch, &Credentials::root())),
                    sender: self.id,
                    partition: p,
                    chunk: Some(pb::ChunkId { ino, index }),
                    op: Some(op),
                    since_epoch,
                };
                match data {
                    Some(d) => attach::request(r, attach::REPLICATE_CHUNK_DATA, d),
                    None => tonic::Request::new(r),
                }
            };
            let wire = wire.clone();
            let data = data.clone();
            async move {
                let replicate_chunk_request::Op::Write(w) = &wire else {
                    return c.replicate_chunk(req(wire, None)).await.map(|_| ());
                };
                let data = data.unwrap_or_default();
                if w.pieces.is_empty() {
                    return c.replicate_chunk(req(wire, Some(data))).await.map(|_| ());
                }
                match c.replicate_chunk_pieces(req(wire.clone(), Some(data.clone()))).await {
                    Err(s) if s.code() == tonic::Code::Unimplemented => {}
                    r => return r.map(|_| ()),
                }
                // A replica of an older version: the pieces one by one, in order.
                let split = split_pieces(w.offset, &data, &w.pieces, u64::from(u32::MAX))
                    .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
                for (off, piece) in split {
                    let one = replicate_chunk_request::Op::Write(pb::ChunkWrite {
                        offset: off as u32,
                        data: Bytes::new(),
                        stable: w.stable,
                        pieces: Vec::new(),
                    });
                    c.replicate_chunk(req(one, Some(piece))).await?;
                }
                Ok(())
            }
        };
        let remote = self.forward(p, &send);
        let (l, r) = tokio::join!(local, remote);
        l?;
        r
    }

    /// Who gets the changes of partition `p` besides this node: the other in-sync replicas and
    /// the replicas being filled whose fill has begun.
    fn forward_targets(&self, map: &ClusterMap, p: PartitionId) -> Vec<(NodeId, String, bool)> {
        let Some(r) = map.replicas(p) else { return Vec::new() };
        let mut out = Vec::new();
        for n in r.in_sync.iter().filter(|n| **n != self.id) {
            if let Some(info) = map.node(*n) {
                out.push((*n, info.addr.clone(), true));
            }
        }
        for n in &r.filling {
            let begun = self
                .repl
                .fills_out
                .get(&(p, *n))
                .is_some_and(|f| f.begun.load(Ordering::SeqCst));
            if begun {
                if let Some(info) = map.node(*n) {
                    out.push((*n, info.addr.clone(), false));
                }
            }
        }
        out
    }

    /// Send one change to every other replica of `p`; see the module comment for what happens
    /// when one cannot take it.
    async fn forward<F, Fut>(&self, p: PartitionId, send: &F) -> FsResult<()>
    where
        F: Fn(pb::node_client::NodeClient<sealfs_proto::auth::AuthChannel>, u64) -> Fut,
        Fut: std::future::Future<Output = Result<(), tonic::Status>>,
    {
        for _round in 0..8 {
            let map = self.router.map();
            if map.primary(p).is_none_or(|n| n.id != self.id) {
                return Err(FsError::WrongEpoch {
                    caller: map.epoch,
                    node: map.epoch,
                });
            }
            let targets = self.forward_targets(&map, p);
            if targets.is_empty() {
                return Ok(());
            }
            let results = join_all(targets.iter().map(|(_, addr, _)| async {
                let client = self.router.node_client(addr)?;
                send(client, map.epoch).await.map_err(|s| {
                    self.router.call_failed(addr, &s);
                    error_from_status(&s)
                })
            }))
            .await;
            let mut again = false;
            for ((id, _, in_sync), res) in targets.into_iter().zip(results) {
                let Err(e) = res else { continue };
                match e {
                    FsError::WrongEpoch { node, .. } if node > map.epoch => {
                        // The replica knows a newer map: ours is stale. Catch up and see whether
                        // we are still the primary.
                        self.router.refresh_map(map.epoch).await;
                        again = true;
                    }
                    e if !in_sync => {
                        // A fill target that cannot keep up is dropped; its fill starts over.
                        debug!(partition = p, node = id, "fill target missed a change: {e}");
                        self.repl.fills_out.remove(&(p, id));
                    }
                    e => match self.replica_failed(p, id, &e.to_string()).await {
                        Ok(()) => again = true,
                        Err(stale @ FsError::WrongEpoch { .. }) => return Err(stale),
                        Err(unreachable) => {
                            warn!(
                                partition = p,
                                node = id,
                                "partition fenced until the manager drops the replica"
                            );
                            self.repl.fenced.insert(p, (id, e.to_string()));
                            return Err(unreachable);
                        }
                    },
                }
            }
            if !again {
                return Ok(());
            }
        }
        Err(FsError::Unavailable(format!(
            "partition {p}: replicas keep refusing changes"
        )))
    }

    /// Ask the manager to drop `failed` from partition `p`, and install the map it answers with.
    async fn replica_failed(&self, p: PartitionId, failed: NodeId, reason: &str) -> FsResult<()> {
        warn!(partition = p, node = failed, "replica did not take a change: {reason}");
        let epoch = self.router.map().epoch;
        let req = pb::ReplicaFailedRequest {
            node_id: self.id,
            partition: p,
            failed,
            epoch,
            reason: reason.to_string(),
        };
        let map = self
            .router
            .manager()
            .replica_failed(req)
            .await
            .inspect_err(|s| self.router.manager_failed(s))
            .map_err(|s| match error_from_status(&s) {
                e @ FsError::WrongEpoch { .. } => e,
                e => FsError::Unavailable(format!("cannot reach the manager to drop a failed replica: {e}")),
            })?
            .into_inner();
        self.router.install_map(map_from_pb(&map)?);
        Ok(())
    }

    /// Check that a forwarded change or a fill step for `p` comes from `p`'s primary, and that
    /// this node is one of `p`'s replicas.
    pub async fn check_replica(&self, c: Option<&pb::Ctx>, p: PartitionId, sender: NodeId) -> FsResult<()> {
        let caller = c.map(|c| c.epoch).unwrap_or(0);
        let mut map = self.router.map();
        let ok = |m: &ClusterMap| {
            m.replicas(p)
                .is_some_and(|r| r.in_sync.first() == Some(&sender) && r.holds(self.id))
        };
        if caller > map.epoch || (!ok(&map) && caller >= map.epoch) {
            self.router.refresh_map(map.epoch).await;
            map = self.router.map();
        }
        if !map.has_partition(p) {
            return Err(FsError::Stale);
        }
        if ok(&map) {
            Ok(())
        } else {
            Err(FsError::WrongEpoch {
                caller,
                node: map.epoch,
            })
        }
    }

    /// Apply forwarded metadata changes.
    pub async fn apply_replicated_meta(&self, r: pb::ReplicateMetaRequest) -> FsResult<u64> {
        self.check_replica(r.ctx.as_ref(), r.partition, r.sender).await?;
        let mut ops: KvOps = Vec::with_capacity(r.puts.len() + r.deletes.len());
        for kv in r.puts {
            if keys::key_partition(&kv.key) != Some(r.partition) {
                return Err(FsError::Invalid("a forwarded key of another partition".into()));
            }
            ops.push((kv.key.to_vec(), Some(kv.value.to_vec())));
        }
        for k in r.deletes {
            if keys::key_partition(&k) != Some(r.partition) {
                return Err(FsError::Invalid("a forwarded key of another partition".into()));
            }
            ops.push((k.to_vec(), None));
        }
        if ops.is_empty() {
            // A sync of the changes already taken (Node::sync_partition).
            if r.sync {
                self.still_held(r.partition, r.since_epoch, "unsynced metadata changes")?;
                self.store.sync().await?;
            }
            return Ok(self.router.map().epoch);
        }
        let fill = self.repl.fills_in.get(&r.partition).map(|f| f.clone());
        match fill {
            Some(f) => {
                let mut g = f.lock().await;
                for (k, _) in &ops {
                    g.keys.insert(k.clone());
                }
                self.store.write_ops(ops, r.sync).await?;
            }
            None => self.store.write_ops(ops, r.sync).await?,
        }
        Ok(self.router.map().epoch)
    }

    /// Apply a forwarded chunk change.
    pub async fn apply_replicated_chunk(&self, r: pb::ReplicateChunkRequest) -> FsResult<u64> {
        self.check_replica(r.ctx.as_ref(), r.partition, r.sender).await?;
        let id = r
            .chunk
            .as_ref()
            .map(|c| (c.ino, c.index))
            .ok_or_else(|| FsError::Invalid("missing chunk id".into()))?;
        let p = r.partition;
        if self.router.map().chunk_partition(id.0, id.1) != p {
            return Err(FsError::Invalid("a forwarded chunk of another partition".into()));
        }
        let op =
            r.op.ok_or_else(|| FsError::Invalid("chunk change without an operation".into()))?;
        let fill = self.repl.fills_in.get(&p).map(|f| f.clone());
        let _guard = match &fill {
            Some(f) => Some(f.lock().await),
            None => None,
        };
        let mut guard = _guard;
        if let (Some(g), false) = (guard.as_mut(), matches!(op, replicate_chunk_request::Op::Commit(_))) {
            // A kept chunk not yet compared holds bytes from before: it goes, and this chunk
            // then fills as on a new replica.
            self.drop_stale(g, p, id).await?;
        }
        match op {
            replicate_chunk_request::Op::Write(w) => {
                let split = split_pieces(w.offset, &w.data, &w.pieces, u64::from(u32::MAX))?;
                if let Some(g) = guard.as_mut() {
                    for (off, d) in &split {
                        g.touch_chunk(id, *off, off + d.len() as u64);
                    }
                }
                self.chunks.write_pieces(p, id.0, id.1, split, w.stable).await?;
            }
            replicate_chunk_request::Op::Truncate(len) => {
                if let Some(g) = guard.as_mut() {
                    g.touch_chunk(id, len, u64::MAX);
                }
                self.chunks.truncate(p, id.0, id.1, len).await?;
            }
            replicate_chunk_request::Op::Commit(_) => {
                self.still_held(p, r.since_epoch, "unstable writes")?;
                self.chunks.commit(vec![(p, id.0, id.1)]).await?
            }
        }
        Ok(self.router.map().epoch)
    }

    /// Remove chunk `id` of partition `p` if it is one the fill `g` kept and nothing has looked
    /// at yet.
    async fn drop_stale(&self, g: &mut FillIn, p: PartitionId, id: (InodeId, u64)) -> FsResult<()> {
        if g.stale.remove(&id) {
            self.chunks.truncate(p, id.0, id.1, 0).await?;
        }
        Ok(())
    }

    /// A `compare` step of a fill: which of the primary's blocks this node's kept copy of the
    /// chunk does not hold.
    async fn compare_kept(&self, g: &mut FillIn, p: PartitionId, c: &pb::FillCompare) -> FsResult<pb::FillReply> {
        let id = c
            .chunk
            .as_ref()
            .map(|c| (c.ino, c.index))
            .ok_or_else(|| FsError::Invalid("missing chunk id".into()))?;
        let block = c.block as usize;
        if block == 0 || block > COMPARE_PIECE || c.digests.len() > COMPARE_PIECE.div_ceil(block) {
            return Err(FsError::Invalid("a fill comparison of an odd shape".into()));
        }
        let whole = pb::FillReply {
            whole: true,
            ..Default::default()
        };
        if g.stale.remove(&id) {
            // The first look: bytes past the primary's length are from before.
            if let Err(e) = self.chunks.truncate(p, id.0, id.1, c.length).await {
                warn!(
                    partition = p,
                    ino = id.0,
                    index = id.1,
                    "a kept chunk cannot be cut, so it is copied: {e}"
                );
                self.chunks.truncate(p, id.0, id.1, 0).await?;
                return Ok(whole);
            }
            g.kept.insert(id);
        } else if !g.kept.contains(&id) {
            return Ok(whole);
        }
        let end = c.offset.saturating_add((block * c.digests.len()) as u64).min(c.length);
        let want = end.saturating_sub(c.offset) as usize;
        let mine = self.chunks.read(p, id.0, id.1, c.offset, want).await;
        let mine = match mine {
            Ok(b) => b,
            // A bad block somewhere in the piece: every block is asked for (copies mend it).
            Err(e) => {
                warn!(
                    partition = p,
                    ino = id.0,
                    index = id.1,
                    "a kept chunk cannot be read, so the piece is copied: {e}"
                );
                Bytes::new()
            }
        };
        let ours = digests_off_runtime(mine, block).await?;
        // A copy shorter here has fewer digests, or a last one over fewer bytes: those differ.
        let differ = (0..c.digests.len())
            .filter(|&i| ours.get(i) != Some(&c.digests[i]))
            .map(|i| i as u32)
            .collect();
        Ok(pb::FillReply {
            differ,
            ..Default::default()
        })
    }

    /// One step of a fill this node receives.
    pub async fn apply_fill(&self, r: pb::FillRequest) -> FsResult<pb::FillReply> {
        let p = r.partition;
        self.check_replica(r.ctx.as_ref(), p, r.sender).await?;
        if !self
            .router
            .map()
            .replicas(p)
            .is_some_and(|x| x.filling.contains(&self.id))
        {
            return Err(FsError::WrongEpoch {
                caller: r.ctx.map(|c| c.epoch).unwrap_or(0),
                node: self.router.map().epoch,
            });
        }
        let step = r
            .step
            .ok_or_else(|| FsError::Invalid("fill request without a step".into()))?;
        if let fill_request::Step::Begin(_) = step {
            // Start afresh: whatever this node has of the partition is from an older membership.
            let state = Arc::new(Mutex::new(FillIn {
                fill_id: r.fill_id,
                sender: r.sender,
                ..Default::default()
            }));
            // Hold the new state's lock while the old data goes, so no forwarded change lands in
            // between and is wiped.
            let mut g = state.lock().await;
            self.repl.fills_in.insert(p, state.clone());
            self.store.delete_partition(p).await?;
            if r.keep_chunks {
                g.stale = self
                    .chunks
                    .list(p)
                    .await?
                    .into_iter()
                    .map(|(ino, index, _)| (ino, index))
                    .collect();
            } else {
                self.chunks.delete_partition(p).await?;
            }
            // From here it gets the primary's copy and every change (kept chunks are compared
            // with the primary's before they count): nothing it may have lost.
            self.repl.held_since.insert(p, 0);
            info!(
                partition = p,
                from = r.sender,
                kept_chunks = g.stale.len(),
                "receiving a copy of the partition"
            );
            // Holding none (a new replica), it is sent everything without comparisons.
            return Ok(pb::FillReply {
                keeps_chunks: !g.stale.is_empty(),
                ..Default::default()
            });
        }
        let state = self
            .repl
            .fills_in
            .get(&p)
            .map(|f| f.clone())
            .ok_or_else(|| FsError::Invalid("no fill in progress".into()))?;
        let mut g = state.lock().await;
        if g.fill_id != r.fill_id || g.sender != r.sender {
            return Err(FsError::Invalid("a step of another fill".into()));
        }
        match step {
            fill_request::Step::Begin(_) => unreachable!("handled above"),
            fill_request::Step::Keys(k) => {
                let mut ops: KvOps = Vec::with_capacity(k.entries.len());
                for kv in k.entries {
                    if keys::key_partition(&kv.key) != Some(p) {
                        return Err(FsError::Invalid("a copied key of another partition".into()));
                    }
                    if !g.keys.contains(kv.key.as_ref()) {
                        ops.push((kv.key.to_vec(), Some(kv.value.to_vec())));
                    }
                }
                self.store.write_ops(ops, false).await?;
            }
            fill_request::Step::Chunk(c) => {
                let id = c
                    .chunk
                    .as_ref()
                    .map(|c| (c.ino, c.index))
                    .ok_or_else(|| FsError::Invalid("missing chunk id".into()))?;
                let end = c
                    .offset
                    .checked_add(c.data.len() as u64)
                    .ok_or_else(|| FsError::Invalid("chunk range".into()))?;
                self.drop_stale(&mut g, p, id).await?;
                if c.data.is_empty() {
                    // An empty chunk file exists on the primary: create it unless a change decided.
                    if g.untouched(id, 0, 1) == vec![(0, 1)] {
                        self.chunks.write(p, id.0, id.1, 0, Bytes::new(), false).await?;
                    }
                }
                for (s, e) in g.untouched(id, c.offset, end) {
                    let piece = c.data.slice((s - c.offset) as usize..(e - c.offset) as usize);
                    self.chunks.write(p, id.0, id.1, s, piece, false).await?;
                }
            }
            fill_request::Step::Compare(c) => return self.compare_kept(&mut g, p, &c).await,
            fill_request::Step::End(_) => {
                // Kept chunks the copy never named belong to files removed meanwhile.
                for (ino, index) in std::mem::take(&mut g.stale) {
                    self.chunks.truncate(p, ino, index, 0).await?;
                }
                self.store.sync().await?;
                self.chunks.sync_partition(p).await?;
                drop(g);
                self.repl.fills_in.remove(&p);
                info!(partition = p, "copy of the partition complete");
            }
        }
        Ok(pb::FillReply::default())
    }

    /// Copy partition `p` to `target` (this node is `p`'s primary), then report it to the manager.
    pub async fn run_fill(self: Arc<Self>, p: PartitionId, target: NodeId, state: Arc<FillOut>) -> FsResult<()> {
        let map = self.router.map();
        let addr = map
            .node(target)
            .map(|n| n.addr.clone())
            .ok_or_else(|| FsError::Invalid("unknown fill target".into()))?;
        let mut client = self.router.node_client(&addr)?;
        let failed = |s: tonic::Status| {
            self.router.call_failed(&addr, &s);
            error_from_status(&s)
        };
        // A target that was a replica before keeps its chunks and is sent only what differs,
        // unless fills like that keep failing.
        let keep_chunks = self
            .repl
            .delta_failures
            .get(&(p, target))
            .is_none_or(|n| *n < DELTA_TRIES);
        let step = |s: fill_request::Step| pb::FillRequest {
            ctx: Some(ctx(self.router.map().epoch, &Credentials::root())),
            sender: self.id,
            partition: p,
            fill_id: state.fill_id,
            step: Some(s),
            keep_chunks,
        };
        let still = || {
            self.repl
                .fills_out
                .get(&(p, target))
                .is_some_and(|f| Arc::ptr_eq(&f, &state))
        };
        let kept = client
            .fill(step(fill_request::Step::Begin(true)))
            .await
            .map_err(failed)?
            .into_inner()
            .keeps_chunks;
        // From here on every change of the partition goes to the target too; what the snapshot
        // below copies is at least as old as what it gets that way.
        state.begun.store(true, Ordering::SeqCst);
        // A change that picked its targets before `begun` may still be landing here: wait for
        // those, so the copy below has them (later ones are forwarded to the target).
        drop(self.repl.commit_gate.write().await);
        let chunks = self.chunks.list(p).await?;
        state
            .bytes_total
            .store(chunks.iter().map(|c| c.2).sum(), Ordering::Relaxed);
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        self.store.scan_partition_snapshot(p, FILL_BATCH, tx);
        while let Some(batch) = rx.recv().await {
            if !still() {
                return Err(FsError::Unavailable("fill cancelled".into()));
            }
            let bytes: usize = batch.iter().map(|(k, v)| k.len() + v.len()).sum();
            let entries = batch
                .into_iter()
                .map(|(k, v)| pb::KvPut {
                    key: k.into(),
                    value: v.into(),
                })
                .collect();
            client
                .fill(step(fill_request::Step::Keys(pb::FillKeys { entries })))
                .await
                .map_err(failed)?;
            state.bytes_done.fetch_add(bytes as u64, Ordering::Relaxed);
        }
        let send = async |ino: InodeId, index: u64, off: u64, data: Bytes| {
            let msg = pb::FillChunkData {
                chunk: Some(pb::ChunkId { ino, index }),
                offset: off,
                data,
            };
            client
                .clone()
                .fill(step(fill_request::Step::Chunk(msg)))
                .await
                .map_err(failed)
        };
        for (ino, index, len) in chunks {
            let mut off = 0u64;
            // Ask the target what it holds of this chunk (an empty one is simply sent).
            let mut ask = kept && len > 0;
            loop {
                if !still() {
                    return Err(FsError::Unavailable("fill cancelled".into()));
                }
                let want = if ask { COMPARE_PIECE } else { FILL_BATCH };
                let piece = self.chunks.read(p, ino, index, off, want).await?;
                let n = piece.len() as u64;
                let mut ranges = vec![(off, off + n)];
                if ask && n > 0 {
                    let sums = digests_off_runtime(piece.clone(), COMPARE_BLOCK).await?;
                    let cmp = pb::FillCompare {
                        chunk: Some(pb::ChunkId { ino, index }),
                        length: if n < want as u64 { off + n } else { len.max(off + n) },
                        offset: off,
                        block: COMPARE_BLOCK as u32,
                        digests: sums,
                    };
                    let reply = client
                        .clone()
                        .fill(step(fill_request::Step::Compare(cmp)))
                        .await
                        .map_err(failed)?
                        .into_inner();
                    if reply.whole {
                        // Nothing kept of it there: all of it, from its start.
                        ask = false;
                        if off > 0 {
                            off = 0;
                            continue;
                        }
                    } else {
                        ranges = differing_ranges(off, n, COMPARE_BLOCK as u64, &reply.differ)?;
                        let sent: u64 = ranges.iter().map(|(s, e)| e - s).sum();
                        state.bytes_same.fetch_add(n - sent, Ordering::Relaxed);
                    }
                }
                for (s, e) in ranges {
                    let mut at = s;
                    // Sent in pieces of FILL_BATCH at most; one empty piece for an empty chunk.
                    loop {
                        let to = e.min(at + FILL_BATCH as u64);
                        let data = piece.slice((at - off) as usize..(to - off) as usize);
                        send(ino, index, at, data).await?;
                        at = to;
                        if at >= e {
                            break;
                        }
                    }
                }
                state.bytes_done.fetch_add(n, Ordering::Relaxed);
                off += n;
                if n == 0 || off >= len {
                    break;
                }
            }
        }
        client.fill(step(fill_request::Step::End(true))).await.map_err(failed)?;
        let req = pb::FillDoneRequest {
            node_id: self.id,
            partition: p,
            target,
            epoch: self.router.map().epoch,
        };
        let map = self
            .router
            .manager()
            .fill_done(req)
            .await
            .map_err(|s| {
                self.router.manager_failed(&s);
                error_from_status(&s)
            })?
            .into_inner();
        self.router.install_map(map_from_pb(&map)?);
        let same = state.bytes_same.load(Ordering::Relaxed);
        info!(
            partition = p,
            node = target,
            chunk_bytes = state.bytes_total.load(Ordering::Relaxed),
            bytes_kept = same,
            "replica filled"
        );
        Ok(())
    }

    /// Start the fills this node owes as primary (at most MAX_FILLS at once).
    pub fn ensure_fills(self: &Arc<Self>, map: &ClusterMap) {
        let running = self.repl.fills_out.len();
        let mut budget = MAX_FILLS.saturating_sub(running);
        for p in map.primary_partitions(self.id) {
            let Some(r) = map.replicas(p) else { continue };
            for t in &r.filling {
                if budget == 0 {
                    return;
                }
                if self.repl.fills_out.contains_key(&(p, *t)) {
                    continue;
                }
                let state = Arc::new(FillOut {
                    fill_id: rand::random::<u64>() | 1,
                    begun: Default::default(),
                    bytes_done: Default::default(),
                    bytes_total: Default::default(),
                    bytes_same: Default::default(),
                });
                self.repl.fills_out.insert((p, *t), state.clone());
                budget -= 1;
                let node = self.clone();
                let t = *t;
                tokio::spawn(async move {
                    match node.clone().run_fill(p, t, state.clone()).await {
                        Ok(()) => {
                            node.repl.delta_failures.remove(&(p, t));
                        }
                        Err(e) => {
                            *node.repl.delta_failures.entry((p, t)).or_default() += 1;
                            info!(partition = p, node = t, "fill failed (it is retried): {e}");
                            // Wait a little before the next try goes out.
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                    node.repl.fills_out.remove_if(&(p, t), |_, f| Arc::ptr_eq(f, &state));
                });
            }
        }
    }

    /// Progress of the fills this node runs, for the manager's status.
    pub fn fill_progress(&self) -> Vec<pb::FillProgress> {
        self.repl
            .fills_out
            .iter()
            .map(|e| pb::FillProgress {
                partition: e.key().0,
                target: e.key().1,
                bytes_done: e.value().bytes_done.load(Ordering::Relaxed),
                bytes_total: e.value().bytes_total.load(Ordering::Relaxed),
                bytes_kept: e.value().bytes_same.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// React to a new map: take over partitions this node now leads, let go of those it no
    /// longer leads or holds, start fills. Called whenever the map's epoch moves.
    pub async fn on_map(self: &Arc<Self>) {
        let mut last = self.repl.map_lock.lock().await;
        let new = self.router.map();
        if last.as_ref().is_some_and(|m| m.epoch >= new.epoch) {
            return;
        }
        let old = last.take();
        for p in 0..new.partitions {
            let nr = new.replicas(p).cloned().unwrap_or_default();
            let or = old.as_ref().and_then(|m| m.replicas(p)).cloned();
            let was_primary = or.as_ref().is_some_and(|r| r.in_sync.first() == Some(&self.id));
            let is_primary = nr.in_sync.first() == Some(&self.id);
            if is_primary && !was_primary {
                self.take_over(p).await;
            }
            if was_primary && !is_primary {
                self.store.forget_seq(p);
                self.repl.fills_out.retain(|k, _| k.0 != p);
            }
            if nr.in_sync.contains(&self.id) {
                // In the first map a process sees, a node that stopped cleanly (every chunk and
                // the WAL synced) still holds all it acknowledged; after a crash only what it
                // takes from now on. Later, a partition reaches the in-sync set by a copy, which
                // already set 0.
                let since = if old.is_none() && !self.chunks.fresh {
                    0
                } else {
                    new.epoch
                };
                self.repl.held_since.entry(p).or_insert(since);
            } else if !nr.filling.contains(&self.id) {
                self.repl.held_since.remove(&p);
            }
            // A replica being filled is asked to sync changes only once its copy began in this
            // process (which sets 0); until then what it had stays, unused.
            // Fills whose target is no longer being filled are over (done or abandoned).
            self.repl.fills_out.retain(|k, _| k.0 != p || nr.filling.contains(&k.1));
            let held_before = or.as_ref().is_none_or(|r| r.holds(self.id));
            if held_before && !nr.holds(self.id) && new.is_initialized() {
                self.repl.fills_in.remove(&p);
                let (store, chunks) = (self.store.clone(), self.chunks.clone());
                tokio::spawn(async move {
                    if let Err(e) = store.delete_partition(p).await {
                        warn!(partition = p, "cannot drop the data of a partition no longer held: {e}");
                    }
                    let _ = chunks.delete_partition(p).await;
                });
                if old.is_some() {
                    info!(partition = p, "partition no longer held here: its data is dropped");
                }
            }
        }
        self.repl.seen_epoch.store(new.epoch, Ordering::SeqCst);
        *last = Some(new.clone());
        drop(last);
        self.ensure_fills(&new);
        self.cleanup.notify_one();
    }

    /// This node became the primary of `p`: finish what a crash or a previous primary left
    /// (intents, chunk removals) and serve.
    async fn take_over(self: &Arc<Self>, p: PartitionId) {
        self.store.forget_seq(p);
        self.load_pending_gc(p);
        self.recover(p).await;
    }

    /// Periodically: follow the map, restart fills that failed.
    pub async fn map_watcher(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            n += 1;
            self.retry_fences().await;
            if self.router.map().epoch != self.repl.seen_epoch.load(Ordering::SeqCst) {
                self.on_map().await;
            } else if n.is_multiple_of(5) {
                let map = self.router.map();
                self.ensure_fills(&map);
            }
        }
    }

    /// Tell the manager again about replicas that missed a change; lift the fence once it
    /// dropped them (or once this node is no longer the primary).
    async fn retry_fences(&self) {
        let fences: Vec<(PartitionId, NodeId, String)> = self
            .repl
            .fenced
            .iter()
            .map(|e| (*e.key(), e.value().0, e.value().1.clone()))
            .collect();
        for (p, failed, reason) in fences {
            let map = self.router.map();
            let settled =
                map.primary(p).is_none_or(|n| n.id != self.id) || map.replicas(p).is_some_and(|r| !r.holds(failed));
            if settled || self.replica_failed(p, failed, &reason).await.is_ok() {
                info!(partition = p, "fence lifted");
                self.repl.fenced.remove(&p);
            }
        }
    }

    /// Whether unstable writes answered with (`verifier`, `epoch`) are still here: they were
    /// taken by this very process, or it holds every change of `p` since before they were made.
    pub fn writes_survived(&self, p: PartitionId, verifier: u64, epoch: u64) -> bool {
        verifier == self.chunks.verifier || self.holds_since(p, epoch)
    }

    /// Whether this process holds every change of partition `p` acknowledged at map epoch
    /// `epoch` or later (see [`Replication::held_since`]).
    fn holds_since(&self, p: PartitionId, epoch: u64) -> bool {
        self.repl.held_since.get(&p).is_some_and(|s| *s <= epoch)
    }

    /// On a replica, before syncing forwarded changes the oldest of which was answered at
    /// `since_epoch` (0: unknown, not checked): refuse if this process may have lost some (it
    /// started after a crash since), so the primary drops this replica and copies the partition
    /// to it again, instead of calling them durable here.
    pub fn still_held(&self, p: PartitionId, since_epoch: u64, what: &str) -> FsResult<()> {
        if since_epoch == 0 || self.holds_since(p, since_epoch) {
            return Ok(());
        }
        warn!(
            partition = p,
            since_epoch, "asked to sync {what} this process may have lost"
        );
        Err(FsError::Io(format!(
            "partition {p}: this replica restarted since the {what}; they may be lost"
        )))
    }

    /// [`Node::writes_survived`] as an EIO naming `what` may be lost.
    pub fn vouch(&self, p: PartitionId, verifier: u64, epoch: u64, what: &str) -> FsResult<()> {
        if self.writes_survived(p, verifier, epoch) {
            return Ok(());
        }
        Err(FsError::Io(format!(
            "partition {p}: its node restarted since the {what}; they may be lost"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untouched_ranges() {
        let mut f = FillIn::default();
        let id = (1, 0);
        assert_eq!(f.untouched(id, 0, 100), vec![(0, 100)]);
        f.touch_chunk(id, 10, 20);
        f.touch_chunk(id, 50, u64::MAX);
        assert_eq!(f.untouched(id, 0, 100), vec![(0, 10), (20, 50)]);
        assert_eq!(f.untouched(id, 12, 18), vec![]);
        assert_eq!(f.untouched((2, 0), 0, 5), vec![(0, 5)]);
    }

    #[test]
    fn differing_blocks_become_merged_ranges() {
        // A 10-byte piece at 100 in blocks of 4: blocks 0, 1 and 2 (the last 2 bytes long).
        assert_eq!(differing_ranges(100, 10, 4, &[]).unwrap(), vec![]);
        assert_eq!(
            differing_ranges(100, 10, 4, &[2, 0]).unwrap(),
            vec![(100, 104), (108, 110)]
        );
        assert_eq!(differing_ranges(100, 10, 4, &[1, 2, 1]).unwrap(), vec![(104, 110)]);
        assert_eq!(differing_ranges(100, 10, 4, &[0, 1, 2]).unwrap(), vec![(100, 110)]);
        // A replica naming a block the piece does not have is refused, not sent past the piece.
        assert!(differing_ranges(100, 10, 4, &[3]).is_err());
        assert!(differing_ranges(100, 10, 4, &[u32::MAX]).is_err());
    }

    #[test]
    fn digests_cover_each_block_and_tell_a_short_copy() {
        let data = vec![7u8; 10];
        let d = digests(&data, 4);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0], d[1], "equal blocks, equal digests");
        assert_ne!(d[1], d[2], "the last block is shorter");
        // A copy that ends early has its last digest over fewer bytes: it differs.
        let short = digests(&data[..9], 4);
        assert_eq!(short[..2], d[..2]);
        assert_ne!(short[2], d[2]);
        let mut changed = data.clone();
        changed[5] = 8;
        let c = digests(&changed, 4);
        assert_eq!((c[0] == d[0], c[1] == d[1], c[2] == d[2]), (true, false, true));
    }
}
