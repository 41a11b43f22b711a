//! A local cluster of real processes: manager, storage nodes, (gateway,) and a FUSE mount, all
//! state under one folder. `sealfs up` runs one for people; the cluster tests run them to kill,
//! restart and check individual processes.

use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sealfs_core::config::SecurityConfig;
use sealfs_core::placement::{ClusterMap, NodeState};
use sealfs_proto::auth::Security;

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Everything lives under this folder.
    pub dir: PathBuf,
    /// Storage nodes to start.
    pub nodes: usize,
    /// Partitions of a new cluster.
    pub partitions: u32,
    /// Manager listen address (port 0: any free port).
    pub manager_listen: String,
    /// Mount the cluster here with sealfs-fuse (None: no FUSE mount).
    pub mount: Option<PathBuf>,
    /// Folder holding the sealfs binaries (default: next to the running program).
    pub bin_dir: PathBuf,
    /// Extra environment for every process (e.g. SEALFS_LOG).
    pub env: Vec<(String, String)>,
    /// Extra arguments for sealfs-fuse.
    pub fuse_args: Vec<String>,
    /// NFS gateways to start.
    pub gateways: Vec<GatewaySpec>,
    /// Cluster secret and TLS for every process. Without a secret file (and not insecure),
    /// DIR/secret is made and used.
    pub security: SecurityConfig,
    /// Turn TLS on with a CA and certificate made in DIR/tls (unless `security` names TLS files).
    pub tls: bool,
}

/// One NFS gateway of a local cluster.
#[derive(Debug, Clone, Default)]
pub struct GatewaySpec {
    /// Address NFS and MOUNT listen on (port 0: any free port).
    pub nfs_listen: String,
    /// Address of the portmapper (TCP and UDP); None: no portmapper.
    pub portmap_listen: Option<String>,
    /// Extra arguments (export options).
    pub args: Vec<String>,
}

impl ClusterSpec {
    /// A spec with defaults: 3 nodes, 256 partitions, manager on any free port, binaries next to
    /// the running program (or its parent folder, for test executables under target/*/deps).
    pub fn new(dir: impl Into<PathBuf>) -> ClusterSpec {
        ClusterSpec {
            dir: dir.into(),
            nodes: 3,
            partitions: 256,
            manager_listen: "127.0.0.1:0".into(),
            mount: None,
            bin_dir: default_bin_dir(),
            env: Vec::new(),
            fuse_args: Vec::new(),
            gateways: Vec::new(),
            security: SecurityConfig::default(),
            tls: false,
        }
    }

    /// Runtime worker threads for each process: the machine's CPUs shared among the nodes and
    /// one more share for the clients (mount, gateways), at least one. With a thread per CPU in
    /// every process, the processes of one small machine kept handing work between threads: on
    /// two CPUs with three nodes, one thread each ran creates 1.1-3.1x and removes 1.2-3.1x as
    /// fast (README, A/B); a user's own `TOKIO_WORKER_THREADS` wins.
    pub fn runtime_threads(&self) -> usize {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cpus / (self.nodes + 1)).max(1)
    }
}

/// Tokio's variable for the worker threads of a multi-threaded runtime (every sealfs daemon's).
const RUNTIME_THREADS_ENV: &str = "TOKIO_WORKER_THREADS";

/// Where the sealfs binaries are: next to the running program, or one folder up from it.
pub fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let here = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if here.join("sealfs-node").exists() {
        return here;
    }
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// A running child process and how to start it again.
struct Proc {
    name: String,
    cmd: Vec<String>,
    child: Option<Child>,
}

/// A running local cluster. Dropping it stops everything (and unmounts).
pub struct LocalCluster {
    pub spec: ClusterSpec,
    /// The manager's bound address.
    pub manager_addr: String,
    /// The security settings every process of the cluster was given.
    pub security: Security,
    manager: Proc,
    nodes: Vec<Proc>,
    fuse: Option<Proc>,
    gateways: Vec<Proc>,
}

fn open_log(dir: &Path, name: &str) -> anyhow::Result<File> {
    let path = dir.join("logs").join(format!("{name}.log"));
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open log {}", path.display()))
}

fn wait_for_file(path: &Path, child: &mut Child, what: &str, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if s.ends_with('\n') {
                return Ok(s.trim().to_string());
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited during start-up ({status}); see its log");
        }
        if Instant::now() > deadline {
            bail!("{what} did not start within {timeout:?}; see its log");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run an async block on a private runtime in its own thread, so callers may or may not be
/// inside a runtime themselves.
pub fn block_on<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    })
    .join()
    .expect("helper thread")
}

/// The environment that hands `cfg` to a sealfs process (each binary reads these variables).
pub fn security_env(cfg: &SecurityConfig) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let mut set = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            env.push((k.to_string(), v.clone()));
        }
    };
    set("SEALFS_SECRET_FILE", &cfg.secret_file);
    set("SEALFS_TLS_CERT", &cfg.tls_cert);
    set("SEALFS_TLS_KEY", &cfg.tls_key);
    set("SEALFS_TLS_CA", &cfg.tls_ca);
    if !cfg.tls_domain.is_empty() {
        env.push(("SEALFS_TLS_DOMAIN".into(), cfg.tls_domain.clone()));
    }
    if cfg.insecure {
        env.push(("SEALFS_INSECURE".into(), "true".into()));
    }
    env
}

/// A client of the manager at `manager`.
pub fn manager_client(
    security: &Security,
    manager: &str,
) -> anyhow::Result<sealfs_proto::pb::manager_client::ManagerClient<sealfs_proto::auth::AuthChannel>> {
    let ep = security
        .endpoint(manager)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10));
    Ok(sealfs_proto::pb::manager_client::ManagerClient::new(
        security.channel(ep),
    ))
}

/// Fetch the cluster map from a manager.
pub async fn fetch_map(security: &Security, manager: &str) -> anyhow::Result<ClusterMap> {
    let mut c = manager_client(security, manager)?;
    let m = c
        .get_map(sealfs_proto::pb::GetMapRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", sealfs_proto::status_detail(&s)))?
        .into_inner();
    Ok(sealfs_proto::map_from_pb(&m)?)
}

/// Whether `path` is a mount point of a sealfs FUSE mount.
pub fn is_fuse_mounted(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else { return false };
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (src, mp, ty) = (f.next(), f.next(), f.next());
        mp.map(sealfs_core::mounts::unescape_path).as_deref() == Some(canon.to_string_lossy().as_ref())
            && src.is_some_and(|s| s.starts_with("sealfs"))
            && ty.is_some_and(|t| t == "fuse" || t == "fuse.sealfs")
    })
}

impl Proc {
    /// Listen on `addr` from the next start on (the process's `--listen` argument).
    fn listen_on(&mut self, addr: String) {
        if let Some(i) = self.cmd.iter().position(|a| a == "--listen") {
            self.cmd[i + 1] = addr;
        }
    }

    fn spawn(name: &str, cmd: Vec<String>, spec: &ClusterSpec) -> anyhow::Result<Proc> {
        let mut p = Proc {
            name: name.to_string(),
            cmd,
            child: None,
        };
        p.start(spec)?;
        Ok(p)
    }

    fn start(&mut self, spec: &ClusterSpec) -> anyhow::Result<()> {
        let log = open_log(&spec.dir, &self.name)?;
        let bin = spec.bin_dir.join(&self.cmd[0]);
        if !bin.exists() {
            bail!(
                "{} not found; build the workspace first (cargo build --release)",
                bin.display()
            );
        }
        let mut cmd = Command::new(&bin);
        cmd.args(&self.cmd[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in security_env(&spec.security) {
            cmd.env(k, v);
        }
        if std::env::var_os(RUNTIME_THREADS_ENV).is_none() {
            cmd.env(RUNTIME_THREADS_ENV, spec.runtime_threads().to_string());
        }
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        // Children get their own process group (a Ctrl-C reaches only `sealfs up`, which stops
        // them in order) and die with their parent if it is killed.
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().with_context(|| format!("cannot start {}", bin.display()))?);
        Ok(())
    }

    fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    /// Send `sig` and wait up to `timeout` for the exit; SIGKILL after that.
    fn stop(&mut self, sig: Signal, timeout: Duration) {
        let Some(mut child) = self.child.take() else { return };
        let _ = kill(Pid::from_raw(child.id() as i32), sig);
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl LocalCluster {
    /// Start everything the spec names and wait until it serves.
    pub fn start(mut spec: ClusterSpec) -> anyhow::Result<LocalCluster> {
        for sub in ["logs", "manager"] {
            std::fs::create_dir_all(spec.dir.join(sub))
                .with_context(|| format!("cannot create {}", spec.dir.join(sub).display()))?;
        }
        if spec.security.secret_file.is_none() && !spec.security.insecure {
            let path = spec.dir.join("secret");
            crate::keys::ensure_secret(&path)?;
            spec.security.secret_file = Some(path.to_string_lossy().into_owned());
        }
        if spec.tls && !spec.security.tls() {
            crate::keys::ensure_certs(&spec.dir.join("tls"), &[])?.apply(&mut spec.security);
        }
        let security = Security::load(&spec.security)?;
        let addr_file = spec.dir.join("manager").join("addr");
        let _ = std::fs::remove_file(&addr_file);
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let manager_cmd = vec![
            "sealfs-manager".into(),
            "--listen".into(),
            spec.manager_listen.clone(),
            "--dir".into(),
            s(&spec.dir.join("manager")),
            "--partitions".into(),
            spec.partitions.to_string(),
            "--min-nodes".into(),
            spec.nodes.to_string(),
            "--addr-file".into(),
            s(&addr_file),
        ];
        let mut manager = Proc::spawn("manager", manager_cmd, &spec)?;
        let manager_addr = wait_for_file(
            &addr_file,
            manager.child.as_mut().expect("started"),
            "sealfs-manager",
            Duration::from_secs(20),
        )?;
        let mut cluster = LocalCluster {
            spec,
            manager_addr,
            security,
            manager,
            nodes: Vec::new(),
            fuse: None,
            gateways: Vec::new(),
        };
        for i in 0..cluster.spec.nodes {
            let p = cluster.node_proc(i)?;
            cluster.nodes.push(p);
        }
        cluster.wait_nodes_up(Duration::from_secs(60))?;
        for i in 0..cluster.spec.gateways.len() {
            let p = cluster.gateway_proc(i)?;
            cluster.gateways.push(p);
            cluster.wait_gateway(i)?;
        }
        if let Some(mp) = cluster.spec.mount.clone() {
            cluster.mount_fuse(&mp)?;
        }
        Ok(cluster)
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.spec.dir.join(format!("node{i}"))
    }

    fn node_proc(&self, i: usize) -> anyhow::Result<Proc> {
        let dir = self.node_dir(i);
        for sub in ["meta", "data"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let s = |p: PathBuf| p.to_string_lossy().into_owned();
        let cmd = vec![
            "sealfs-node".into(),
            "--manager".into(),
            self.manager_addr.clone(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--meta-dir".into(),
            s(dir.join("meta")),
            "--data-dir".into(),
            s(dir.join("data")),
            "--addr-file".into(),
            s(dir.join("addr")),
        ];
        Proc::spawn(&format!("node{i}"), cmd, &self.spec)
    }

    fn gateway_dir(&self, i: usize) -> PathBuf {
        self.spec.dir.join(format!("gateway{i}"))
    }

    fn gateway_proc(&self, i: usize) -> anyhow::Result<Proc> {
        let g = &self.spec.gateways[i];
        let dir = self.gateway_dir(i);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let addr_file = dir.join("addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = vec![
            "sealfs-gateway".to_string(),
            "--manager".into(),
            self.manager_addr.clone(),
            "--nfs-listen".into(),
            g.nfs_listen.clone(),
            "--portmap-listen".into(),
            g.portmap_listen.clone().unwrap_or_else(|| "none".into()),
            "--addr-file".into(),
            addr_file.to_string_lossy().into_owned(),
        ];
        cmd.extend(g.args.iter().cloned());
        Proc::spawn(&format!("gateway{i}"), cmd, &self.spec)
    }

    /// Start one more gateway; returns its NFS address. A gateway that cannot start (its ports
    /// are taken, say) is removed again and its error returned.
    pub fn add_gateway(&mut self, g: GatewaySpec) -> anyhow::Result<String> {
        self.spec.gateways.push(g);
        let i = self.spec.gateways.len() - 1;
        let p = self.gateway_proc(i)?;
        self.gateways.push(p);
        match self.wait_gateway(i) {
            Ok(addr) => Ok(addr),
            Err(e) => {
                self.stop_gateway(i, Signal::SIGTERM);
                self.gateways.pop();
                self.spec.gateways.pop();
                let log = std::fs::read_to_string(self.log_path(&format!("gateway{i}"))).unwrap_or_default();
                let why = log
                    .lines()
                    .rev()
                    .find(|l| l.starts_with("error:"))
                    .unwrap_or("")
                    .to_string();
                Err(anyhow::anyhow!("{e}: {why}"))
            }
        }
    }

    /// Wait until gateway `i` listens; its address then is `gateway_addr(i)`.
    pub fn wait_gateway(&mut self, i: usize) -> anyhow::Result<String> {
        let path = self.gateway_dir(i).join("addr");
        let child = self.gateways[i]
            .child
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("gateway {i} is not running"))?;
        wait_for_file(&path, child, "sealfs-gateway", Duration::from_secs(60))
    }

    /// The address gateway `i` serves NFS on.
    pub fn gateway_addr(&self, i: usize) -> Option<String> {
        std::fs::read_to_string(self.gateway_dir(i).join("addr"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Stop gateway `i` with `sig` (SIGKILL is `kill -9`).
    pub fn stop_gateway(&mut self, i: usize, sig: Signal) {
        if let Some(p) = self.gateways.get_mut(i) {
            p.stop(sig, Duration::from_secs(15));
        }
    }

    /// Start gateway `i` again, on `nfs_listen` if given (to take over another's address).
    pub fn start_gateway(&mut self, i: usize, nfs_listen: Option<String>) -> anyhow::Result<String> {
        if let Some(addr) = nfs_listen {
            self.spec.gateways[i].nfs_listen = addr;
        }
        let p = self.gateway_proc(i)?;
        self.gateways[i] = p;
        self.wait_gateway(i)
    }

    /// Wait until the map is initialized and every node this cluster runs is up in it.
    pub fn wait_nodes_up(&mut self, timeout: Duration) -> anyhow::Result<ClusterMap> {
        let deadline = Instant::now() + timeout;
        loop {
            let addr = self.manager_addr.clone();
            let sec = self.security.clone();
            if let Ok(map) = block_on(async move { fetch_map(&sec, &addr).await }) {
                let up = map.nodes.iter().filter(|n| n.state == NodeState::Up).count();
                let running = self.nodes.iter_mut().map(|p| p.running()).filter(|r| *r).count();
                if map.is_initialized() && up >= running {
                    return Ok(map);
                }
            }
            for p in &mut self.nodes {
                if p.child.is_some() && !p.running() {
                    bail!(
                        "{} exited during start-up; see {}",
                        p.name,
                        self.spec.dir.join("logs").join(format!("{}.log", p.name)).display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the cluster was not ready within {timeout:?}; see the logs in {}",
                    self.spec.dir.join("logs").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Mount the cluster at `mp` with sealfs-fuse and wait for the mount to appear.
    pub fn mount_fuse(&mut self, mp: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(mp).with_context(|| format!("cannot create mount point {}", mp.display()))?;
        let mut cmd = vec!["sealfs-fuse".to_string(), "--manager".into(), self.manager_addr.clone()];
        cmd.extend(self.spec.fuse_args.iter().cloned());
        cmd.push(mp.to_string_lossy().into_owned());
        let mut p = Proc::spawn("fuse", cmd, &self.spec)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_fuse_mounted(mp) {
            if !p.running() {
                bail!(
                    "sealfs-fuse exited; see {}",
                    self.spec.dir.join("logs/fuse.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!("the FUSE mount did not appear at {} within 30 s", mp.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.spec.mount = Some(mp.to_path_buf());
        self.fuse = Some(p);
        Ok(())
    }

    /// Unmount the FUSE mount (SIGTERM to sealfs-fuse, which unmounts).
    pub fn unmount_fuse(&mut self) {
        if let Some(mut p) = self.fuse.take() {
            p.stop(Signal::SIGTERM, Duration::from_secs(15));
        }
        if let Some(mp) = &self.spec.mount {
            if is_fuse_mounted(mp) {
                let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }

    /// The address node `i` serves on (as it last started).
    pub fn node_addr(&self, i: usize) -> Option<String> {
        std::fs::read_to_string(self.node_dir(i).join("addr"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Process id of node `i`, if running.
    pub fn node_pid(&self, i: usize) -> Option<u32> {
        self.nodes.get(i).and_then(|p| p.pid()).map(|p| p.as_raw() as u32)
    }

    /// Start one more storage node; returns its index.
    pub fn add_node(&mut self) -> anyhow::Result<usize> {
        let i = self.nodes.len();
        let p = self.node_proc(i)?;
        self.nodes.push(p);
        self.spec.nodes = self.nodes.len();
        Ok(i)
    }

    /// Send `sig` to node `i` without waiting (SIGSTOP / SIGCONT cut a node off and back).
    pub fn signal_node(&self, i: usize, sig: Signal) {
        if let Some(pid) = self.nodes.get(i).and_then(|p| p.pid()) {
            let _ = kill(pid, sig);
        }
    }

    /// Stop the manager with `sig` and wait for it to exit.
    pub fn stop_manager(&mut self, sig: Signal) {
        self.manager.stop(sig, Duration::from_secs(15));
    }

    /// Start the manager again on the address it had.
    pub fn start_manager(&mut self) -> anyhow::Result<()> {
        let spec = self.spec.clone();
        self.manager.listen_on(self.manager_addr.clone());
        self.manager.start(&spec)
    }

    /// Whether node `i` is running.
    pub fn node_running(&mut self, i: usize) -> bool {
        self.nodes.get_mut(i).is_some_and(|p| p.running())
    }

    /// Send `sig` to node `i` and wait for it to exit (SIGKILL is `kill -9`).
    pub fn stop_node(&mut self, i: usize, sig: Signal) {
        if let Some(p) = self.nodes.get_mut(i) {
            p.stop(sig, Duration::from_secs(15));
        }
    }

    /// Start node `i` again with the same folders.
    pub fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let spec = self.spec.clone();
        self.nodes[i].start(&spec)
    }

    /// Start node `i` again with the same folders and on the address it had, as a node with a
    /// fixed port comes back (the manager sees the same node at the same place).
    pub fn start_node_in_place(&mut self, i: usize) -> anyhow::Result<()> {
        let addr = self.node_addr(i).context("the node never ran")?;
        self.nodes[i].listen_on(addr);
        self.start_node(i)
    }

    /// Stop every process in order: FUSE, nodes, manager.
    pub fn stop_all(&mut self) {
        self.unmount_fuse();
        for p in self.gateways.iter_mut().chain(self.nodes.iter_mut()) {
            p.stop(Signal::SIGTERM, Duration::from_secs(15));
        }
        self.manager.stop(Signal::SIGTERM, Duration::from_secs(15));
    }

    /// Start every stopped process again (manager, nodes, then the FUSE mount if there was one).
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        let spec = self.spec.clone();
        if !self.manager.running() {
            // Keep the address the nodes and clients know.
            self.manager.listen_on(self.manager_addr.clone());
            self.manager.start(&spec)?;
        }
        for p in &mut self.nodes {
            if !p.running() {
                p.start(&spec)?;
            }
        }
        self.wait_nodes_up(Duration::from_secs(60))?;
        for i in 0..self.gateways.len() {
            if !self.gateways[i].running() {
                // Back on the address it had, so clients keep their mounts.
                let addr = self.gateway_addr(i);
                self.start_gateway(i, addr)?;
            }
        }
        if let Some(mp) = spec.mount.clone() {
            if self.fuse.is_none() {
                self.mount_fuse(&mp)?;
            }
        }
        Ok(())
    }

    /// Whether every process is still running; names the first that is not.
    pub fn check_running(&mut self) -> Result<(), String> {
        if !self.manager.running() {
            return Err("manager".into());
        }
        for p in self
            .nodes
            .iter_mut()
            .chain(self.gateways.iter_mut())
            .chain(self.fuse.iter_mut())
        {
            if !p.running() {
                return Err(p.name.clone());
            }
        }
        Ok(())
    }

    /// Fetch the cluster map from this cluster's manager.
    pub fn fetch_map(&self) -> anyhow::Result<ClusterMap> {
        let addr = self.manager_addr.clone();
        let sec = self.security.clone();
        block_on(async move { fetch_map(&sec, &addr).await })
    }

    /// Path of a process's log.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.spec.dir.join("logs").join(format!("{name}.log"))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}
