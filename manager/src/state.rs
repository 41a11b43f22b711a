//! The manager's persistent state: the cluster map and membership, kept in `DIR/cluster.json`
//! (format version 1), rewritten atomically on every change, with what each down node held.
//! Liveness (last heartbeat, reported stats) is kept in memory only: after a restart every known
//! node gets a fresh grace period.
//!
//! Every event (a node registers, comes back, misses heartbeats, is drained, finishes a fill, or
//! is reported unreachable by a primary) changes the membership, then `placement::reconcile`
//! recomputes the replica sets; any change bumps the epoch and is written before it is served.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sealfs_core::config::ManagerConfig;
use sealfs_core::placement::{assign, reconcile_preferring, ClusterMap, NodeInfo, NodeState, Replicas};
use sealfs_core::{NodeId, PartitionId};
use sealfs_proto::pb;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// Format version of `cluster.json`.
pub const STATE_VERSION: u32 = 1;
const STATE_FILE: &str = "cluster.json";

#[derive(Debug, Serialize, Deserialize)]
struct PersistedNode {
    id: NodeId,
    addr: String,
    up: bool,
    #[serde(default)]
    draining: bool,
    /// The partitions the node held when it was marked down, until they are its again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    held_when_down: Vec<PartitionId>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PersistedReplicas {
    in_sync: Vec<NodeId>,
    #[serde(default)]
    filling: Vec<NodeId>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    version: u32,
    cluster_id: u64,
    epoch: u64,
    partitions: u32,
    replication: u32,
    chunk_size: u32,
    next_node_id: NodeId,
    nodes: Vec<PersistedNode>,
    assignment: Vec<PersistedReplicas>,
}

/// What the manager knows of a node beyond the map.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    pub last_seen: Option<Instant>,
    pub stats: pb::NodeStats,
}

/// The cluster state the manager owns.
#[derive(Debug)]
pub struct State {
    path: PathBuf,
    pub map: ClusterMap,
    next_node_id: NodeId,
    min_nodes: u32,
    pub live: HashMap<NodeId, Liveness>,
    /// The partitions each node that is down held when it was marked down: it still has their
    /// data, so when it comes back it gets them back first, and its fills send only what changed.
    /// Forgotten once it is back and filled. Persisted, so a manager restart while a node is down
    /// does not forget it.
    held_when_down: HashMap<NodeId, Vec<PartitionId>>,
}

/// What a registration decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub node_id: NodeId,
    pub cluster_id: u64,
}

/// A request the manager refuses, with why.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Invalid(String),
    #[error("stale: {0}")]
    Stale(String),
    #[error(transparent)]
    Persist(#[from] anyhow::Error),
}

impl State {
    /// Load the state in `dir`, or create a new cluster there from `config`.
    pub fn open(dir: &Path, config: &ManagerConfig) -> anyhow::Result<State> {
        let path = dir.join(STATE_FILE);
        let now = Instant::now();
        if path.exists() {
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let p: Persisted = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a valid cluster state", path.display()))?;
            if p.version != STATE_VERSION {
                bail!(
                    "{} has format version {}; this build reads version {STATE_VERSION}",
                    path.display(),
                    p.version
                );
            }
            let map = ClusterMap {
                cluster_id: p.cluster_id,
                epoch: p.epoch,
                partitions: p.partitions,
                replication: p.replication,
                chunk_size: p.chunk_size,
                nodes: p
                    .nodes
                    .iter()
                    .map(|n| NodeInfo {
                        id: n.id,
                        addr: n.addr.clone(),
                        state: if n.up { NodeState::Up } else { NodeState::Down },
                        draining: n.draining,
                    })
                    .collect(),
                assignment: p
                    .assignment
                    .into_iter()
                    .map(|r| Replicas {
                        in_sync: r.in_sync,
                        filling: r.filling,
                    })
                    .collect(),
            };
            if !map.assignment.is_empty() && map.assignment.len() != map.partitions as usize {
                bail!("{}: assignment does not cover every partition", path.display());
            }
            // Every node gets a full failure timeout to heartbeat after a manager restart.
            let live = map
                .nodes
                .iter()
                .map(|n| {
                    (
                        n.id,
                        Liveness {
                            last_seen: Some(now),
                            ..Default::default()
                        },
                    )
                })
                .collect();
            info!(
                cluster = format!("{:#x}", map.cluster_id),
                epoch = map.epoch,
                nodes = map.nodes.len(),
                "loaded cluster state"
            );
            let held_when_down = p
                .nodes
                .into_iter()
                .filter(|n| !n.held_when_down.is_empty())
                .map(|n| (n.id, n.held_when_down))
                .collect();
            return Ok(State {
                path,
                map,
                next_node_id: p.next_node_id,
                min_nodes: config.min_nodes,
                live,
                held_when_down,
            });
        }
        let cluster_id = rand::random::<u64>() | 1;
        let map = ClusterMap::new(cluster_id, config.partitions, config.replication, config.chunk_size);
        let state = State {
            path,
            map,
            next_node_id: 1,
            min_nodes: config.min_nodes,
            live: HashMap::new(),
            held_when_down: HashMap::new(),
        };
        state.persist()?;
        info!(
            cluster = format!("{cluster_id:#x}"),
            partitions = config.partitions,
            "created a new cluster"
        );
        Ok(state)
    }

    /// Write the state durably: a temporary file, fsync, rename over the old one, fsync the folder.
    pub fn persist(&self) -> anyhow::Result<()> {
        let m = &self.map;
        let p = Persisted {
            version: STATE_VERSION,
            cluster_id: m.cluster_id,
            epoch: m.epoch,
            partitions: m.partitions,
            replication: m.replication,
            chunk_size: m.chunk_size,
            next_node_id: self.next_node_id,
            nodes: m
                .nodes
                .iter()
                .map(|n| PersistedNode {
                    id: n.id,
                    addr: n.addr.clone(),
                    up: n.state == NodeState::Up,
                    draining: n.draining,
                    held_when_down: self.held_when_down.get(&n.id).cloned().unwrap_or_default(),
                })
                .collect(),
            assignment: m
                .assignment
                .iter()
                .map(|r| PersistedReplicas {
                    in_sync: r.in_sync.clone(),
                    filling: r.filling.clone(),
                })
                .collect(),
        };
        let text = serde_json::to_vec(&p)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&text)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path).with_context(|| format!("cannot replace {}", self.path.display()))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("cannot sync {}", dir.display()))?;
        }
        Ok(())
    }

    /// Recompute placement after a membership change; bump the epoch and persist if anything
    /// changed (`changed`: the caller changed something itself).
    fn settle(&mut self, mut changed: bool) -> anyhow::Result<()> {
        if !self.map.is_initialized() {
            let up: Vec<NodeId> = self.map.nodes.iter().filter(|n| n.eligible()).map(|n| n.id).collect();
            if (up.len() as u32) >= self.min_nodes {
                // The first placement: no data exists yet, so every replica starts in sync.
                self.map.assignment = assign(&[], self.map.partitions, &up, self.map.replication)
                    .into_iter()
                    .map(|s| Replicas {
                        in_sync: s,
                        filling: Vec::new(),
                    })
                    .collect();
                info!(
                    nodes = up.len(),
                    partitions = self.map.partitions,
                    "partitions assigned; the cluster is ready"
                );
                changed = true;
            }
        } else {
            // Nodes back since they were marked down get first pick of what they held.
            let mut prefer = vec![Vec::new(); self.map.partitions as usize];
            let map = &self.map;
            let up = |id: &NodeId| map.node(*id).is_some_and(|n| n.state == NodeState::Up);
            for (id, parts) in self.held_when_down.iter().filter(|(id, _)| up(id)) {
                for p in parts {
                    if let Some(v) = prefer.get_mut(*p as usize) {
                        v.push(*id);
                    }
                }
            }
            let next = reconcile_preferring(&self.map, &prefer);
            // Kept until the node's copies are made: a later change must not undo the choice
            // (a partition whose other new copy is done first would lose it again).
            self.held_when_down
                .retain(|id, _| !up(id) || next.iter().any(|r| r.filling.contains(id)));
            if next != self.map.assignment {
                let promoted = next
                    .iter()
                    .zip(&self.map.assignment)
                    .filter(|(n, o)| n.in_sync.first() != o.in_sync.first())
                    .count();
                let filling = next.iter().filter(|r| !r.filling.is_empty()).count();
                info!(promoted, filling, "replica sets changed");
                self.map.assignment = next;
                changed = true;
            }
        }
        if changed {
            self.map.epoch += 1;
            self.persist()?;
        }
        Ok(())
    }

    /// A node announces itself. `node_id` 0 asks for a new id. A `fresh` node (a process started
    /// after a crash) moves the epoch even if nothing else changes: replicas count as in sync
    /// only from the epoch they first see (Replication::writes_survived), and this one may have
    /// lost what it took unsynced before.
    pub fn register(
        &mut self,
        node_id: NodeId,
        addr: &str,
        stats: Option<pb::NodeStats>,
        fresh: bool,
        now: Instant,
    ) -> Result<Registered, Refused> {
        if addr.is_empty() || addr.len() > 256 {
            return Err(Refused::Invalid(
                "a node must give the address it serves on (at most 256 bytes)".into(),
            ));
        }
        let id = if node_id == 0 {
            let id = self.next_node_id;
            self.next_node_id += 1;
            id
        } else {
            self.next_node_id = self.next_node_id.max(node_id + 1);
            node_id
        };
        let mut changed = false;
        match self.map.nodes.iter_mut().find(|n| n.id == id) {
            Some(n) => {
                if n.addr != addr || n.state != NodeState::Up {
                    info!(node = id, addr, "node is back");
                    n.addr = addr.to_string();
                    n.state = NodeState::Up;
                    changed = true;
                } else if fresh {
                    info!(node = id, "node restarted after a crash: a new epoch");
                    changed = true;
                }
            }
            None => {
                info!(node = id, addr, "node joined");
                self.map.nodes.push(NodeInfo {
                    id,
                    addr: addr.to_string(),
                    state: NodeState::Up,
                    draining: false,
                });
                self.map.nodes.sort_by_key(|n| n.id);
                changed = true;
            }
        }
        let live = self.live.entry(id).or_default();
        live.last_seen = Some(now);
        if let Some(s) = stats {
            live.stats = s;
        }
        self.settle(changed)?;
        Ok(Registered {
            node_id: id,
            cluster_id: self.map.cluster_id,
        })
    }

    /// A heartbeat. Returns None for a node the manager does not know (it must register).
    pub fn heartbeat(
        &mut self,
        node_id: NodeId,
        stats: Option<pb::NodeStats>,
        now: Instant,
    ) -> anyhow::Result<Option<u64>> {
        let Some(n) = self.map.nodes.iter_mut().find(|n| n.id == node_id) else {
            return Ok(None);
        };
        let back = n.state == NodeState::Down;
        if back {
            info!(node = node_id, "node is up again");
            n.state = NodeState::Up;
        }
        let live = self.live.entry(node_id).or_default();
        live.last_seen = Some(now);
        if let Some(s) = stats {
            live.stats = s;
        }
        self.settle(back)?;
        Ok(Some(self.map.epoch))
    }

    /// Mark nodes that missed heartbeats for longer than `timeout` down. Returns whether the map
    /// changed.
    pub fn detect_failures(&mut self, timeout: Duration, now: Instant) -> anyhow::Result<bool> {
        let mut changed = false;
        let mut down = Vec::new();
        for n in self.map.nodes.iter_mut().filter(|n| n.state == NodeState::Up) {
            let seen = self.live.get(&n.id).and_then(|l| l.last_seen);
            if seen.is_none_or(|t| now.duration_since(t) > timeout) {
                warn!(
                    node = n.id,
                    addr = n.addr,
                    "no heartbeat for {timeout:?}: marking the node down"
                );
                n.state = NodeState::Down;
                down.push(n.id);
                changed = true;
            }
        }
        for id in down {
            let held = self.map.held_partitions(id);
            self.held_when_down.insert(id, held);
        }
        let before = self.map.epoch;
        self.settle(changed)?;
        Ok(self.map.epoch != before)
    }

    fn check_primary(&self, reporter: NodeId, p: PartitionId) -> Result<(), Refused> {
        let r = self
            .map
            .replicas(p)
            .ok_or_else(|| Refused::Invalid(format!("no partition {p}")))?;
        if r.in_sync.first() != Some(&reporter) {
            return Err(Refused::Stale(format!(
                "node {reporter} is not the primary of partition {p}"
            )));
        }
        Ok(())
    }

    /// A primary finished filling `target`: it joins the in-sync set.
    pub fn fill_done(&mut self, reporter: NodeId, p: PartitionId, target: NodeId) -> Result<(), Refused> {
        self.check_primary(reporter, p)?;
        let r = &mut self.map.assignment[p as usize];
        if !r.filling.contains(&target) {
            return Err(Refused::Stale(format!(
                "node {target} is not being filled for partition {p}"
            )));
        }
        r.filling.retain(|n| *n != target);
        r.in_sync.push(target);
        info!(partition = p, node = target, "replica filled");
        self.settle(true)?;
        Ok(())
    }

    /// A primary could not forward a change to `failed`: the replica leaves the partition, so the
    /// change can be acknowledged by the others. It is filled again later. The last in-sync
    /// replica (the reporter) always stays.
    pub fn replica_failed(
        &mut self,
        reporter: NodeId,
        p: PartitionId,
        failed: NodeId,
        reason: &str,
    ) -> Result<(), Refused> {
        self.check_primary(reporter, p)?;
        if failed == reporter {
            return Err(Refused::Invalid("a primary cannot report itself".into()));
        }
        let r = &mut self.map.assignment[p as usize];
        let was = r.holds(failed);
        r.in_sync.retain(|n| *n != failed);
        r.filling.retain(|n| *n != failed);
        if was {
            warn!(partition = p, node = failed, reporter, "replica dropped: {reason}");
        }
        // Whether or not it was still there, answer with the current map so the reporter can go on.
        self.settle(was)?;
        Ok(())
    }

    /// Start or stop draining a node.
    pub fn drain(&mut self, node: NodeId, drain: bool) -> Result<(), Refused> {
        let n = self
            .map
            .nodes
            .iter_mut()
            .find(|n| n.id == node)
            .ok_or_else(|| Refused::Invalid(format!("no node {node}")))?;
        let changed = n.draining != drain;
        n.draining = drain;
        if changed {
            info!(node, drain, "draining changed");
        }
        self.settle(changed)?;
        Ok(())
    }

    /// Forget a node that holds nothing.
    pub fn remove_node(&mut self, node: NodeId) -> Result<(), Refused> {
        if !self.map.nodes.iter().any(|n| n.id == node) {
            return Err(Refused::Invalid(format!("no node {node}")));
        }
        let held = self.map.held_partitions(node).len();
        if held > 0 {
            return Err(Refused::Invalid(format!(
                "node {node} still holds {held} partitions: drain it first"
            )));
        }
        self.map.nodes.retain(|n| n.id != node);
        self.live.remove(&node);
        self.held_when_down.remove(&node);
        info!(node, "node removed");
        self.settle(true)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(min_nodes: u32, replication: u32) -> ManagerConfig {
        ManagerConfig {
            partitions: 16,
            min_nodes,
            replication,
            ..Default::default()
        }
    }

    #[test]
    fn assigns_once_enough_nodes_registered() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let mut s = State::open(dir.path(), &config(2, 1)).unwrap();
        let a = s.register(0, "a:1", None, false, now).unwrap();
        assert!(!s.map.is_initialized());
        let b = s.register(0, "b:1", None, false, now).unwrap();
        assert_ne!(a.node_id, b.node_id);
        assert_eq!(a.cluster_id, b.cluster_id);
        assert!(s.map.is_initialized());
        assert!(
            s.map.assignment.iter().all(|r| r.filling.is_empty()),
            "the first placement needs no fills"
        );
        // A third node joins: it is filled with its share, nothing leaves before that.
        s.register(0, "c:1", None, false, now).unwrap();
        let filling: Vec<_> = s.map.assignment.iter().filter(|r| !r.filling.is_empty()).collect();
        assert!(!filling.is_empty());
        assert!(s.map.assignment.iter().all(|r| r.in_sync.len() == 1));
    }

    #[test]
    fn a_node_back_after_it_was_marked_down_gets_back_what_it_held() {
        node_back_gets_what_it_held(false);
    }

    #[test]
    fn a_manager_restart_while_a_node_is_down_keeps_what_it_held() {
        node_back_gets_what_it_held(true);
    }

    /// A node is marked down, the manager restarts while it is (`restart`), the node comes back.
    fn node_back_gets_what_it_held(restart: bool) {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut s = State::open(dir.path(), &config(4, 3)).unwrap();
        let ids: Vec<NodeId> = ["a:1", "b:1", "c:1", "d:1"]
            .iter()
            .map(|a| s.register(0, a, None, false, t0).unwrap().node_id)
            .collect();
        let d = ids[3];
        let held = s.map.held_partitions(d);
        assert!(!held.is_empty());
        let later = t0 + Duration::from_secs(4);
        for id in &ids[..3] {
            s.heartbeat(*id, None, later).unwrap();
        }
        s.detect_failures(Duration::from_secs(3), later).unwrap();
        assert!(s.map.held_partitions(d).is_empty(), "dropped everywhere");
        if restart {
            drop(s);
            s = State::open(dir.path(), &config(4, 3)).unwrap();
        }
        // It comes back while the others are still copying what it held.
        assert!(s.map.assignment.iter().any(|r| !r.filling.is_empty()));
        s.register(d, "d:1", None, false, later).unwrap();
        // Those copies finish (each change reconciles again), and then its own.
        let done = |s: &mut State, ours: bool| {
            for (p, r) in s.map.assignment.clone().iter().enumerate() {
                for t in r.filling.iter().filter(|t| (**t == d) == ours) {
                    // A copy the placement no longer wants may already be gone: ignore that.
                    let _ = s.fill_done(r.in_sync[0], p as PartitionId, *t);
                }
            }
        };
        done(&mut s, false);
        done(&mut s, true);
        let back = s.map.held_partitions(d);
        assert!(s
            .map
            .assignment
            .iter()
            .all(|r| r.filling.is_empty() && r.in_sync.len() == 3));
        assert_eq!(back.len(), held.len(), "its share again");
        assert!(
            back.iter().all(|p| held.contains(p)),
            "{back:?} are not all of {held:?}"
        );
    }

    #[test]
    fn a_node_back_from_a_crash_moves_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let mut s = State::open(dir.path(), &config(2, 2)).unwrap();
        let a = s.register(0, "a:1", None, false, now).unwrap().node_id;
        s.register(0, "b:1", None, false, now).unwrap();
        let (epoch, assignment) = (s.map.epoch, s.map.assignment.clone());
        // Registering again after a clean stop (or after a manager restart) changes nothing.
        s.register(a, "a:1", None, false, now).unwrap();
        assert_eq!(s.map.epoch, epoch);
        // After a crash it moves the epoch, and only the epoch.
        s.register(a, "a:1", None, true, now).unwrap();
        assert_eq!(s.map.epoch, epoch + 1);
        assert_eq!(s.map.assignment, assignment);
        let reopened = State::open(dir.path(), &config(2, 2)).unwrap();
        assert_eq!(reopened.map.epoch, epoch + 1, "the new epoch is persisted");
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let (map, id) = {
            let mut s = State::open(dir.path(), &config(1, 1)).unwrap();
            let r = s.register(0, "a:1", None, false, now).unwrap();
            (s.map.clone(), r.node_id)
        };
        let mut s = State::open(dir.path(), &config(1, 1)).unwrap();
        assert_eq!(s.map, map);
        // Ids are never handed out twice.
        let r = s.register(0, "b:1", None, false, now).unwrap();
        assert!(r.node_id > id);
    }

    #[test]
    fn missed_heartbeats_mark_down_promote_and_refill() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut s = State::open(dir.path(), &config(3, 2)).unwrap();
        let ids: Vec<NodeId> = ["a:1", "b:1", "c:1"]
            .iter()
            .map(|a| s.register(0, a, None, false, t0).unwrap().node_id)
            .collect();
        let dead = ids[0];
        let led: Vec<PartitionId> = s.map.primary_partitions(dead);
        let epoch = s.map.epoch;
        for id in &ids[1..] {
            s.heartbeat(*id, None, t0 + Duration::from_secs(3)).unwrap();
        }
        assert!(!s
            .detect_failures(Duration::from_secs(3), t0 + Duration::from_secs(1))
            .unwrap());
        assert!(s
            .detect_failures(Duration::from_secs(3), t0 + Duration::from_secs(4))
            .unwrap());
        assert_eq!(s.map.node(dead).unwrap().state, NodeState::Down);
        assert!(s.map.epoch > epoch);
        for p in led {
            let r = s.map.replicas(p).unwrap();
            assert_ne!(r.in_sync[0], dead, "partition {p} got a new primary");
            assert_eq!(r.in_sync.len() + r.filling.len(), 2, "and a new copy is being made");
        }
        // The new copies join when their fills are done.
        for p in 0..16 {
            let r = s.map.replicas(p).unwrap().clone();
            for t in r.filling {
                s.fill_done(r.in_sync[0], p, t).unwrap();
            }
        }
        assert!(s
            .map
            .assignment
            .iter()
            .all(|r| r.in_sync.len() == 2 && !r.in_sync.contains(&dead)));
        assert_eq!(s.heartbeat(999, None, t0).unwrap(), None);
    }

    #[test]
    fn only_the_primary_reports_and_the_last_copy_stays() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut s = State::open(dir.path(), &config(2, 2)).unwrap();
        let a = s.register(0, "a:1", None, false, t0).unwrap().node_id;
        let b = s.register(0, "b:1", None, false, t0).unwrap().node_id;
        let p = s.map.primary_partitions(a)[0];
        assert!(
            matches!(s.replica_failed(b, p, a, "x"), Err(Refused::Stale(_))),
            "a backup cannot drop its primary"
        );
        s.replica_failed(a, p, b, "unreachable").unwrap();
        assert_eq!(s.map.replicas(p).unwrap().in_sync, vec![a]);
        assert!(matches!(s.replica_failed(a, p, a, "x"), Err(Refused::Invalid(_))));
    }

    #[test]
    fn drain_then_remove() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut s = State::open(dir.path(), &config(3, 2)).unwrap();
        let ids: Vec<NodeId> = ["a:1", "b:1", "c:1"]
            .iter()
            .map(|a| s.register(0, a, None, false, t0).unwrap().node_id)
            .collect();
        assert!(s.remove_node(ids[2]).is_err(), "a node holding data cannot be removed");
        s.drain(ids[2], true).unwrap();
        for _ in 0..3 {
            for p in 0..16 {
                let r = s.map.replicas(p).unwrap().clone();
                for t in r.filling {
                    s.fill_done(r.in_sync[0], p, t).unwrap();
                }
            }
        }
        assert!(s.map.held_partitions(ids[2]).is_empty());
        s.remove_node(ids[2]).unwrap();
        assert!(s.map.node(ids[2]).is_none());
    }

    #[test]
    fn bad_state_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "{\"version\": 7}").unwrap();
        assert!(State::open(dir.path(), &config(1, 1)).is_err());
    }
}
