//! `sealfs`: `up` starts a local cluster (manager, storage nodes, NFS gateway, FUSE mount) under one folder
//! and stops it on Ctrl-C; `status` prints what the manager knows.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sealfs_cli::cluster::{ClusterSpec, GatewaySpec, LocalCluster};

/// sealfs: a distributed file system.
#[derive(Parser, Debug)]
#[command(name = "sealfs", version)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a local cluster: manager, storage nodes and a FUSE mount, all state under one folder.
    /// Ctrl-C stops it all and unmounts.
    Up {
        /// Folder for all state and logs.
        #[arg(long, env = "SEALFS_DIR", default_value = "sealfs-data")]
        dir: PathBuf,
        /// Where to mount the cluster (default: DIR/mnt).
        #[arg(long, env = "SEALFS_MOUNT")]
        mount: Option<PathBuf>,
        /// Storage nodes to start.
        #[arg(long, env = "SEALFS_NODES", default_value_t = 3)]
        nodes: usize,
        /// Manager address.
        #[arg(long, env = "SEALFS_MANAGER", default_value = "127.0.0.1:7100")]
        manager: String,
        /// NFS port of the gateway (0: no gateway).
        #[arg(long, env = "SEALFS_NFS_PORT", default_value_t = 2049)]
        nfs_port: u16,
        /// Portmapper port of the gateway, TCP and UDP (0: no portmapper; clients then need
        /// `-o port=P,mountport=P`).
        #[arg(long, env = "SEALFS_PORTMAP_PORT", default_value_t = 111)]
        portmap_port: u16,
    },
    /// Show the nodes, their state and partitions, and the moves in progress.
    Status {
        /// Manager address.
        #[arg(long, env = "SEALFS_MANAGER", default_value = "127.0.0.1:7100")]
        manager: String,
    },
    /// Move every partition off a node (to remove it), or stop doing so with --undo.
    Drain {
        /// The node's id (see `sealfs status`).
        node: u64,
        /// Stop draining: the node takes partitions again.
        #[arg(long)]
        undo: bool,
        /// Manager address.
        #[arg(long, env = "SEALFS_MANAGER", default_value = "127.0.0.1:7100")]
        manager: String,
    },
    /// Forget a node that holds nothing any more (drain it first).
    RemoveNode {
        /// The node's id.
        node: u64,
        /// Manager address.
        #[arg(long, env = "SEALFS_MANAGER", default_value = "127.0.0.1:7100")]
        manager: String,
    },
}

fn main() {
    sealfs_proto::process::exit_on_error(real_main());
}

fn real_main() -> anyhow::Result<()> {
    sealfs_proto::process::init_logging();
    match Args::parse().cmd {
        Cmd::Drain { node, undo, manager } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(sealfs_cli::status::drain(&manager, node, !undo))?;
            println!(
                "node {node}: {}",
                if undo {
                    "takes partitions again"
                } else {
                    "draining; `sealfs status` shows the moves"
                }
            );
            Ok(())
        }
        Cmd::RemoveNode { node, manager } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(sealfs_cli::status::remove_node(&manager, node))?;
            println!("node {node} removed");
            Ok(())
        }
        Cmd::Status { manager } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let s = rt.block_on(sealfs_cli::status::fetch(&manager))?;
            print!("{}", sealfs_cli::status::render(&s));
            Ok(())
        }
        Cmd::Up {
            dir,
            mount,
            nodes,
            manager,
            nfs_port,
            portmap_port,
        } => up(dir, mount, nodes, manager, nfs_port, portmap_port),
    }
}

fn up(
    dir: PathBuf,
    mount: Option<PathBuf>,
    nodes: usize,
    manager: String,
    nfs_port: u16,
    portmap_port: u16,
) -> anyhow::Result<()> {
    if nodes == 0 {
        anyhow::bail!("--nodes must be at least 1");
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let mount = mount.unwrap_or_else(|| dir.join("mnt"));
    let mut spec = ClusterSpec::new(&dir);
    spec.nodes = nodes;
    spec.manager_listen = manager;
    spec.mount = Some(mount.clone());
    println!(
        "starting sealfs: manager, {nodes} storage node(s), NFS gateway, FUSE mount; state and logs under {}",
        dir.display()
    );
    let mut cluster = LocalCluster::start(spec)?;
    let nfs = if nfs_port == 0 {
        None
    } else {
        let g = GatewaySpec {
            nfs_listen: format!("0.0.0.0:{nfs_port}"),
            portmap_listen: (portmap_port != 0).then(|| format!("0.0.0.0:{portmap_port}")),
            args: Vec::new(),
        };
        match cluster.add_gateway(g) {
            Ok(addr) => Some(addr),
            Err(e) => {
                eprintln!("warning: no NFS gateway ({e:#}); pick free ports with --nfs-port/--portmap-port");
                None
            }
        }
    };
    println!();
    println!("  mounted at     {}", mount.display());
    match &nfs {
        Some(addr) if portmap_port != 0 => {
            println!("  NFS            mount -t nfs -o nolock HOST:/ /mnt   (gateway on {addr})")
        }
        Some(addr) => {
            let port = addr.rsplit(':').next().unwrap_or("2049");
            println!("  NFS            mount -t nfs -o nolock,port={port},mountport={port},mountproto=tcp HOST:/ /mnt")
        }
        None => println!("  NFS            not running"),
    }
    println!("  manager        {}", cluster.manager_addr);
    println!("  state          {}", dir.display());
    println!("  logs           {}", dir.join("logs").display());
    println!("  status         sealfs status --manager {}", cluster.manager_addr);
    println!();
    println!("Ctrl-C stops the cluster and unmounts.");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        let mut reported = false;
        loop {
            tokio::select! {
                _ = sealfs_proto::process::shutdown_signal() => break,
                _ = tick.tick() => {
                    if let Err(name) = cluster.check_running() {
                        if !reported {
                            eprintln!("warning: {name} has stopped; see {}", cluster.log_path(&name).display());
                            reported = true;
                        }
                    }
                }
            }
        }
    });
    println!("stopping: unmounting, then the gateway and nodes, then the manager");
    cluster.stop_all();
    println!("stopped");
    Ok(())
}
