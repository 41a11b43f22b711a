//! The background scrub: every chunk this node holds an in-sync copy of is read back from the
//! disk and checked against its checksums, one pass at a bounded rate, the next pass starting
//! `scrub_interval_secs` after the last one ended (a time kept across restarts). A block that
//! fails is mended from another replica, as a client read that meets it would be: without the
//! scrub, a copy nobody reads could rot unseen until the other copies were lost too. A pass that
//! a restart cuts short goes on from the partition it had reached.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sealfs_core::{FsError, PartitionId};
use sealfs_proto::pb;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::chunks::now_secs;
use crate::keys;
use crate::node::Node;

/// Bytes of a chunk checked in one step (and between two looks at the rate).
const PIECE: u64 = 1 << 20;

/// What this node's scrub found since the node started.
#[derive(Debug, Default)]
pub struct ScrubStats {
    passes: AtomicU64,
    chunks: AtomicU64,
    bytes: AtomicU64,
    corrupt: AtomicU64,
    repaired: AtomicU64,
    unrepaired: AtomicU64,
    last_pass_end: AtomicU64,
}

impl ScrubStats {
    /// The figures as the node reports them to the manager.
    pub fn to_pb(&self) -> pb::ScrubStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        pb::ScrubStats {
            passes: get(&self.passes),
            chunks: get(&self.chunks),
            bytes: get(&self.bytes),
            corrupt: get(&self.corrupt),
            repaired: get(&self.repaired),
            unrepaired: get(&self.unrepaired),
            last_pass_end: get(&self.last_pass_end),
        }
    }

    fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// How long until the next pass, given when the last one ended (`last`, or the node's first
/// start) and the time now, both in seconds since 1970. A clock that went back waits one
/// interval from now, not until the old time comes round again.
pub fn next_pass_in(last: u64, now: u64, interval_secs: u64) -> Duration {
    let wait = if last > now {
        interval_secs
    } else {
        (last.saturating_add(interval_secs)).saturating_sub(now)
    };
    Duration::from_secs(wait)
}

/// Keeps a pass to its rate.
#[derive(Debug)]
pub struct Pace {
    start: Instant,
    bytes: u64,
    per_sec: u64,
}

impl Pace {
    /// A pace of `per_sec` bytes a second from `start` (at least one byte a second).
    pub fn new(per_sec: u64, start: Instant) -> Pace {
        Pace {
            start,
            bytes: 0,
            per_sec: per_sec.max(1),
        }
    }

    /// `n` more bytes were read by `now`: how long to wait before reading on.
    pub fn after(&mut self, n: u64, now: Instant) -> Duration {
        self.bytes = self.bytes.saturating_add(n);
        let due = self.start + Duration::from_secs_f64(self.bytes as f64 / self.per_sec as f64);
        due.saturating_duration_since(now)
    }
}

/// A pass stopped because the node is stopping.
struct Stopped;

impl Node {
    /// Whether this node holds an in-sync copy of partition `p` (the copies a scrub checks: one
    /// being filled is incomplete by design).
    fn holds_in_sync(&self, p: PartitionId) -> bool {
        self.router
            .map()
            .replicas(p)
            .is_some_and(|r| r.in_sync.contains(&self.id))
    }

    /// Run scrub passes until `cancel` fires: one every `interval_secs` (0: none), reading at most
    /// `mib_per_sec` MiB a second.
    pub async fn scrub_worker(self: Arc<Self>, interval_secs: u64, mib_per_sec: u64, cancel: CancellationToken) {
        if interval_secs == 0 {
            info!("scrub off (scrub_interval_secs = 0)");
            return;
        }
        loop {
            let now = now_secs();
            // A pass a restart cut short goes on where it was, at once.
            let resume = self.store.node_u64(keys::SCRUB_RESUME).ok().flatten().unwrap_or(0);
            let last = match self.store.node_u64(keys::SCRUB_DONE_AT) {
                Ok(Some(t)) => t,
                Ok(None) => {
                    // The first start: the first pass comes an interval from now.
                    if let Err(e) = self.store.put_node_u64s(&[(keys::SCRUB_DONE_AT, now)]).await {
                        warn!("cannot record the scrub's start: {e}");
                    }
                    now
                }
                Err(e) => {
                    warn!("cannot read when the last scrub ended: {e}");
                    now
                }
            };
            let wait = if resume > 0 {
                Duration::ZERO
            } else {
                next_pass_in(last, now, interval_secs)
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let began = Instant::now();
            let before = self.scrub.to_pb();
            let from = u32::try_from(resume).unwrap_or(0);
            info!(from_partition = from, "scrub pass begins");
            if self
                .scrub_pass(from, mib_per_sec.saturating_mul(1 << 20), &cancel)
                .await
                .is_err()
            {
                return;
            }
            let ended = now_secs();
            let done = [(keys::SCRUB_DONE_AT, ended), (keys::SCRUB_RESUME, 0)];
            if let Err(e) = self.store.put_node_u64s(&done).await {
                warn!("cannot record the scrub pass's end: {e}");
            }
            ScrubStats::add(&self.scrub.passes, 1);
            self.scrub.last_pass_end.store(ended, Ordering::Relaxed);
            let after = self.scrub.to_pb();
            info!(
                chunks = after.chunks - before.chunks,
                bytes = after.bytes - before.bytes,
                corrupt = after.corrupt - before.corrupt,
                repaired = after.repaired - before.repaired,
                unrepaired = after.unrepaired - before.unrepaired,
                secs = began.elapsed().as_secs(),
                "scrub pass done"
            );
        }
    }

    /// One pass over every chunk of every partition this node holds in sync, from partition
    /// `from` on (where a pass a restart cut short had got to).
    async fn scrub_pass(&self, from: PartitionId, per_sec: u64, cancel: &CancellationToken) -> Result<(), Stopped> {
        let mut pace = Pace::new(per_sec, Instant::now());
        let partitions = self.router.map().partitions;
        for p in from..partitions {
            if !self.holds_in_sync(p) {
                continue;
            }
            let list = match self.chunks.list(p).await {
                Ok(l) => l,
                Err(e) => {
                    warn!(partition = p, "scrub: cannot list the partition's chunks: {e}");
                    continue;
                }
            };
            for (ino, index, _) in list {
                let mut off = 0;
                // The partition may move away meanwhile: its copy here is then going.
                while self.holds_in_sync(p) {
                    if cancel.is_cancelled() {
                        return Err(Stopped);
                    }
                    let (read, done) = match self.chunks.scrub(p, ino, index, off, PIECE).await {
                        Ok(len) => {
                            let n = len.saturating_sub(off).min(PIECE);
                            ScrubStats::add(&self.scrub.bytes, n);
                            off += PIECE;
                            let done = off >= len;
                            if done && len > 0 {
                                ScrubStats::add(&self.scrub.chunks, 1);
                            }
                            (n, done)
                        }
                        Err(FsError::Corrupt(_)) => {
                            ScrubStats::add(&self.scrub.corrupt, 1);
                            ScrubStats::add(&self.scrub.chunks, 1);
                            // The repair compares every block of the chunk with another copy's.
                            match self.repair_chunk(p, ino, index).await {
                                Ok(()) => ScrubStats::add(&self.scrub.repaired, 1),
                                Err(e) => {
                                    ScrubStats::add(&self.scrub.unrepaired, 1);
                                    error!(partition = p, ino, index, "scrub: a corrupt chunk is not mended: {e}");
                                }
                            }
                            (0, true)
                        }
                        Err(e) => {
                            warn!(partition = p, ino, index, "scrub: cannot check a chunk: {e}");
                            (0, true)
                        }
                    };
                    let wait = pace.after(read, Instant::now());
                    if !wait.is_zero() {
                        tokio::select! {
                            _ = cancel.cancelled() => return Err(Stopped),
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                    if done {
                        break;
                    }
                }
            }
            // Where a restart goes on with the pass: a pass longer than a node's time between
            // restarts still gets round every partition.
            let next = [(keys::SCRUB_RESUME, u64::from(p) + 1)];
            if let Err(e) = self.store.put_node_u64s(&next).await {
                warn!("cannot record the scrub's progress: {e}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_pass_comes_an_interval_after_the_last() {
        assert_eq!(next_pass_in(1000, 1000, 60), Duration::from_secs(60));
        assert_eq!(next_pass_in(1000, 1050, 60), Duration::from_secs(10));
        // Overdue (the node was down through it): at once.
        assert_eq!(next_pass_in(1000, 5000, 60), Duration::ZERO);
        // The clock went back: one interval from now, not an hour and one.
        assert_eq!(next_pass_in(5000, 1400, 60), Duration::from_secs(60));
    }

    #[test]
    fn the_pace_holds_the_rate() {
        let t0 = Instant::now();
        let mut p = Pace::new(1 << 20, t0);
        // Half a MiB read at once: wait until half a second has passed.
        assert_eq!(p.after(512 << 10, t0), Duration::from_millis(500));
        // Read slower than the rate: no wait.
        assert_eq!(p.after(512 << 10, t0 + Duration::from_secs(2)), Duration::ZERO);
        // A burst after a slow spell waits only for what the rate has not yet paid for.
        assert_eq!(p.after(1 << 20, t0 + Duration::from_secs(1)), Duration::from_secs(1));
        // A rate of zero reads a byte a second rather than dividing by zero.
        let mut z = Pace::new(0, t0);
        assert_eq!(z.after(3, t0), Duration::from_secs(3));
    }
}
