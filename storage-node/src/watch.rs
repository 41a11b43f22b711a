//! Change notifications for caching clients. Every metadata batch this node commits as a primary
//! is published (inodes whose records changed, directory entries added or removed, and which
//! process asked for the change), and each `Watch` stream sends a client the changes other
//! processes made, so it can drop exactly those from its kernel's cache and cache the rest for
//! long. A client that falls behind is told to drop everything (`reset`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sealfs_proto::pb;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::keys;
use crate::store::KvOps;

/// Changes kept for watchers that are behind; past that they get a reset.
const BACKLOG: usize = 8192;
/// Changes sent in one message at most.
const BATCH: usize = 512;
/// The least time between two messages of one stream that are not full: a change after a quiet
/// spell goes at once, changes that follow it within this time go together after it.
const SEND_GAP: Duration = Duration::from_millis(5);

/// One committed metadata batch, as watchers see it.
#[derive(Debug)]
pub struct Change {
    /// The process that asked for it (0: unknown, or the node itself).
    pub origin: u64,
    /// Inodes whose record was written or deleted.
    pub inodes: Vec<u64>,
    /// Directory entries written or deleted: (parent, name).
    pub entries: Vec<(u64, Bytes)>,
}

/// Where committed changes are published.
pub struct Changes {
    tx: broadcast::Sender<Arc<Change>>,
    /// Ends every stream (the node is stopping: its server waits for streams to end).
    closed: CancellationToken,
}

impl Default for Changes {
    fn default() -> Changes {
        Changes {
            tx: broadcast::channel(BACKLOG).0,
            closed: CancellationToken::new(),
        }
    }
}

impl Changes {
    /// End every stream, now and from now on (a stopping node's clients then watch elsewhere).
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// What watchers must hear of `ops`, or None when nobody watches or nothing of it is cached
    /// by clients. Called before the batch is written (the batch is consumed by the write).
    pub fn of(&self, ops: &KvOps) -> Option<Change> {
        if self.tx.receiver_count() == 0 {
            return None;
        }
        let mut c = Change {
            origin: sealfs_proto::auth::current_origin().unwrap_or(0),
            inodes: Vec::new(),
            entries: Vec::new(),
        };
        for (k, _) in ops {
            if let Some(ino) = keys::parse_inode(k) {
                c.inodes.push(ino);
            } else if let Some((parent, _, name)) = keys::parse_dentry(k) {
                c.entries.push((parent, Bytes::copy_from_slice(name)));
            }
        }
        (!c.inodes.is_empty() || !c.entries.is_empty()).then_some(c)
    }

    /// Tell the watchers about a change that committed.
    pub fn publish(&self, c: Option<Change>) {
        if let Some(c) = c {
            // An error only means nobody watches any more.
            let _ = self.tx.send(Arc::new(c));
        }
    }

    /// A stream of the changes that processes other than `subscriber` make from now on. Its
    /// first message is empty (the stream is live); it ends when the client goes away.
    pub fn watch(&self, subscriber: u64) -> mpsc::Receiver<Result<pb::WatchEvents, Status>> {
        let mut rx = self.tx.subscribe();
        let (out, stream) = mpsc::channel(16);
        let closed = self.closed.clone();
        tokio::spawn(async move {
            if closed.is_cancelled() || out.send(Ok(pb::WatchEvents::default())).await.is_err() {
                return;
            }
            let mut last_sent: Option<Instant> = None;
            loop {
                let mut batch = pb::WatchEvents::default();
                let mut taken = 0;
                let first = tokio::select! {
                    r = rx.recv() => r,
                    _ = closed.cancelled() => return,
                };
                if !gather(&mut rx, Some(first), subscriber, &mut batch, &mut taken) {
                    return;
                }
                if batch.inodes.is_empty() && batch.entries.is_empty() && !batch.reset {
                    continue;
                }
                // Under a stream of changes, one message per SEND_GAP at most, with all that came
                // meanwhile: each message costs the client a wake-up and a read. A full one goes
                // at once, so the gap never limits how many changes a stream carries.
                let due = last_sent.map(|t| t + SEND_GAP).filter(|d| *d > Instant::now());
                if let Some(due) = due.filter(|_| taken < BATCH) {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => {}
                        _ = closed.cancelled() => return,
                    }
                    if !gather(&mut rx, None, subscriber, &mut batch, &mut taken) {
                        return;
                    }
                }
                if batch.reset {
                    batch.inodes.clear();
                    batch.entries.clear();
                }
                tokio::select! {
                    r = out.send(Ok(batch)) => if r.is_err() { return },
                    _ = closed.cancelled() => return,
                }
                last_sent = Some(Instant::now());
            }
        });
        stream
    }
}

/// Add `first` (if any) and whatever else is queued, up to [`BATCH`] changes in all, to `batch`:
/// the changes of processes other than `subscriber`, or a reset where some were missed. False
/// when `first` says no more changes will come.
fn gather(
    rx: &mut broadcast::Receiver<Arc<Change>>,
    first: Option<Result<Arc<Change>, broadcast::error::RecvError>>,
    subscriber: u64,
    batch: &mut pb::WatchEvents,
    taken: &mut usize,
) -> bool {
    let mut next = first;
    loop {
        if next.is_none() && *taken < BATCH {
            next = match rx.try_recv() {
                Ok(c) => Some(Ok(c)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Err(broadcast::error::RecvError::Lagged(n))),
                // Closed: what was gathered still goes; the next wait ends the stream.
                Err(_) => None,
            };
        }
        match next.take() {
            None => return true,
            Some(Ok(c)) => {
                if c.origin != subscriber || subscriber == 0 {
                    batch.inodes.extend_from_slice(&c.inodes);
                    batch
                        .entries
                        .extend(c.entries.iter().map(|(parent, name)| pb::WatchEntry {
                            parent: *parent,
                            name: name.clone(),
                        }));
                }
                *taken += 1;
            }
            Some(Err(broadcast::error::RecvError::Lagged(_))) => batch.reset = true,
            Some(Err(broadcast::error::RecvError::Closed)) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops() -> KvOps {
        vec![
            (keys::inode(3, (3 << 48) | 7), Some(vec![1])),
            (keys::dentry(3, (3 << 48) | 1, b"name"), None),
            (keys::counter(3), Some(vec![0; 8])),
        ]
    }

    #[tokio::test]
    async fn watchers_hear_others_changes_but_not_their_own() {
        let ch = Changes::default();
        assert!(ch.of(&ops()).is_none(), "nobody watches: nothing to build");
        let mut mine = ch.watch(42);
        let mut other = ch.watch(7);
        assert_eq!(mine.recv().await.unwrap().unwrap(), pb::WatchEvents::default());
        assert_eq!(other.recv().await.unwrap().unwrap(), pb::WatchEvents::default());
        let c = sealfs_proto::auth::ORIGIN.scope(42, async { ch.of(&ops()) }).await;
        ch.publish(c);
        let got = other.recv().await.unwrap().unwrap();
        assert_eq!(got.inodes, vec![(3 << 48) | 7]);
        assert_eq!(got.entries.len(), 1);
        assert_eq!(got.entries[0].parent, (3 << 48) | 1);
        assert_eq!(&got.entries[0].name[..], b"name");
        // The origin's own stream stays quiet: the next thing it hears is another's change.
        let c = sealfs_proto::auth::ORIGIN.scope(7, async { ch.of(&ops()) }).await;
        ch.publish(c);
        let got = mine.recv().await.unwrap().unwrap();
        assert_eq!(got.inodes, vec![(3 << 48) | 7]);
    }

    #[tokio::test]
    async fn closing_ends_every_stream() {
        let ch = Changes::default();
        let mut w = ch.watch(1);
        let _ = w.recv().await;
        ch.close();
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), w.recv()).await;
        assert!(matches!(end, Ok(None)), "the stream must end when the node stops");
        let mut late = ch.watch(2);
        assert!(late.recv().await.is_none(), "no new stream after close");
    }

    fn ops_of(ino: u64) -> KvOps {
        vec![(keys::inode(3, (3 << 48) | ino), Some(vec![1]))]
    }

    #[tokio::test(start_paused = true)]
    async fn changes_close_together_go_in_one_message_and_a_lone_one_at_once() {
        let ch = Changes::default();
        let mut w = ch.watch(1);
        let _ = w.recv().await;
        let ino = |i: u64| (3 << 48) | i;
        ch.publish(ch.of(&ops_of(1)));
        assert_eq!(w.recv().await.unwrap().unwrap().inodes, vec![ino(1)]);
        // The next change comes right after a message: it waits for the gap, and what comes
        // meanwhile goes with it.
        ch.publish(ch.of(&ops_of(2)));
        tokio::task::yield_now().await;
        ch.publish(ch.of(&ops_of(3)));
        let began = Instant::now();
        assert_eq!(w.recv().await.unwrap().unwrap().inodes, vec![ino(2), ino(3)]);
        assert!(began.elapsed() <= SEND_GAP);
        // After a quiet spell a change goes at once.
        tokio::time::sleep(SEND_GAP * 2).await;
        ch.publish(ch.of(&ops_of(4)));
        let began = Instant::now();
        assert_eq!(w.recv().await.unwrap().unwrap().inodes, vec![ino(4)]);
        assert_eq!(began.elapsed(), Duration::ZERO, "no wait after a quiet spell");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_message_does_not_wait_for_the_gap() {
        let ch = Changes::default();
        let mut w = ch.watch(1);
        let _ = w.recv().await;
        ch.publish(ch.of(&ops_of(1)));
        let _ = w.recv().await;
        for i in 0..BATCH as u64 {
            ch.publish(ch.of(&ops_of(10 + i)));
        }
        let began = Instant::now();
        assert_eq!(w.recv().await.unwrap().unwrap().inodes.len(), BATCH);
        assert_eq!(began.elapsed(), Duration::ZERO, "a full message goes at once");
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_told_to_reset() {
        let ch = Changes::default();
        let mut w = ch.watch(1);
        let _ = w.recv().await;
        // Fill the backlog and the stream's own buffer without reading.
        for _ in 0..(BACKLOG * 3) {
            ch.publish(ch.of(&ops()));
        }
        let mut reset = false;
        while let Ok(Some(Ok(m))) = tokio::time::timeout(std::time::Duration::from_secs(2), w.recv()).await {
            reset |= m.reset;
        }
        assert!(reset, "a watcher that missed changes must be told so");
    }
}
