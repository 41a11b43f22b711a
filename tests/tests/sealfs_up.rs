//! The README's first command: `sealfs up` starts manager, storage nodes and a FUSE mount under
//! one folder, the mount works, and Ctrl-C (SIGINT) stops everything and unmounts.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sealfs_cli::cluster::{default_bin_dir, is_fuse_mounted};
use sealfs_core::config::ClientConfig;

/// Stops `sealfs up` when the test fails before it does: a failed assertion would otherwise
/// leave the cluster running, holding the test's output open.
struct StopOnDrop(Option<std::process::Child>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let Some(mut c) = self.0.take() else { return };
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGINT);
        for _ in 0..300 {
            if c.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn sealfs_up_runs_a_cluster_until_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The README's own command: the wrapper script builds (nothing to do here) and runs `sealfs up`.
    let wrapper = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sealfs");
    let nfs_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(wrapper)
        .args([
            "up",
            "--manager",
            "127.0.0.1:0",
            "--portmap-port",
            "0",
            "--nfs-port",
            &nfs_port.to_string(),
            "--dir",
        ])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut up = StopOnDrop(Some(child));
    let mut mount = None;
    let mut nfs_line = None;
    let mut manager = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("mounted at") {
            mount = Some(std::path::PathBuf::from(rest.trim()));
        }
        if line.trim().starts_with("NFS") {
            nfs_line = Some(line.clone());
        }
        if let Some(rest) = line.trim().strip_prefix("manager") {
            manager = Some(rest.trim().to_string());
        }
        if line.contains("Ctrl-C") {
            break;
        }
        assert!(Instant::now() < deadline, "sealfs up did not report ready");
    }
    let mount = mount.expect("sealfs up prints where it mounted");
    assert!(
        mount.starts_with(data.canonicalize().unwrap()),
        "the mount is under the data folder by default"
    );
    assert!(is_fuse_mounted(&mount));
    std::fs::write(mount.join("hello.txt"), b"hello sealfs").unwrap();
    assert_eq!(std::fs::read(mount.join("hello.txt")).unwrap(), b"hello sealfs");
    // The mount gave the kernel the configured read-ahead window: the kernel's own 128 KiB for
    // FUSE kept about one request in flight on a sequential read.
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dev = sealfs_core::mounts::device_of(&info, &mount).expect("the mount is in mountinfo");
    let want = ClientConfig::default().readahead_kb.to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = std::fs::read_to_string(format!("/sys/class/bdi/{dev}/read_ahead_kb")).unwrap();
        if got.trim() == want {
            break;
        }
        assert!(Instant::now() < deadline, "read_ahead_kb is {}, not {want}", got.trim());
        std::thread::sleep(Duration::from_millis(50));
    }
    // `sealfs status` run next to it (SEALFS_DIR) needs no secret flags; without the secret the
    // manager refuses.
    let manager = manager.expect("sealfs up prints the manager's address");
    let out = Command::new(default_bin_dir().join("sealfs"))
        .args(["status", "--manager", &manager])
        .env("SEALFS_DIR", &data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("ready"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-secret-of-this-cluster").unwrap();
    let out = Command::new(default_bin_dir().join("sealfs"))
        .args(["status", "--manager", &manager, "--secret-file"])
        .arg(&wrong)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("wrong cluster secret"), "{err}");
    // The NFS gateway serves the same files, and says how to mount it.
    let nfs_line = nfs_line.expect("sealfs up prints the NFS mount command");
    assert!(nfs_line.contains(&format!("port={nfs_port}")), "{nfs_line}");
    let url = format!("nfs://127.0.0.1//hello.txt?version=3&nfsport={nfs_port}&mountport={nfs_port}");
    let out = Command::new(sealfs_tests::tool("nfs-cat", "apt-get install libnfs-utils"))
        .arg(url)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello sealfs",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for sub in ["manager", "node0/meta", "node1/data", "node2/meta", "logs", "gateway0"] {
        assert!(data.join(sub).is_dir(), "{sub} is under the one folder");
    }
    let mut child = up.0.take().unwrap();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "sealfs up exited with {status}; said {rest:?}");
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
    assert!(!is_fuse_mounted(&mount), "Ctrl-C unmounts");
    // The data is still there for the next `sealfs up`.
    // `sealfs status` next to it finds the cluster's secret by itself (from DIR/security.toml).
    let out = Command::new(default_bin_dir().join("sealfs"))
        .args(["status", "--manager", "127.0.0.1:1"])
        .env("SEALFS_DIR", &data)
        .output()
        .unwrap();
    assert!(!out.status.success(), "status against a stopped manager is an error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the manager"), "{err}");
    assert!(data.join("secret").is_file() && data.join("security.toml").is_file());
}
