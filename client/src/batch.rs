//! Small unstable chunk writes, gathered per chunk. While a call to a chunk is on its way, later
//! small writes to the same chunk queue up and go together in the next call (`WriteChunkPieces`),
//! so a burst of 4 KiB random writes costs the nodes one call (and one forward to each replica)
//! per chunk per round trip instead of one per write: nodes spent most of such a burst waking
//! threads and moving messages, not writing. A write that finds its chunk idle goes at once and
//! alone (as `WriteChunk`), so an unloaded file sees no added latency. The pieces of one call are
//! applied in their order, and a chunk never has two of these calls at once, so gathered writes
//! to a chunk land in the order they were queued (overlapping writes are ordered by the callers,
//! as before: FUSE holds one back until the write it overlaps has landed).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use sealfs_core::config::{MAX_CHUNK_PIECES, MAX_IO_SIZE};
use sealfs_core::{Credentials, FsError, FsResult, InodeId, PartitionId};
use sealfs_proto::{attach, ctx, pb, piece_table};
use tokio::sync::oneshot;
use tracing::debug;

use crate::router::Router;

/// Writes up to this size are gathered; larger ones cost their bytes, not the call, and go alone.
pub const GATHER_MAX: usize = 256 << 10;

/// How a chunk write was answered: the partition written and the node's verifier and map epoch
/// (what a later commit must present).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub partition: PartitionId,
    pub verifier: u64,
    pub epoch: u64,
}

/// A chunk: inode and index.
type ChunkKey = (InodeId, u64);

struct Waiter {
    offset: u32,
    data: Bytes,
    reply: oneshot::Sender<FsResult<Written>>,
}

/// The writes waiting for one chunk (present while a sender runs for it).
#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiter>,
    chunk_size: u32,
}

/// Per-chunk queues of small unstable writes and the tasks that send them.
pub struct Gatherer {
    router: Arc<Router>,
    queues: Mutex<HashMap<ChunkKey, Queue>>,
    /// The map epoch at which a node refused `WriteChunkPieces` (an older version); until the
    /// map changes (as it does when a node restarts upgraded), pieces go one by one. 0: never.
    refused_at: AtomicU64,
}

impl Gatherer {
    /// Gatherer sending through `router`.
    pub fn new(router: Arc<Router>) -> Arc<Gatherer> {
        Arc::new(Gatherer {
            router,
            queues: Mutex::new(HashMap::new()),
            refused_at: AtomicU64::new(0),
        })
    }

    /// Write `data` (at most [`GATHER_MAX`] bytes, within the chunk) at `offset` of chunk
    /// `index` of `ino`, unstably, with the writes queued for that chunk. Runs on the tokio
    /// runtime; the send goes on if the caller stops waiting.
    pub async fn write(
        self: &Arc<Self>,
        ino: InodeId,
        index: u64,
        offset: u32,
        data: Bytes,
        chunk_size: u32,
    ) -> FsResult<Written> {
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            offset,
            data,
            reply: tx,
        };
        let start = {
            let mut qs = self.queues.lock().expect("gather queues");
            match qs.get_mut(&(ino, index)) {
                Some(q) => {
                    q.waiting.push_back(waiter);
                    false
                }
                None => {
                    let mut q = Queue {
                        chunk_size,
                        ..Default::default()
                    };
                    q.waiting.push_back(waiter);
                    qs.insert((ino, index), q);
                    true
                }
            }
        };
        if start {
            tokio::spawn(self.clone().send_all((ino, index)));
        }
        rx.await
            .unwrap_or_else(|_| Err(FsError::Io("the chunk write's sender stopped".into())))
    }

    /// Send what is queued for `key`, a call at a time, until its queue is empty; then drop it.
    async fn send_all(self: Arc<Self>, key: ChunkKey) {
        loop {
            let (batch, chunk_size) = {
                let mut qs = self.queues.lock().expect("gather queues");
                let Some(q) = qs.get_mut(&key) else { return };
                let mut batch = Vec::new();
                let mut bytes = 0;
                while let Some(w) = q.waiting.front() {
                    let fits =
                        batch.is_empty() || (batch.len() < MAX_CHUNK_PIECES && bytes + w.data.len() <= MAX_IO_SIZE);
                    if !fits {
                        break;
                    }
                    bytes += w.data.len();
                    batch.push(q.waiting.pop_front().expect("front exists"));
                }
                if batch.is_empty() {
                    qs.remove(&key);
                    return;
                }
                (batch, q.chunk_size)
            };
            let pieces: Vec<(u32, Bytes)> = batch.iter().map(|w| (w.offset, w.data.clone())).collect();
            let r = self.send(key, pieces, chunk_size).await;
            for w in batch {
                let _ = w.reply.send(r.clone());
            }
        }
    }

    /// One call writing `pieces` to chunk `key`: `WriteChunk` for one, `WriteChunkPieces` for
    /// more (one by one to a node that does not know it).
    async fn send(&self, key: ChunkKey, pieces: Vec<(u32, Bytes)>, chunk_size: u32) -> FsResult<Written> {
        let (ino, index) = key;
        let map = self.router.map();
        let refused = self.refused_at.load(Ordering::Relaxed);
        if pieces.len() > 1 && (refused == 0 || map.epoch > refused) {
            let mut data = BytesMut::with_capacity(pieces.iter().map(|(_, d)| d.len()).sum());
            let table = piece_table(&pieces);
            for (_, d) in &pieces {
                data.extend_from_slice(d);
            }
            let data = data.freeze();
            if let [one] = table[..] {
                // Writes that follow each other (small sequential writes): one plain write.
                return write_one(&self.router, ino, index, one.offset, data, false, chunk_size).await;
            }
            let call = ChunkCall {
                ino,
                index,
                chunk_size,
                stable: false,
            };
            if let Some(w) = call.send(&self.router, 0, data, table).await? {
                return Ok(w);
            }
            debug!("a node does not take WriteChunkPieces: writing pieces one by one");
            self.refused_at.store(map.epoch.max(1), Ordering::Relaxed);
        }
        let mut out: Option<Written> = None;
        for (offset, data) in pieces {
            let w = write_one(&self.router, ino, index, offset, data, false, chunk_size).await?;
            // The first verifier and the earliest epoch, as `DirtyChunks` keeps them.
            out = Some(match out {
                Some(o) => Written {
                    epoch: o.epoch.min(w.epoch),
                    ..o
                },
                None => w,
            });
        }
        out.ok_or_else(|| FsError::Invalid("a chunk write of no pieces".into()))
    }
}

/// One `WriteChunk` call: `data` at `offset` of chunk `index` of `ino`.
pub(crate) async fn write_one(
    router: &Router,
    ino: InodeId,
    index: u64,
    offset: u32,
    data: Bytes,
    stable: bool,
    chunk_size: u32,
) -> FsResult<Written> {
    let call = ChunkCall {
        ino,
        index,
        chunk_size,
        stable,
    };
    let w = call.send(router, offset, data, Vec::new()).await?;
    w.ok_or_else(|| FsError::Io("WriteChunk refused as unknown".into()))
}

/// The chunk a write call goes to, and how.
struct ChunkCall {
    ino: InodeId,
    index: u64,
    chunk_size: u32,
    stable: bool,
}

impl ChunkCall {
    /// Send `data`: at `offset` as `WriteChunk` when `table` is empty, else as the pieces the
    /// table describes (`WriteChunkPieces`). None: the node does not know that call (an older
    /// version).
    async fn send(
        &self,
        router: &Router,
        offset: u32,
        data: Bytes,
        table: Vec<pb::ChunkPiece>,
    ) -> FsResult<Option<Written>> {
        let Self {
            ino,
            index,
            chunk_size,
            stable,
        } = *self;
        let partition = router.map().chunk_partition(ino, index);
        let r = router
            .call(partition, |mut c, epoch| {
                let pieces = !table.is_empty();
                let req = pb::WriteChunkRequest {
                    ctx: Some(ctx(epoch, &Credentials::root())),
                    chunk: Some(pb::ChunkId { ino, index }),
                    offset,
                    data: Bytes::new(),
                    stable,
                    chunk_size,
                    pieces: table.clone(),
                };
                // The data goes beside the message (see sealfs_proto::attach).
                let req = attach::request(req, attach::WRITE_CHUNK_DATA, data.clone());
                async move {
                    let r = if pieces {
                        c.write_chunk_pieces(req).await
                    } else {
                        c.write_chunk(req).await
                    };
                    match r {
                        Err(s) if pieces && s.code() == tonic::Code::Unimplemented => Ok(tonic::Response::new(None)),
                        r => r.map(|r| tonic::Response::new(Some(r.into_inner()))),
                    }
                }
            })
            .await?;
        Ok(r.map(|r| Written {
            partition,
            verifier: r.verifier,
            epoch: r.epoch,
        }))
    }
}
