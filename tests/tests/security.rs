//! Cluster authentication and TLS: a node, gateway or FUSE client with the wrong secret can
//! neither read nor write and says why; the cluster counts and logs the refusals; with the right
//! secret everything works, with TLS on as well.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sealfs_client::SealClient;
use sealfs_core::config::{ClientConfig, SecurityConfig};
use sealfs_core::{Credentials, ROOT_INO};
use sealfs_proto::auth::Security;
use sealfs_proto::pb;
use sealfs_tests::{pattern, TestCluster};

fn bin(name: &str) -> PathBuf {
    sealfs_cli::cluster::default_bin_dir().join(name)
}

/// Run `cmd` (which must give up by itself) and return its output, killing it after 60 s.
fn run_to_exit(mut cmd: Command) -> Output {
    cmd.env("RUST_BACKTRACE", "0").env_remove("SEALFS_SECRET");
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    });
    let out = child.wait_with_output().expect("wait");
    drop(killer);
    out
}

fn wrong_secret(dir: &Path) -> SecurityConfig {
    let path = dir.join("wrong-secret");
    std::fs::write(&path, "this-is-not-the-cluster-secret\n").unwrap();
    SecurityConfig {
        secret_file: Some(path.to_string_lossy().into_owned()),
        ..Default::default()
    }
}

fn with_tls(mut sec: SecurityConfig, from: &SecurityConfig) -> SecurityConfig {
    sec.tls_cert = from.tls_cert.clone();
    sec.tls_key = from.tls_key.clone();
    sec.tls_ca = from.tls_ca.clone();
    sec
}

async fn connect(manager: &str, security: SecurityConfig, wait: Duration) -> Result<SealClient, String> {
    let cfg = ClientConfig {
        manager: manager.to_string(),
        retry_deadline_ms: 2000,
        security,
        ..Default::default()
    };
    SealClient::connect(cfg, wait).await.map_err(|e| e.to_string())
}

async fn refused(manager: &str, security: SecurityConfig, wait: Duration) -> String {
    match connect(manager, security, wait).await {
        Ok(_) => panic!("a client with the wrong credentials connected"),
        Err(e) => e,
    }
}

/// Each binary started with `sec` (as environment variables, the way `sealfs up` passes them)
/// must exit with an error that says the cluster refused it.
fn outsiders_are_refused(c: &TestCluster, sec: &SecurityConfig) {
    let env = sealfs_cli::cluster::security_env(sec);
    let manager = c.cluster.manager_addr.clone();
    let tmp = c.dir.path().join("outsider");
    for sub in ["meta", "data", "mnt"] {
        std::fs::create_dir_all(tmp.join(sub)).unwrap();
    }
    let mut node = Command::new(bin("sealfs-node"));
    node.args(["--manager", &manager, "--listen", "127.0.0.1:0", "--meta-dir"])
        .arg(tmp.join("meta"))
        .arg("--data-dir")
        .arg(tmp.join("data"))
        .envs(env.clone());
    let mut gateway = Command::new(bin("sealfs-gateway"));
    gateway
        .args([
            "--manager",
            &manager,
            "--nfs-listen",
            "127.0.0.1:0",
            "--portmap-listen",
            "none",
        ])
        .envs(env.clone());
    let mut fuse = Command::new(bin("sealfs-fuse"));
    fuse.args(["--manager", &manager, "--connect-wait", "5"])
        .arg(tmp.join("mnt"))
        .envs(env.clone());
    for (what, cmd) in [
        ("sealfs-node", node),
        ("sealfs-gateway", gateway),
        ("sealfs-fuse", fuse),
    ] {
        let out = run_to_exit(cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} with the wrong secret started: {err}");
        assert!(
            err.contains("refused") && err.contains("secret"),
            "{what} does not say why it cannot work: {err}"
        );
        assert!(!err.contains("panicked"), "{what} panicked: {err}");
    }
    assert!(!sealfs_cli::cluster::is_fuse_mounted(&tmp.join("mnt")));
}

async fn refused_and_counted(c: &TestCluster, wrong: &SecurityConfig) {
    let manager = c.cluster.manager_addr.clone();
    // The client library says so at once (no retrying against a refusal).
    let started = Instant::now();
    let e = refused(&manager, wrong.clone(), Duration::from_secs(30)).await;
    assert!(e.contains("refused"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(20), "a refusal was retried");
    // A node refuses a call straight to it: no reads, no writes.
    let node_addr = c.cluster.node_addr(0).unwrap();
    let bad = Security::load(wrong).unwrap();
    let mut nc = sealfs_client::node_client(&bad, &node_addr, Duration::from_secs(5)).unwrap();
    let st = nc
        .lookup(pb::LookupRequest {
            ctx: Some(sealfs_proto::ctx(0, &Credentials::root())),
            parent: ROOT_INO,
            name: b"secret-file".to_vec().into(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
    assert!(st.message().contains("wrong cluster secret"), "{st:?}");
    let st = nc
        .write(pb::WriteRequest {
            ctx: Some(sealfs_proto::ctx(0, &Credentials::root())),
            ino: ROOT_INO,
            data: b"x".to_vec().into(),
            length: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
    // The cluster counts what it refused and logs why, naming the caller.
    let sec = c.cluster.security.clone();
    let status = sealfs_cli::status::fetch(&sec, &manager).await.unwrap();
    assert!(status.auth_refused > 0, "the manager counted no refusals");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = sealfs_cli::status::fetch(&sec, &manager).await.unwrap();
        let on_nodes: u64 = status
            .nodes
            .iter()
            .map(|n| n.stats.as_ref().map_or(0, |s| s.auth_refused))
            .sum();
        if on_nodes > 0 {
            assert!(sealfs_cli::status::render(&status).contains("refused calls"));
            break;
        }
        assert!(Instant::now() < deadline, "the nodes' refusals were not reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(c.cluster.log_path("manager")).unwrap();
    assert!(
        log.contains("refused a call") && log.contains("wrong cluster secret") && log.contains("peer"),
        "manager log: {log}"
    );
    let log = std::fs::read_to_string(c.cluster.log_path("node0")).unwrap();
    assert!(log.contains("refused a call"), "node log: {log}");
    // The secret itself is never logged.
    let secret = std::fs::read_to_string(c.cluster.spec.security.secret_file.as_ref().unwrap()).unwrap();
    for name in ["manager", "node0"] {
        let log = std::fs::read_to_string(c.cluster.log_path(name)).unwrap();
        assert!(!log.contains(secret.trim()), "{name} logged the secret");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_secret_gets_nothing_and_the_right_one_everything() {
    let mut c = TestCluster::start(1, true);
    // With the right secret (what the cluster's own processes have): a FUSE mount works.
    let data = pattern(1, 200_000);
    std::fs::write(c.mnt().join("f"), &data).unwrap();
    assert_eq!(std::fs::read(c.mnt().join("f")).unwrap(), data);
    let good = connect(
        &c.cluster.manager_addr,
        c.cluster.spec.security.clone(),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let e = good.lookup(&Credentials::root(), ROOT_INO, b"f").await.unwrap();
    assert_eq!(e.attr.size, data.len() as u64);

    let wrong = wrong_secret(c.dir.path());
    refused_and_counted(&c, &wrong).await;
    outsiders_are_refused(&c, &wrong);
    // No secret at all: refused too (and a process without one will not even start).
    let insecure = SecurityConfig {
        insecure: true,
        ..Default::default()
    };
    let e = refused(&c.cluster.manager_addr, insecure, Duration::from_secs(30)).await;
    assert!(e.contains("refused"), "{e}");
    let out = run_to_exit({
        let mut cmd = Command::new(bin("sealfs-fuse"));
        cmd.args(["--manager", &c.cluster.manager_addr]).arg(c.dir.path());
        cmd
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no cluster secret"), "{err}");
    // Nothing the outsiders tried changed the file system.
    assert_eq!(std::fs::read(c.mnt().join("f")).unwrap(), data);
    c.cluster.check_running().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_on_the_same_holds() {
    let mut c = TestCluster::start_with(3, true, |s| s.tls = true);
    let sec = c.cluster.spec.security.clone();
    assert!(sec.tls() && c.cluster.security.is_tls());
    // Every hop is TLS: manager, node, FUSE client. The mount works.
    let data = pattern(2, 300_000);
    std::fs::write(c.mnt().join("g"), &data).unwrap();
    assert_eq!(std::fs::read(c.mnt().join("g")).unwrap(), data);
    // Over HTTP/2 chunk data travels inside its messages (sealfs_proto::attach inlines it): a
    // file of three chunks lands whole on all three replicas of each chunk.
    let big = pattern(5, (8 << 20) + 12345);
    std::fs::write(c.mnt().join("big"), &big).unwrap();
    assert!(
        std::fs::read(c.mnt().join("big")).unwrap() == big,
        "the big file reads back whole"
    );
    let mut copies: std::collections::BTreeMap<String, Vec<Vec<u8>>> = Default::default();
    for node in 0..3 {
        let data_dir = c.dir.path().join(format!("node{node}/data"));
        for part in std::fs::read_dir(&data_dir).unwrap().flatten() {
            if !part.path().is_dir() {
                continue;
            }
            for f in std::fs::read_dir(part.path()).unwrap().flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if !name.ends_with(".sum") {
                    copies.entry(name).or_default().push(std::fs::read(f.path()).unwrap());
                }
            }
        }
    }
    let sizes: Vec<usize> = copies.values().map(|c| c[0].len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), data.len() + big.len(), "{sizes:?}");
    for (name, c) in &copies {
        assert_eq!(c.len(), 3, "chunk {name} on every node");
        assert!(c.iter().all(|x| x == &c[0]), "chunk {name}: the replicas agree");
    }

    // The right secret without TLS cannot even talk to the cluster.
    let plain = SecurityConfig {
        secret_file: sec.secret_file.clone(),
        ..Default::default()
    };
    let e = refused(&c.cluster.manager_addr, plain, Duration::from_secs(3)).await;
    assert!(!e.is_empty());
    // Certificates from another CA are refused in the handshake.
    let other = sealfs_cli::keys::ensure_certs(&c.dir.path().join("other-ca"), &[]).unwrap();
    let mut foreign = SecurityConfig {
        secret_file: sec.secret_file.clone(),
        ..Default::default()
    };
    other.apply(&mut foreign);
    let e = refused(&c.cluster.manager_addr, foreign, Duration::from_secs(3)).await;
    assert!(!e.is_empty());
    // Over TLS, the wrong secret is refused, counted and logged just the same.
    let wrong = with_tls(wrong_secret(c.dir.path()), &sec);
    refused_and_counted(&c, &wrong).await;
    outsiders_are_refused(&c, &wrong);
    assert_eq!(std::fs::read(c.mnt().join("g")).unwrap(), data);
    c.cluster.check_running().unwrap();
}
