//! Creates in one directory that arrive while another create there is being committed wait
//! for it, then go together: one transaction and one synced commit on every replica for all of
//! them, instead of one synced commit each, in turn, under the directory's lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sealfs_core::perm::Credentials;
use sealfs_core::{FsError, FsResult, InodeId};
use sealfs_proto::pb;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::node::Node;

/// What a create answers: the file's attributes and its directory's change.
pub type Created = (pb::Attr, Option<pb::DirChange>);

/// Most creates one commit takes; the rest wait for the next.
pub const BATCH_MAX: usize = 256;

/// A create waiting for its directory's turn.
pub struct Waiting {
    /// Who asks.
    pub cred: Credentials,
    /// The request as it came.
    pub req: pb::CreateRequest,
    reply: oneshot::Sender<FsResult<Created>>,
}

impl Waiting {
    /// Send the create its answer (nobody may be waiting any more: then it goes nowhere).
    pub fn answer(self, r: FsResult<Created>) {
        let _ = self.reply.send(r);
    }
}

/// The directories with a create under way (present: one is being committed), each with the
/// creates waiting behind it, oldest first.
#[derive(Default)]
pub struct CreateQueues {
    dirs: Mutex<HashMap<InodeId, Vec<Waiting>>>,
}

/// Whether a create goes now or waits.
pub enum Turn {
    /// None was under way in the directory: commit this one now, then
    /// [`CreateQueues::release`] the directory.
    Lead,
    /// Another is under way: the answer comes here once a later batch committed this one.
    Wait(oneshot::Receiver<FsResult<Created>>),
}

impl CreateQueues {
    fn dirs(&self) -> std::sync::MutexGuard<'_, HashMap<InodeId, Vec<Waiting>>> {
        self.dirs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A create in `dir` arrives; `ask` makes its queue entry if it has to wait.
    pub fn join(&self, dir: InodeId, ask: impl FnOnce() -> (Credentials, pb::CreateRequest)) -> Turn {
        let mut dirs = self.dirs();
        match dirs.get_mut(&dir) {
            None => {
                dirs.insert(dir, Vec::new());
                Turn::Lead
            }
            Some(q) => {
                let (cred, req) = ask();
                let (reply, rx) = oneshot::channel();
                q.push(Waiting { cred, req, reply });
                Turn::Wait(rx)
            }
        }
    }

    /// The next batch of `dir`: up to [`BATCH_MAX`] waiting creates, oldest first. Empty when
    /// none wait: the directory is then idle (the next create leads).
    pub fn take(&self, dir: InodeId) -> Vec<Waiting> {
        let mut dirs = self.dirs();
        let Some(q) = dirs.get_mut(&dir) else {
            return Vec::new();
        };
        if q.is_empty() {
            dirs.remove(&dir);
            return Vec::new();
        }
        let n = q.len().min(BATCH_MAX);
        q.drain(..n).collect()
    }

    /// The leading create of `dir` is done. True when creates wait behind it: the caller must
    /// [`CreateQueues::take`] them (the directory stays busy until then); false: it is idle.
    pub fn release(&self, dir: InodeId) -> bool {
        let mut dirs = self.dirs();
        if dirs.get(&dir).is_some_and(|q| !q.is_empty()) {
            return true;
        }
        dirs.remove(&dir);
        false
    }

    /// Nobody will commit the creates waiting in `dir`: each is answered with an error (they
    /// were not applied) and the directory is idle again.
    pub fn abandon(&self, dir: InodeId) {
        let waiting = self.dirs().remove(&dir).unwrap_or_default();
        for w in waiting {
            w.answer(Err(FsError::Unavailable(
                "the create could not be committed with its batch; try again".into(),
            )));
        }
    }

    /// Directories with a create under way.
    #[cfg(test)]
    fn busy(&self) -> usize {
        self.dirs().len()
    }
}

/// Held by the leading create of a directory while it commits; when it ends (answered, failed
/// or dropped because its caller went away), the creates that queued behind it are committed
/// by a task of their own.
pub struct HandOver {
    node: Arc<Node>,
    dir: InodeId,
}

impl HandOver {
    /// The leading create of `dir` goes now.
    pub fn new(node: &Arc<Node>, dir: InodeId) -> HandOver {
        HandOver {
            node: node.clone(),
            dir,
        }
    }
}

impl Drop for HandOver {
    fn drop(&mut self) {
        if !self.node.creates.release(self.dir) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(drain(self.node.clone(), self.dir));
            }
            Err(_) => self.node.creates.abandon(self.dir),
        }
    }
}

/// Commit the creates waiting in `dir`, a batch at a time, until none wait.
async fn drain(node: Arc<Node>, dir: InodeId) {
    // A panic while committing must not leave the directory busy with nobody to drain it.
    struct Abandon<'a>(&'a Node, InodeId, bool);
    impl Drop for Abandon<'_> {
        fn drop(&mut self) {
            if self.2 {
                warn!(dir = self.1, "creates in a directory ended without being committed");
                self.0.creates.abandon(self.1);
            }
        }
    }
    let mut guard = Abandon(&node, dir, true);
    loop {
        let batch = node.creates.take(dir);
        if batch.is_empty() {
            guard.2 = false;
            return;
        }
        debug!(dir, creates = batch.len(), "creates committed together");
        let asks: Vec<(&Credentials, &pb::CreateRequest)> = batch.iter().map(|w| (&w.cred, &w.req)).collect();
        let results = node.create_batch(dir, &asks).await;
        for (w, r) in batch.into_iter().zip(results) {
            w.answer(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(name: &str) -> impl FnOnce() -> (Credentials, pb::CreateRequest) + '_ {
        move || {
            (
                Credentials::root(),
                pb::CreateRequest {
                    name: bytes::Bytes::copy_from_slice(name.as_bytes()),
                    ..Default::default()
                },
            )
        }
    }

    fn names(batch: &[Waiting]) -> Vec<&[u8]> {
        batch.iter().map(|w| &w.req.name[..]).collect()
    }

    #[test]
    fn the_first_create_leads_and_the_rest_queue_in_order() {
        let q = CreateQueues::default();
        assert!(matches!(q.join(7, ask("a")), Turn::Lead));
        assert!(matches!(q.join(8, ask("other dir")), Turn::Lead));
        let _b = q.join(7, ask("b"));
        let _c = q.join(7, ask("c"));
        assert!(q.release(7), "two wait behind the leader");
        assert_eq!(names(&q.take(7)), [b"b".as_slice(), b"c"]);
        assert!(
            matches!(q.join(7, ask("d")), Turn::Wait(_)),
            "still busy while a batch commits"
        );
        assert_eq!(names(&q.take(7)), [b"d".as_slice()]);
        assert!(q.take(7).is_empty());
        assert!(matches!(q.join(7, ask("e")), Turn::Lead), "idle once nothing waited");
        assert!(!q.release(7));
        assert!(!q.release(8));
        assert_eq!(q.busy(), 0);
    }

    #[test]
    fn a_batch_takes_at_most_batch_max() {
        let q = CreateQueues::default();
        assert!(matches!(q.join(1, ask("lead")), Turn::Lead));
        let names: Vec<String> = (0..BATCH_MAX + 3).map(|i| format!("f{i}")).collect();
        let _waits: Vec<Turn> = names.iter().map(|n| q.join(1, ask(n))).collect();
        assert!(q.release(1));
        assert_eq!(q.take(1).len(), BATCH_MAX);
        assert_eq!(q.take(1).len(), 3);
        assert!(q.take(1).is_empty());
        assert_eq!(q.busy(), 0);
    }

    #[tokio::test]
    async fn abandoned_creates_get_an_error_not_a_hang() {
        let q = CreateQueues::default();
        assert!(matches!(q.join(3, ask("lead")), Turn::Lead));
        let Turn::Wait(rx) = q.join(3, ask("x")) else {
            panic!("the second create must wait");
        };
        q.abandon(3);
        assert!(matches!(rx.await, Ok(Err(FsError::Unavailable(_)))));
        assert!(matches!(q.join(3, ask("y")), Turn::Lead));
    }
}
