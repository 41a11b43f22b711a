//! `sealfs`: `up` starts a local cluster (manager, storage nodes, NFS gateway, FUSE mount) under one folder
//! and stops it on Ctrl-C; `status` prints what the manager knows.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sealfs_cli::cluster::{ClusterSpec, GatewaySpec, LocalCluster};
use sealfs_core::config::SecurityConfig;
use sealfs_proto::auth::{Security, SecurityArgs};

/// sealfs: a distributed file system.
#[derive(Parser, Debug)]
#[command(name = "sealfs", version)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    security: SecurityArgs,
}

/// Where `sealfs up` records the security settings it gave its cluster, so the other commands
/// run next to it find the secret without being told.
const SECURITY_FILE: &str = "security.toml";

/// The security settings for a command talking to a cluster: the flags and environment, or else
/// those `sealfs up` recorded in its folder ($SEALFS_DIR, default sealfs-data).
fn cli_security(args: SecurityArgs) -> anyhow::Result<Security> {
    let mut cfg = SecurityConfig::default();
    args.apply(&mut cfg);
    let told = cfg.secret_file.is_some() || cfg.insecure || std::env::var_os(sealfs_proto::auth::SECRET_ENV).is_some();
    if !told {
        let dir = std::env::var_os("SEALFS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| "sealfs-data".into());
        let recorded = dir.join(SECURITY_FILE);
        if recorded.exists() {
            let mut rec: SecurityConfig = sealfs_core::config::load_file(&recorded)?;
            // Flags given for TLS still win.
            if cfg.tls() {
                rec.tls_cert = cfg.tls_cert;
                rec.tls_key = cfg.tls_key;
                rec.tls_ca = cfg.tls_ca;
            }
            cfg = rec;
        }
    }
    Ok(Security::load(&cfg)?)
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
        /// Turn TLS on for every gRPC connection, with a CA and certificate made in DIR/tls
        /// (or the files given with --tls-cert/--tls-key/--tls-ca).
        #[arg(long)]
        tls: bool,
    },
    /// Write a new random cluster secret to FILE (readable by its owner only).
    GenSecret {
        /// The file to create (an existing one is kept).
        file: PathBuf,
    },
    /// Make a cluster CA and a certificate it signed, for serving and connecting, in DIR
    /// (ca.pem, cert.pem, key.pem; existing files are kept).
    GenCerts {
        /// Folder for the three files.
        dir: PathBuf,
        /// More names (host names, addresses) for the certificate, besides "sealfs".
        #[arg(long = "name")]
        names: Vec<String>,
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
    /// Check that parts of a cluster are healthy (for container probes); exit status 1 if not.
    Health {
        /// The manager must answer with an initialized map.
        #[arg(long)]
        manager: Option<String>,
        /// The node serving on this address must be up (needs --manager).
        #[arg(long)]
        node: Option<String>,
        /// Every partition must have all its copies, and nothing may be moving (needs --manager).
        #[arg(long)]
        settled: bool,
        /// An NFS server must answer on this address.
        #[arg(long)]
        nfs: Option<String>,
        /// This path must be a live sealfs FUSE mount.
        #[arg(long)]
        mount: Option<PathBuf>,
    },
    /// A workload for any mount that records what was acknowledged (`write`, `overwrite`) and
    /// checks it later (`verify`).
    Load {
        /// write, overwrite or verify.
        mode: String,
        /// Folder on the mount to work in.
        #[arg(long)]
        dir: PathBuf,
        /// Manifest of acknowledged files, on a local disk.
        #[arg(long)]
        manifest: PathBuf,
        /// Stop after this many files (0: no limit).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// Stop after this many seconds (0: no limit).
        #[arg(long, default_value_t = 0)]
        seconds: u64,
        /// Files to overwrite in `overwrite` mode.
        #[arg(long, default_value_t = 8)]
        files: u64,
        /// Bytes per file.
        #[arg(long, default_value_t = 100_000)]
        size: usize,
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
    let args = Args::parse();
    let sec_args = args.security;
    match args.cmd {
        Cmd::GenSecret { file } => {
            if sealfs_cli::keys::ensure_secret(&file)? {
                println!("wrote a new cluster secret to {}", file.display());
            } else {
                println!("{} exists; kept it", file.display());
            }
            Ok(())
        }
        Cmd::GenCerts { dir, names } => {
            let f = sealfs_cli::keys::ensure_certs(&dir, &names)?;
            println!(
                "TLS files: --tls-ca {} --tls-cert {} --tls-key {}",
                f.ca.display(),
                f.cert.display(),
                f.key.display()
            );
            Ok(())
        }
        Cmd::Drain { node, undo, manager } => {
            let sec = cli_security(sec_args)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(sealfs_cli::status::drain(&sec, &manager, node, !undo))?;
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
            let sec = cli_security(sec_args)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(sealfs_cli::status::remove_node(&sec, &manager, node))?;
            println!("node {node} removed");
            Ok(())
        }
        Cmd::Health {
            manager,
            node,
            settled,
            nfs,
            mount,
        } => {
            if let Some(m) = &manager {
                let sec = cli_security(sec_args)?;
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(sealfs_cli::health::manager_and_node(&sec, m, node.as_deref(), settled))?;
            }
            if let Some(a) = &nfs {
                sealfs_cli::health::nfs(a)?;
            }
            if let Some(p) = &mount {
                sealfs_cli::health::mount(p)?;
            }
            Ok(())
        }
        Cmd::Load {
            mode,
            dir,
            manifest,
            count,
            seconds,
            files,
            size,
        } => load(mode, dir, manifest, count, seconds, files, size),
        Cmd::Status { manager } => {
            let sec = cli_security(sec_args)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let s = rt.block_on(sealfs_cli::status::fetch(&sec, &manager))?;
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
            tls,
        } => up(dir, mount, nodes, manager, nfs_port, portmap_port, tls, sec_args),
    }
}

fn load(
    mode: String,
    dir: PathBuf,
    manifest: PathBuf,
    count: u64,
    seconds: u64,
    files: u64,
    size: usize,
) -> anyhow::Result<()> {
    use sealfs_cli::load;
    if mode == "verify" {
        let n = load::verify(&dir, &manifest)?;
        println!("verified {n} files");
        return Ok(());
    }
    let overwrite_files = match mode.as_str() {
        "write" => 0,
        "overwrite" => files.max(1),
        other => anyhow::bail!("unknown mode {other:?}: write, overwrite or verify"),
    };
    let spec = load::LoadSpec {
        dir,
        manifest,
        count,
        duration: Duration::from_secs(seconds),
        overwrite_files,
        size,
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A runtime of its own thread, so the signal handler runs while the workload does.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let s = stop.clone();
    rt.spawn(async move {
        sealfs_proto::process::shutdown_signal().await;
        s.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let r = load::run(&spec, stop)?;
    println!(
        "{} files acknowledged, {} errors, longest {} ms",
        r.done,
        r.errors,
        r.longest.as_millis()
    );
    if r.errors > 0 {
        anyhow::bail!("{} writes failed", r.errors);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn up(
    dir: PathBuf,
    mount: Option<PathBuf>,
    nodes: usize,
    manager: String,
    nfs_port: u16,
    portmap_port: u16,
    tls: bool,
    sec_args: SecurityArgs,
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
    spec.tls = tls;
    sec_args.apply(&mut spec.security);
    if spec.security.secret_file.is_none() && !spec.security.insecure {
        if let Ok(secret) = std::env::var(sealfs_proto::auth::SECRET_ENV) {
            // Hand the secret from the environment on as a file, not through more environments.
            let path = dir.join("secret");
            sealfs_cli::keys::write_private(&path, format!("{}\n", secret.trim()).as_bytes())?;
            spec.security.secret_file = Some(path.to_string_lossy().into_owned());
        }
    }
    println!(
        "starting sealfs: manager, {nodes} storage node(s), NFS gateway, FUSE mount; state and logs under {}",
        dir.display()
    );
    let mut cluster = LocalCluster::start(spec)?;
    std::fs::write(dir.join(SECURITY_FILE), toml::to_string(&cluster.spec.security)?)
        .with_context(|| format!("cannot write {}", dir.join(SECURITY_FILE).display()))?;
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
    if let Some(f) = &cluster.spec.security.secret_file {
        println!("  secret         {} (every process of the cluster needs it)", f);
    }
    if cluster.security.is_tls() {
        println!(
            "  TLS            on (CA and certificate in {})",
            dir.join("tls").display()
        );
    }
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
