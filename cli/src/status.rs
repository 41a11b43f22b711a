//! `sealfs status`: the cluster as the manager sees it, as a table.

use std::fmt::Write;

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

/// Ask the manager at `addr` for its status.
pub async fn fetch(addr: &str) -> anyhow::Result<pb::StatusReply> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let mut c = pb::manager_client::ManagerClient::connect(uri)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the manager at {addr}: {e}"))?;
    Ok(c.status(pb::StatusRequest {}).await?.into_inner())
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
        "{:>4}  {:<22} {:<5} {:>10} {:>10} {:>12} {:>12} {:>10}",
        "node", "address", "state", "partitions", "heartbeat", "data used", "data free", "keys"
    );
    for n in &s.nodes {
        let Some(node) = &n.node else { continue };
        let st = n.stats.unwrap_or_default();
        let hb = if n.last_heartbeat_ms_ago == u64::MAX {
            "never".to_string()
        } else {
            format!("{:.1}s ago", n.last_heartbeat_ms_ago as f64 / 1000.0)
        };
        let _ = writeln!(
            out,
            "{:>4}  {:<22} {:<5} {:>10} {:>10} {:>12} {:>12} {:>10}",
            node.id,
            node.addr,
            if node.up { "up" } else { "DOWN" },
            n.primary_partitions,
            hb,
            bytes(st.data_total_bytes.saturating_sub(st.data_free_bytes)),
            bytes(st.data_free_bytes),
            st.inodes
        );
    }
    let down = s
        .nodes
        .iter()
        .filter(|n| n.node.as_ref().is_some_and(|n| !n.up))
        .count();
    if down > 0 {
        let _ = writeln!(
            out,
            "{down} node(s) down: their partitions answer with errors until they are back"
        );
    }
    let _ = writeln!(out, "moves in progress: none");
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
                partitions: 256,
                replication: 1,
                chunk_size: 4 << 20,
                ..Default::default()
            }),
            nodes: vec![pb::NodeStatus {
                node: Some(pb::NodeMsg {
                    id: 1,
                    addr: "127.0.0.1:7101".into(),
                    up: false,
                }),
                stats: Some(pb::NodeStats {
                    data_total_bytes: 10 << 30,
                    data_free_bytes: 4 << 30,
                    ..Default::default()
                }),
                primary_partitions: 85,
                last_heartbeat_ms_ago: 1500,
            }],
        };
        let text = render(&s);
        assert!(text.contains("DOWN"), "{text}");
        assert!(text.contains("6.0 GiB"), "{text}");
        assert!(text.contains("waiting for nodes"), "{text}");
        assert!(text.contains("1 node(s) down"), "{text}");
    }
}
