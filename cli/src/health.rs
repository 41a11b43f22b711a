//! `sealfs health`: checks for container health probes and scripts. Each given check must pass:
//! the manager answers with an initialized map, a node is up in it, an NFS server answers an RPC
//! NULL call, a path is a live sealfs FUSE mount.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

/// Whether the manager at `manager` answers with an initialized map; with `node`, whether the
/// node serving on that address is up in it; with `settled`, whether every partition has all
/// its copies and nothing is moving.
pub async fn manager_and_node(
    security: &sealfs_proto::auth::Security,
    manager: &str,
    node: Option<&str>,
    settled: bool,
) -> anyhow::Result<()> {
    let map = crate::cluster::fetch_map(security, manager)
        .await
        .with_context(|| format!("manager {manager} does not answer"))?;
    if !map.is_initialized() {
        bail!("the cluster is waiting for nodes");
    }
    if settled {
        let moving = map.assignment.iter().filter(|r| !r.filling.is_empty()).count();
        let degraded = map.degraded_partitions();
        if moving > 0 || degraded > 0 {
            bail!("{degraded} partitions lack copies, {moving} are moving");
        }
    }
    if let Some(addr) = node {
        let n = map
            .nodes
            .iter()
            .find(|n| n.addr == addr)
            .ok_or_else(|| anyhow::anyhow!("no node serves on {addr}"))?;
        if n.state != sealfs_core::NodeState::Up {
            bail!("node {} ({addr}) is down", n.id);
        }
    }
    Ok(())
}

/// Whether an NFS server at `addr` answers a NULL call over TCP.
pub fn nfs(addr: &str) -> anyhow::Result<()> {
    let sock = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{addr} does not resolve"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    // xid, CALL, rpcvers 2, NFS 100003, version 3, procedure 0, AUTH_NULL credential and verifier.
    let body: Vec<u8> = [7u32, 0, 2, 100003, 3, 0, 0, 0, 0, 0]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect();
    let mut rec = ((body.len() as u32) | (1 << 31)).to_be_bytes().to_vec();
    rec.extend_from_slice(&body);
    s.write_all(&rec)?;
    let mut reply = [0u8; 28];
    s.read_exact(&mut reply)?;
    let word = |i: usize| u32::from_be_bytes(reply[4 + i * 4..8 + i * 4].try_into().expect("4 bytes"));
    if word(0) != 7 || word(1) != 1 || word(2) != 0 || word(5) != 0 {
        bail!("{addr} answered the NULL call with an error");
    }
    Ok(())
}

/// Whether `path` is a sealfs FUSE mount that answers.
pub fn mount(path: &Path) -> anyhow::Result<()> {
    if !crate::cluster::is_fuse_mounted(path) {
        bail!("{} is not a sealfs mount", path.display());
    }
    nix::sys::statvfs::statvfs(path).with_context(|| format!("{} does not answer", path.display()))?;
    Ok(())
}
