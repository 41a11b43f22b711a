//! `sealfs status`: the cluster as the manager sees it, as a table.

use std::fmt::Write;

use sealfs_proto::auth::Security;
use sealfs_proto::pb;

fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn failed(addr: &str, s: tonic::Status) -> anyhow::Error {
    if sealfs_proto::is_transport_error(&s) {
        anyhow::anyhow!(
            "cannot reach the manager at {addr}: {}",
            sealfs_proto::status_detail(&s)
        )
    } else {
        anyhow::anyhow!("manager {addr}: {}", sealfs_proto::status_detail(&s))
    }
}

/// Ask the manager at `addr` for its status.
pub async fn fetch(security: &Security, addr: &str) -> anyhow::Result<pb::StatusReply> {
    let mut c = crate::cluster::manager_client(security, addr)?;
    Ok(c.status(pb::StatusRequest {})
        .await
        .map_err(|s| failed(addr, s))?
        .into_inner())
}

/// Start or stop draining node `node`.
pub async fn drain(security: &Security, addr: &str, node: u64, drain: bool) -> anyhow::Result<()> {
    let mut c = crate::cluster::manager_client(security, addr)?;
    c.drain(pb::DrainRequest { node_id: node, drain })
        .await
        .map_err(|s| failed(addr, s))?;
    Ok(())
}

/// Forget node `node` (it must hold nothing).
pub async fn remove_node(security: &Security, addr: &str, node: u64) -> anyhow::Result<()> {
    let mut c = crate::cluster::manager_client(security, addr)?;
    c.remove_node(pb::RemoveNodeRequest { node_id: node })
        .await
        .map_err(|s| failed(addr, s))?;
    Ok(())
}

/// Render a status reply for people.
pub fn render(s: &pb::StatusReply) -> String {
    let mut out = String::new();
    let Some(map) = &s.map else {
        return "manager sent no map\n".into();
    };
    let assigned = !map.assignment.is_empty();
    let _ = writeln!(
        out,
        "cluster {:#018x}  epoch {}  partitions {}  replication {}  chunk size {}  {}",
        map.cluster_id,
        map.epoch,
        map.partitions,
        map.replication,
        bytes(u64::from(map.chunk_size)),
        if assigned { "ready" } else { "waiting for nodes" }
    );
    let _ = writeln!(
        out,
        "{:>4}  {:<22} {:<8} {:>8} {:>8} {:>8} {:>10} {:>11} {:>11}",
        "node", "address", "state", "primary", "copies", "filling", "heartbeat", "data used", "data free"
    );
    let mut left = 0u64;
    for n in &s.nodes {
        let Some(node) = &n.node else { continue };
        let st = n.stats.clone().unwrap_or_default();
        left += st
            .fills
            .iter()
            .map(|f| f.bytes_total.saturating_sub(f.bytes_done))
            .sum::<u64>();
        let hb = if n.last_heartbeat_ms_ago == u64::MAX {
            "never".to_string()
        } else {
            format!("{:.1}s ago", n.last_heartbeat_ms_ago as f64 / 1000.0)
        };
        let state = match (node.up, node.draining) {
            (true, false) => "up",
            (true, true) => "draining",
            (false, _) => "DOWN",
        };
        let _ = writeln!(
            out,
            "{:>4}  {:<22} {:<8} {:>8} {:>8} {:>8} {:>10} {:>11} {:>11}",
            node.id,
            node.addr,
            state,
            n.primary_partitions,
            n.replica_partitions,
            n.filling_partitions,
            hb,
            bytes(st.data_total_bytes.saturating_sub(st.data_free_bytes)),
            bytes(st.data_free_bytes),
        );
    }
    let refused: u64 = s.auth_refused
        + s.nodes
            .iter()
            .map(|n| n.stats.as_ref().map_or(0, |st| st.auth_refused))
            .sum::<u64>();
    if refused > 0 {
        let _ = writeln!(
            out,
            "refused calls (missing or wrong cluster secret): {refused} (manager {}; see the logs)",
            s.auth_refused
        );
    }
    let moving = map.assignment.iter().filter(|r| !r.filling.is_empty()).count();
    let eligible = s
        .nodes
        .iter()
        .filter(|n| n.node.as_ref().is_some_and(|n| n.up && !n.draining))
        .count();
    let want = (map.replication as usize).min(eligible.max(1));
    let degraded = map.assignment.iter().filter(|r| r.nodes.len() < want).count();
    let unavailable = map
        .assignment
        .iter()
        .filter(|r| {
            r.nodes.first().is_none_or(|p| {
                !s.nodes
                    .iter()
                    .any(|n| n.node.as_ref().is_some_and(|n| n.id == *p && n.up))
            })
        })
        .count();
    if assigned {
        let _ = writeln!(
            out,
            "partitions: {degraded} with fewer than {want} copies, {unavailable} unavailable; moves in progress: {moving} ({} left to copy)",
            bytes(left)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_nodes_and_sizes() {
        let s = pb::StatusReply {
            map: Some(pb::ClusterMapMsg {
                cluster_id: 5,
                epoch: 3,
                partitions: 2,
                replication: 2,
                chunk_size: 4 << 20,
                assignment: vec![
                    pb::ReplicaSet {
                        nodes: vec![1],
                        filling: vec![2],
                    },
                    pb::ReplicaSet {
                        nodes: vec![1, 2],
                        filling: vec![],
                    },
                ],
                ..Default::default()
            }),
            nodes: vec![pb::NodeStatus {
                node: Some(pb::NodeMsg {
                    id: 1,
                    addr: "127.0.0.1:7101".into(),
                    up: false,
                    draining: false,
                }),
                stats: Some(pb::NodeStats {
                    data_total_bytes: 10 << 30,
                    data_free_bytes: 4 << 30,
                    fills: vec![pb::FillProgress {
                        partition: 0,
                        target: 2,
                        bytes_done: 1 << 30,
                        bytes_total: 3 << 30,
                    }],
                    auth_refused: 2,
                    ..Default::default()
                }),
                primary_partitions: 85,
                last_heartbeat_ms_ago: 1500,
                replica_partitions: 85,
                filling_partitions: 0,
            }],
            auth_refused: 1,
        };
        let text = render(&s);
        assert!(
            text.contains("refused calls (missing or wrong cluster secret): 3 (manager 1"),
            "{text}"
        );
        assert!(text.contains("DOWN"), "{text}");
        assert!(text.contains("6.0 GiB"), "{text}");
        assert!(text.contains("moves in progress: 1 (2.0 GiB left to copy)"), "{text}");
        assert!(
            text.contains("2 unavailable"),
            "node 1 leads both partitions and is down: {text}"
        );
    }
}
