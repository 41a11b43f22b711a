//! The cluster map and placement: pure data and pure functions, tested without a network.
//!
//! The manager owns the map; everyone else caches it. A partition is the unit of placement:
//! inode records live in the partition written in their id, a directory entry lives with its
//! parent, a new directory's inode goes to hash(parent, name), and chunk (ino, index) goes to
//! hash(ino, index).

use std::collections::{BTreeMap, HashMap};

use crate::hash::{hash_u64_bytes, hash_u64_pair};
use crate::ids::{ino_partition, InodeId, NodeId, PartitionId};

/// Liveness of a node as the manager sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Heartbeating.
    Up,
    /// Missed heartbeats for longer than the failure timeout.
    Down,
}

/// A storage node in the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: NodeId,
    /// host:port of its gRPC listener.
    pub addr: String,
    pub state: NodeState,
}

/// The versioned cluster map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMap {
    /// Random id fixed at cluster creation (part of NFS file handles).
    pub cluster_id: u64,
    /// Bumped on every change.
    pub epoch: u64,
    /// Number of partitions (a power of two), fixed at creation.
    pub partitions: u32,
    /// Desired replica count.
    pub replication: u32,
    /// Chunk size for new files, in bytes.
    pub chunk_size: u32,
    pub nodes: Vec<NodeInfo>,
    /// partition -> ordered replica set; the first is the primary. Empty before the cluster is
    /// initialized.
    pub assignment: Vec<Vec<NodeId>>,
}

impl ClusterMap {
    /// An empty map for a new cluster.
    pub fn new(cluster_id: u64, partitions: u32, replication: u32, chunk_size: u32) -> ClusterMap {
        ClusterMap {
            cluster_id,
            epoch: 0,
            partitions,
            replication,
            chunk_size,
            nodes: Vec::new(),
            assignment: Vec::new(),
        }
    }

    /// Whether partitions have been assigned.
    pub fn is_initialized(&self) -> bool {
        !self.assignment.is_empty()
    }

    /// The primary node of a partition.
    pub fn primary(&self, p: PartitionId) -> Option<&NodeInfo> {
        let id = *self.assignment.get(p as usize)?.first()?;
        self.node(id)
    }

    /// Look a node up by id.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Partitions whose primary is `node`.
    pub fn primary_partitions(&self, node: NodeId) -> Vec<PartitionId> {
        self.assignment
            .iter()
            .enumerate()
            .filter(|(_, r)| r.first() == Some(&node))
            .map(|(p, _)| p as PartitionId)
            .collect()
    }

    /// Partition of an inode record: the one written in its id. An id naming a partition the
    /// cluster does not have (a forged or corrupt handle) is caught by `has_partition`.
    pub fn inode_partition(&self, ino: InodeId) -> PartitionId {
        ino_partition(ino)
    }

    /// Whether `p` is a partition of this cluster.
    pub fn has_partition(&self, p: PartitionId) -> bool {
        p < self.partitions
    }

    /// Partition for a new directory named `name` in `parent`: spread by hash.
    pub fn dir_partition(&self, parent: InodeId, name: &[u8]) -> PartitionId {
        (hash_u64_bytes(parent, name) % u64::from(self.partitions)) as PartitionId
    }

    /// Partition holding chunk `index` of `ino`: large files stripe over all partitions.
    pub fn chunk_partition(&self, ino: InodeId, index: u64) -> PartitionId {
        (hash_u64_pair(ino, index) % u64::from(self.partitions)) as PartitionId
    }
}

/// Assign `partitions` over `nodes` (sorted ids) with `replication` replicas each, keeping as much
/// of `previous` as possible: a replica stays where it is while its node is still eligible, and
/// only the excess of overloaded nodes moves to the least loaded ones. Deterministic.
pub fn assign(previous: &[Vec<NodeId>], partitions: u32, nodes: &[NodeId], replication: u32) -> Vec<Vec<NodeId>> {
    let mut nodes: Vec<NodeId> = nodes.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    if nodes.is_empty() {
        return vec![Vec::new(); partitions as usize];
    }
    let r = (replication.max(1) as usize).min(nodes.len());
    let total = partitions as usize * r;
    // Each node's fair share; the first `extra` nodes may hold one more.
    let base = total / nodes.len();
    let extra = total % nodes.len();
    let cap: HashMap<NodeId, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, base + usize::from(i < extra)))
        .collect();
    let mut load: BTreeMap<NodeId, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    let mut out: Vec<Vec<NodeId>> = Vec::with_capacity(partitions as usize);
    // Keep existing replicas on eligible nodes up to each node's cap.
    for p in 0..partitions as usize {
        let mut set = Vec::with_capacity(r);
        if let Some(prev) = previous.get(p) {
            for n in prev {
                if set.len() < r && cap.contains_key(n) && !set.contains(n) && load[n] < cap[n] {
                    set.push(*n);
                    *load.get_mut(n).unwrap() += 1;
                }
            }
        }
        out.push(set);
    }
    // Fill the gaps with the least-loaded nodes not already in the set.
    for set in out.iter_mut() {
        while set.len() < r {
            let pick = load
                .iter()
                .filter(|(n, l)| !set.contains(*n) && **l < cap[*n])
                .min_by_key(|(n, l)| (**l, **n))
                .or_else(|| {
                    load.iter()
                        .filter(|(n, _)| !set.contains(*n))
                        .min_by_key(|(n, l)| (**l, **n))
                })
                .map(|(n, _)| *n);
            match pick {
                Some(n) => {
                    set.push(n);
                    *load.get_mut(&n).unwrap() += 1;
                }
                None => break,
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(a: &[Vec<NodeId>]) -> BTreeMap<NodeId, usize> {
        let mut m = BTreeMap::new();
        for set in a {
            for n in set {
                *m.entry(*n).or_insert(0) += 1;
            }
        }
        m
    }

    #[test]
    fn initial_assignment_is_balanced() {
        let a = assign(&[], 256, &[1, 2, 3], 1);
        assert_eq!(a.len(), 256);
        let c = counts(&a);
        assert!(c.values().all(|&v| v == 85 || v == 86), "{c:?}");
        let a = assign(&[], 256, &[1, 2, 3, 4], 3);
        for set in &a {
            assert_eq!(set.len(), 3);
            let mut s = set.clone();
            s.dedup();
            assert_eq!(s.len(), 3, "distinct replicas");
        }
        assert!(counts(&a).values().all(|&v| v == 192));
    }

    #[test]
    fn stable_when_nothing_changes() {
        let a = assign(&[], 256, &[1, 2, 3], 2);
        assert_eq!(assign(&a, 256, &[1, 2, 3], 2), a);
    }

    #[test]
    fn adding_a_node_moves_only_its_share() {
        let a = assign(&[], 256, &[1, 2, 3], 1);
        let b = assign(&a, 256, &[1, 2, 3, 4], 1);
        let moved = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert_eq!(moved, 64, "exactly the new node's share moves");
        assert!(counts(&b).values().all(|&v| v == 64));
    }

    #[test]
    fn removing_a_node_moves_only_its_partitions() {
        let a = assign(&[], 256, &[1, 2, 3, 4], 1);
        let b = assign(&a, 256, &[1, 2, 3], 1);
        for (x, y) in a.iter().zip(&b) {
            if x[0] != 4 {
                assert_eq!(x, y);
            }
        }
        let c = counts(&b);
        assert!(c.values().all(|&v| v == 85 || v == 86), "{c:?}");
    }

    #[test]
    fn placement_functions_are_in_range() {
        let mut m = ClusterMap::new(7, 256, 1, 4 << 20);
        m.assignment = assign(&[], 256, &[1], 1);
        for i in 0..1000u64 {
            assert!(m.chunk_partition(i, i * 3) < 256);
            assert!(m.dir_partition(i, format!("d{i}").as_bytes()) < 256);
        }
        assert_eq!(m.inode_partition(crate::ids::make_ino(17, 3)), 17);
        // Chunks of one file spread over many partitions.
        let parts: std::collections::HashSet<_> = (0..64).map(|i| m.chunk_partition(99, i)).collect();
        assert!(parts.len() > 40);
    }
}
