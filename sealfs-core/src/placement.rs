//! The cluster map and placement: pure data and pure functions, tested without a network.
//!
//! The manager owns the map; everyone else caches it. A partition is the unit of placement:
//! inode records live in the partition written in their id, a directory entry lives with its
//! parent, a new directory's inode goes to hash(parent, name), and chunk (ino, index) goes to
//! hash(ino, index).

use std::collections::{BTreeMap, HashMap, HashSet};

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
    /// Being drained: it gets no partitions, and those it holds move away.
    pub draining: bool,
}

impl NodeInfo {
    /// Whether placement may give this node partitions.
    pub fn eligible(&self) -> bool {
        self.state == NodeState::Up && !self.draining
    }
}

/// Where one partition lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replicas {
    /// Replicas that hold every acknowledged write; the first is the primary, which serves all
    /// requests and forwards every change to the others.
    pub in_sync: Vec<NodeId>,
    /// Replicas the primary is filling: they get every new change and a copy of what was there
    /// before, and join `in_sync` when the copy is done. They serve nothing.
    pub filling: Vec<NodeId>,
}

impl Replicas {
    /// Whether `n` holds (or is getting) a copy.
    pub fn holds(&self, n: NodeId) -> bool {
        self.in_sync.contains(&n) || self.filling.contains(&n)
    }
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
    /// Replicas of each partition. Empty before the cluster is initialized.
    pub assignment: Vec<Replicas>,
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

    /// The replicas of a partition.
    pub fn replicas(&self, p: PartitionId) -> Option<&Replicas> {
        self.assignment.get(p as usize)
    }

    /// The primary node of a partition.
    pub fn primary(&self, p: PartitionId) -> Option<&NodeInfo> {
        let id = *self.replicas(p)?.in_sync.first()?;
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
            .filter(|(_, r)| r.in_sync.first() == Some(&node))
            .map(|(p, _)| p as PartitionId)
            .collect()
    }

    /// Partitions `node` holds or is getting a copy of.
    pub fn held_partitions(&self, node: NodeId) -> Vec<PartitionId> {
        self.assignment
            .iter()
            .enumerate()
            .filter(|(_, r)| r.holds(node))
            .map(|(p, _)| p as PartitionId)
            .collect()
    }

    /// Partitions with fewer in-sync copies than the replication factor (or than there are
    /// eligible nodes, if fewer).
    pub fn degraded_partitions(&self) -> usize {
        let eligible = self.nodes.iter().filter(|n| n.eligible()).count();
        let want = (self.replication as usize).min(eligible.max(1));
        self.assignment.iter().filter(|r| r.in_sync.len() < want).count()
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

/// The next replica sets, moving the current ones toward a balanced placement over the eligible
/// nodes. This is the manager's whole placement policy, as a pure function:
///
/// - Nodes that are down leave every in-sync set; the first in-sync node left is the primary.
///   The last in-sync node of a partition is never removed: while it is down the partition is
///   unavailable, and it comes back with the data.
/// - Each partition's target is `assign()` over the eligible nodes, which keeps the replicas
///   that are already placed wherever balance allows, so as little data moves as possible.
/// - Targets that are not in sync are filled by the primary; a partition with no live in-sync
///   node fills nothing.
/// - Replicas outside the target leave only once every target replica is in sync, so a move
///   never lowers the number of copies.
pub fn reconcile(map: &ClusterMap) -> Vec<Replicas> {
    reconcile_preferring(map, &[])
}

/// [`reconcile`], where a partition that has to move goes, among the nodes that may take it,
/// first to one of `prefer[p]` (nodes that still hold an old copy of `p`'s data: a node that
/// comes back after it was dropped then gets back what it held, and is sent only what
/// changed).
pub fn reconcile_preferring(map: &ClusterMap, prefer: &[Vec<NodeId>]) -> Vec<Replicas> {
    let up: HashSet<NodeId> = map
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Up)
        .map(|n| n.id)
        .collect();
    let eligible: Vec<NodeId> = map.nodes.iter().filter(|n| n.eligible()).map(|n| n.id).collect();
    let live: Vec<Vec<NodeId>> = map
        .assignment
        .iter()
        .map(|r| r.in_sync.iter().copied().filter(|n| up.contains(n)).collect())
        .collect();
    // Hints for the balancer: what is in sync first, then what is being filled.
    let hints: Vec<Vec<NodeId>> = live
        .iter()
        .zip(&map.assignment)
        .map(|(s, r)| {
            let mut h = s.clone();
            for n in &r.filling {
                if up.contains(n) && !h.contains(n) {
                    h.push(*n);
                }
            }
            h
        })
        .collect();
    let targets = assign_preferring(&hints, map.partitions, &eligible, map.replication, prefer);
    map.assignment
        .iter()
        .zip(live)
        .zip(targets)
        .map(|((cur, s), t)| {
            if s.is_empty() {
                // No copy is reachable: keep the last in-sync set and wait for it.
                return Replicas {
                    in_sync: cur.in_sync.clone(),
                    filling: Vec::new(),
                };
            }
            let filling: Vec<NodeId> = t.iter().copied().filter(|n| !s.contains(n)).collect();
            let in_sync = if filling.is_empty() && s.iter().any(|n| !t.contains(n)) {
                // Every target is in sync: the extra copies may go. Keep the primary if it stays.
                let mut kept: Vec<NodeId> = s.iter().copied().filter(|n| t.contains(n)).collect();
                if kept.is_empty() {
                    kept = t.clone();
                }
                kept
            } else {
                s
            };
            Replicas { in_sync, filling }
        })
        .collect()
}

/// Assign `partitions` over `nodes` with `replication` replicas each, keeping as much of
/// `previous` as possible. Three passes, all deterministic:
/// 1. keep every previous replica that is on an eligible node;
/// 2. while a node holds more than its fair share, swap one of its replicas (not a primary when
///    possible) for the least loaded node that holds less than its share, at most once per
///    partition per round, so each partition loses at most one replica per round and no gap is
///    left that nobody can fill;
/// 3. fill the sets that are short with the least loaded nodes;
/// 4. lead each set with its previous primary if it kept one, else with the member that leads
///    the fewest sets so far, so primaries (which serve all requests) spread evenly.
pub fn assign(previous: &[Vec<NodeId>], partitions: u32, nodes: &[NodeId], replication: u32) -> Vec<Vec<NodeId>> {
    assign_preferring(previous, partitions, nodes, replication, &[])
}

/// [`assign`], where a replica that moves goes first to a node of `prefer[p]` that may take it:
/// pass 2 first swaps only towards such nodes, and pass 3 picks them first.
pub fn assign_preferring(
    previous: &[Vec<NodeId>],
    partitions: u32,
    nodes: &[NodeId],
    replication: u32,
    prefer: &[Vec<NodeId>],
) -> Vec<Vec<NodeId>> {
    let preferred = |p: usize, n: &NodeId| prefer.get(p).is_some_and(|s| s.contains(n));
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
    for p in 0..partitions as usize {
        let mut set = Vec::with_capacity(r);
        for n in previous.get(p).into_iter().flatten() {
            if set.len() < r && cap.contains_key(n) && !set.contains(n) {
                set.push(*n);
                *load.get_mut(n).expect("eligible") += 1;
            }
        }
        out.push(set);
    }
    for only_preferred in [true, false] {
        loop {
            let mut swapped = false;
            for (p, set) in out.iter_mut().enumerate() {
                // The most overloaded member, preferring replicas that are not the primary.
                let over = set
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| load[*n] > cap[*n])
                    .max_by_key(|(i, n)| (*i != 0, load[*n] - cap[*n], **n))
                    .map(|(i, _)| i);
                let Some(i) = over else { continue };
                let under = load
                    .iter()
                    .filter(|(n, l)| !set.contains(*n) && **l < cap[*n])
                    .filter(|(n, _)| !only_preferred || preferred(p, n))
                    .min_by_key(|(n, l)| (!preferred(p, n), **l, **n))
                    .map(|(n, _)| *n);
                let Some(m) = under else { continue };
                *load.get_mut(&set[i]).expect("member") -= 1;
                *load.get_mut(&m).expect("node") += 1;
                set[i] = m;
                swapped = true;
            }
            if !swapped {
                break;
            }
        }
    }
    for (p, set) in out.iter_mut().enumerate() {
        while set.len() < r {
            let pick = load
                .iter()
                .filter(|(n, l)| !set.contains(*n) && **l < cap[*n])
                .min_by_key(|(n, l)| (!preferred(p, n), **l, **n))
                .or_else(|| {
                    load.iter()
                        .filter(|(n, _)| !set.contains(*n))
                        .min_by_key(|(n, l)| (**l, **n))
                })
                .map(|(n, _)| *n);
            match pick {
                Some(n) => {
                    set.push(n);
                    *load.get_mut(&n).expect("node") += 1;
                }
                None => break,
            }
        }
    }
    let mut leads: HashMap<NodeId, usize> = HashMap::new();
    for (p, set) in out.iter_mut().enumerate() {
        let keep = previous
            .get(p)
            .and_then(|s| s.first())
            .and_then(|n| set.iter().position(|m| m == n));
        let lead = keep.unwrap_or_else(|| {
            (0..set.len())
                .min_by_key(|i| (leads.get(&set[*i]).copied().unwrap_or(0), *i))
                .unwrap_or(0)
        });
        if !set.is_empty() {
            let n = set.remove(lead);
            set.insert(0, n);
            *leads.entry(n).or_insert(0) += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returning_node_gets_back_what_it_held_when_preferred() {
        let all = [1, 2, 3, 4];
        let before = assign(&[], 64, &all, 3);
        let held: Vec<bool> = before.iter().map(|s| s.contains(&4)).collect();
        // Node 4 is dropped: its copies go to the three others.
        let without = assign(&before, 64, &[1, 2, 3], 3);
        assert!(without.iter().all(|s| !s.contains(&4) && s.len() == 3));
        let prefer: Vec<Vec<NodeId>> = held.iter().map(|h| if *h { vec![4] } else { vec![] }).collect();
        let plain = assign(&without, 64, &all, 3);
        let back = assign_preferring(&without, 64, &all, 3, &prefer);
        let regained = |a: &[Vec<NodeId>]| a.iter().zip(&held).filter(|(s, h)| **h && s.contains(&4)).count();
        let got = |a: &[Vec<NodeId>]| a.iter().filter(|s| s.contains(&4)).count();
        // Just as balanced, and every partition it takes back is one it held.
        assert_eq!(counts(&back), counts(&plain));
        assert_eq!(got(&back), held.iter().filter(|h| **h).count());
        assert_eq!(regained(&back), got(&back));
        assert!(
            regained(&plain) < got(&plain),
            "without the preference some go elsewhere"
        );
        // Only moves that had to happen: a partition keeps two of its three copies at least.
        for (b, w) in back.iter().zip(&without) {
            assert!(b.iter().filter(|n| w.contains(n)).count() >= 2);
        }
        // Nothing preferred: the same as assign.
        assert_eq!(assign_preferring(&without, 64, &all, 3, &[]), plain);
    }

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
    fn primaries_spread_evenly() {
        let a = assign(&[], 255, &[1, 2, 3], 3);
        let mut leads = BTreeMap::new();
        for set in &a {
            *leads.entry(set[0]).or_insert(0) += 1;
        }
        assert!(leads.values().all(|&v| v == 85), "{leads:?}");
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
        m.assignment = assign(&[], 256, &[1], 1)
            .into_iter()
            .map(|s| Replicas {
                in_sync: s,
                filling: vec![],
            })
            .collect();
        for i in 0..1000u64 {
            assert!(m.chunk_partition(i, i * 3) < 256);
            assert!(m.dir_partition(i, format!("d{i}").as_bytes()) < 256);
        }
        assert_eq!(m.inode_partition(crate::ids::make_ino(17, 3)), 17);
        // Chunks of one file spread over many partitions.
        let parts: std::collections::HashSet<_> = (0..64).map(|i| m.chunk_partition(99, i)).collect();
        assert!(parts.len() > 40);
    }

    fn map_with(nodes: &[(NodeId, NodeState)], replication: u32) -> ClusterMap {
        let mut m = ClusterMap::new(1, 64, replication, 4 << 20);
        m.nodes = nodes
            .iter()
            .map(|(id, st)| NodeInfo {
                id: *id,
                addr: format!("n{id}"),
                state: *st,
                draining: false,
            })
            .collect();
        let ids: Vec<NodeId> = nodes.iter().map(|n| n.0).collect();
        m.assignment = assign(&[], 64, &ids, replication)
            .into_iter()
            .map(|s| Replicas {
                in_sync: s,
                filling: vec![],
            })
            .collect();
        m
    }

    /// Apply reconcile and then pretend every fill finished, until nothing changes.
    fn settle(m: &mut ClusterMap) -> usize {
        let mut rounds = 0;
        loop {
            let next = reconcile(m);
            let done: Vec<Replicas> = next
                .iter()
                .map(|r| {
                    let mut s = r.in_sync.clone();
                    s.extend(&r.filling);
                    Replicas {
                        in_sync: s,
                        filling: vec![],
                    }
                })
                .collect();
            let filling = next.iter().any(|r| !r.filling.is_empty());
            if !filling && next == m.assignment {
                return rounds;
            }
            m.assignment = if filling { done } else { next };
            rounds += 1;
            assert!(rounds < 10, "reconcile does not converge");
        }
    }

    #[test]
    fn a_dead_primary_is_replaced_by_an_in_sync_replica_and_copies_come_back() {
        let mut m = map_with(
            &[
                (1, NodeState::Up),
                (2, NodeState::Up),
                (3, NodeState::Up),
                (4, NodeState::Up),
            ],
            3,
        );
        let before = m.assignment.clone();
        m.nodes[0].state = NodeState::Down;
        let next = reconcile(&m);
        for (old, new) in before.iter().zip(&next) {
            assert!(!new.in_sync.contains(&1), "a down node leaves every in-sync set");
            if old.in_sync[0] == 1 {
                assert_eq!(new.in_sync[0], old.in_sync[1], "the next in-sync replica is promoted");
            }
            assert_eq!(new.in_sync.len() + new.filling.len(), 3, "a new copy is being made");
        }
        m.assignment = next;
        settle(&mut m);
        assert!(m
            .assignment
            .iter()
            .all(|r| r.in_sync.len() == 3 && !r.in_sync.contains(&1)));
    }

    #[test]
    fn the_last_copy_is_kept_while_its_node_is_down() {
        let mut m = map_with(&[(1, NodeState::Up), (2, NodeState::Up)], 1);
        m.nodes[0].state = NodeState::Down;
        let next = reconcile(&m);
        for (old, new) in m.assignment.iter().zip(&next) {
            if old.in_sync == vec![1] {
                assert_eq!(new.in_sync, vec![1], "no other copy exists: wait for the node");
                assert!(new.filling.is_empty(), "nothing to fill from");
            }
        }
    }

    #[test]
    fn a_new_node_gets_its_share_by_fills_and_old_copies_leave_after() {
        let mut m = map_with(&[(1, NodeState::Up), (2, NodeState::Up), (3, NodeState::Up)], 3);
        m.nodes.push(NodeInfo {
            id: 4,
            addr: "n4".into(),
            state: NodeState::Up,
            draining: false,
        });
        let next = reconcile(&m);
        let moving = next.iter().filter(|r| !r.filling.is_empty()).count();
        assert!(moving > 0 && moving <= 64, "{moving}");
        for r in &next {
            assert_eq!(r.in_sync.len(), 3, "copies stay until the fill is done");
            assert!(r.filling.iter().all(|n| *n == 4));
        }
        m.assignment = next;
        settle(&mut m);
        let on4 = m.assignment.iter().filter(|r| r.in_sync.contains(&4)).count();
        assert_eq!(on4, 48, "64 partitions x 3 copies over 4 nodes");
        assert!(m.assignment.iter().all(|r| r.in_sync.len() == 3));
    }

    #[test]
    fn a_drained_node_ends_with_nothing() {
        let mut m = map_with(
            &[
                (1, NodeState::Up),
                (2, NodeState::Up),
                (3, NodeState::Up),
                (4, NodeState::Up),
            ],
            2,
        );
        m.nodes[1].draining = true;
        settle(&mut m);
        assert!(m.assignment.iter().all(|r| !r.holds(2)));
        assert!(m.assignment.iter().all(|r| r.in_sync.len() == 2));
    }
}
