//! The README's first command: `sealfs up` starts manager, storage nodes and a FUSE mount under
//! one folder, the mount works, and Ctrl-C (SIGINT) stops everything and unmounts.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sealfs_cli::cluster::{default_bin_dir, is_fuse_mounted};

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
    let mut mount = None;
    let mut nfs_line = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("mounted at") {
            mount = Some(std::path::PathBuf::from(rest.trim()));
        }
        if line.trim().starts_with("NFS") {
            nfs_line = Some(line.clone());
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
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "sealfs up exited with {status}; said {rest:?}");
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
    assert!(!is_fuse_mounted(&mount), "Ctrl-C unmounts");
    // The data is still there for the next `sealfs up`.
    let out = Command::new(default_bin_dir().join("sealfs"))
        .args(["status", "--manager", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "status against a stopped manager is an error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the manager"));
}
