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
    let (mut left, mut kept) = (0u64, 0u64);
    for n in &s.nodes {
        let Some(node) = &n.node else { continue };
        let st = n.stats.clone().unwrap_or_default();
        left += st
            .fills
            .iter()
            .map(|f| f.bytes_total.saturating_sub(f.bytes_done))
            .sum::<u64>();
        kept += st.fills.iter().map(|f| f.bytes_kept).sum::<u64>();
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
    for n in &s.nodes {
        let (Some(node), Some(sc)) = (&n.node, n.stats.as_ref().and_then(|st| st.scrub.as_ref())) else {
            continue;
        };
        if sc.passes == 0 && sc.corrupt == 0 {
            continue;
        }
        let last = if sc.last_pass_end == 0 {
            "none finished yet".to_string()
        } else {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!("the last ended {} ago", age(now.saturating_sub(sc.last_pass_end)))
        };
        let _ = writeln!(
            out,
            "scrub of node {} since it started: {} pass{} ({last}), {} chunks and {} checked; {} corrupt: {} mended{}",
            node.id,
            sc.passes,
            if sc.passes == 1 { "" } else { "es" },
            sc.chunks,
            bytes(sc.bytes),
            sc.corrupt,
            sc.repaired,
            if sc.unrepaired > 0 {
                format!(
                    ", {} NOT MENDED (no good copy reached; see the node's log)",
                    sc.unrepaired
                )
            } else {
                String::new()
            }
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
            "partitions: {degraded} with fewer than {want} copies, {unavailable} unavailable; moves in progress: {moving} ({} left to copy{})",
            bytes(left),
            if kept > 0 {
                // A node back after being dropped: what it still held is compared, not sent.
                format!(", {} found in place so far", bytes(kept))
            } else {
                String::new()
            }
        );
    }
    out
}

/// A span of seconds for people: "45s", "12m", "5.0h", "3.2d".
fn age(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{:.1}h", secs as f64 / 3600.0),
        _ => format!("{:.1}d", secs as f64 / 86400.0),
    }
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
                        bytes_kept: 512 << 20,
                    }],
                    auth_refused: 2,
                    scrub: Some(pb::ScrubStats {
                        passes: 2,
                        chunks: 40,
                        bytes: 3 << 30,
                        corrupt: 2,
                        repaired: 1,
                        unrepaired: 1,
                        last_pass_end: 1,
                    }),
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
        assert!(
            text.contains("moves in progress: 1 (2.0 GiB left to copy, 512.0 MiB found in place so far)"),
            "{text}"
        );
        assert!(
            text.contains("scrub of node 1 since it started: 2 passes (the last ended ")
                && text.contains("40 chunks and 3.0 GiB checked; 2 corrupt: 1 mended, 1 NOT MENDED"),
            "{text}"
        );
        assert_eq!(age(59), "59s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(3 * 3600), "3.0h");
        assert_eq!(age(3 * 86400), "3.0d");
        assert!(
            text.contains("2 unavailable"),
            "node 1 leads both partitions and is down: {text}"
        );
    }
}
