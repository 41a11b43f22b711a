//! The manager's persistent state: the cluster map and membership, kept in `DIR/cluster.json`
//! (format version 1), rewritten atomically on every change. Liveness (last heartbeat, reported
//! stats) is kept in memory only: after a restart every known node gets a fresh grace period.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sealfs_core::config::ManagerConfig;
use sealfs_core::placement::{assign, ClusterMap, NodeInfo, NodeState};
use sealfs_core::NodeId;
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
    assignment: Vec<Vec<NodeId>>,
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
}

/// What a registration decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub node_id: NodeId,
    pub cluster_id: u64,
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
                    })
                    .collect(),
                assignment: p.assignment,
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
            return Ok(State {
                path,
                map,
                next_node_id: p.next_node_id,
                min_nodes: config.min_nodes,
                live,
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
                })
                .collect(),
            assignment: m.assignment.clone(),
        };
        let text = serde_json::to_vec_pretty(&p)?;
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

    fn bump(&mut self) {
        self.map.epoch += 1;
    }

    /// Assign partitions once enough nodes are up (the first time only: later joins wait for
    /// rebalancing, which moves data).
    fn maybe_initialize(&mut self) {
        if self.map.is_initialized() {
            return;
        }
        let up: Vec<NodeId> = self
            .map
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Up)
            .map(|n| n.id)
            .collect();
        if (up.len() as u32) < self.min_nodes {
            return;
        }
        self.map.assignment = assign(&[], self.map.partitions, &up, self.map.replication);
        info!(
            nodes = up.len(),
            partitions = self.map.partitions,
            "partitions assigned; the cluster is ready"
        );
    }

    /// A node announces itself. `node_id` 0 asks for a new id.
    pub fn register(
        &mut self,
        node_id: NodeId,
        addr: &str,
        stats: Option<pb::NodeStats>,
        now: Instant,
    ) -> anyhow::Result<Registered> {
        if addr.is_empty() || addr.len() > 256 {
            bail!("a node must give the address it serves on (at most 256 bytes)");
        }
        let id = if node_id == 0 {
            let id = self.next_node_id;
            self.next_node_id += 1;
            id
        } else {
            self.next_node_id = self.next_node_id.max(node_id + 1);
            node_id
        };
        match self.map.nodes.iter_mut().find(|n| n.id == id) {
            Some(n) => {
                if n.addr != addr || n.state != NodeState::Up {
                    info!(node = id, addr, "node is back");
                    n.addr = addr.to_string();
                    n.state = NodeState::Up;
                    self.bump();
                }
            }
            None => {
                info!(node = id, addr, "node joined");
                self.map.nodes.push(NodeInfo {
                    id,
                    addr: addr.to_string(),
                    state: NodeState::Up,
                });
                self.map.nodes.sort_by_key(|n| n.id);
                self.bump();
            }
        }
        let live = self.live.entry(id).or_default();
        live.last_seen = Some(now);
        if let Some(s) = stats {
            live.stats = s;
        }
        self.maybe_initialize();
        self.persist()?;
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
        let live = self.live.entry(node_id).or_default();
        live.last_seen = Some(now);
        if let Some(s) = stats {
            live.stats = s;
        }
        if n.state == NodeState::Down {
            info!(node = node_id, "node is up again");
            n.state = NodeState::Up;
            self.bump();
            self.maybe_initialize();
            self.persist()?;
        }
        Ok(Some(self.map.epoch))
    }

    /// Mark nodes that missed heartbeats for longer than `timeout` down. Returns whether the map
    /// changed.
    pub fn detect_failures(&mut self, timeout: Duration, now: Instant) -> anyhow::Result<bool> {
        let mut changed = false;
        for n in self.map.nodes.iter_mut().filter(|n| n.state == NodeState::Up) {
            let seen = self.live.get(&n.id).and_then(|l| l.last_seen);
            if seen.is_none_or(|t| now.duration_since(t) > timeout) {
                warn!(
                    node = n.id,
                    addr = n.addr,
                    "no heartbeat for {timeout:?}: marking the node down"
                );
                n.state = NodeState::Down;
                changed = true;
            }
        }
        if changed {
            self.bump();
            self.persist()?;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(min_nodes: u32) -> ManagerConfig {
        ManagerConfig {
            partitions: 16,
            min_nodes,
            ..Default::default()
        }
    }

    #[test]
    fn assigns_once_enough_nodes_registered() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let mut s = State::open(dir.path(), &config(2)).unwrap();
        let a = s.register(0, "a:1", None, now).unwrap();
        assert!(!s.map.is_initialized());
        let b = s.register(0, "b:1", None, now).unwrap();
        assert_ne!(a.node_id, b.node_id);
        assert_eq!(a.cluster_id, b.cluster_id);
        assert!(s.map.is_initialized());
        // A third node joins later: it gets no partitions (no data moves without rebalancing).
        let before = s.map.assignment.clone();
        s.register(0, "c:1", None, now).unwrap();
        assert_eq!(s.map.assignment, before);
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let (map, id) = {
            let mut s = State::open(dir.path(), &config(1)).unwrap();
            let r = s.register(0, "a:1", None, now).unwrap();
            (s.map.clone(), r.node_id)
        };
        let mut s = State::open(dir.path(), &config(1)).unwrap();
        assert_eq!(s.map, map);
        // Ids are never handed out twice.
        let r = s.register(0, "b:1", None, now).unwrap();
        assert!(r.node_id > id);
    }

    #[test]
    fn missed_heartbeats_mark_down_and_back_up() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut s = State::open(dir.path(), &config(1)).unwrap();
        let id = s.register(0, "a:1", None, t0).unwrap().node_id;
        let epoch = s.map.epoch;
        assert!(!s
            .detect_failures(Duration::from_secs(3), t0 + Duration::from_secs(1))
            .unwrap());
        assert!(s
            .detect_failures(Duration::from_secs(3), t0 + Duration::from_secs(4))
            .unwrap());
        assert_eq!(s.map.node(id).unwrap().state, NodeState::Down);
        assert!(s.map.epoch > epoch);
        assert_eq!(
            s.heartbeat(id, None, t0 + Duration::from_secs(5)).unwrap(),
            Some(s.map.epoch)
        );
        assert_eq!(s.map.node(id).unwrap().state, NodeState::Up);
        assert_eq!(s.heartbeat(999, None, t0).unwrap(), None);
    }

    #[test]
    fn bad_state_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "{\"version\": 7}").unwrap();
        assert!(State::open(dir.path(), &config(1)).is_err());
    }
}
