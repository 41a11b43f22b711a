//! POSIX conformance and data integrity on the FUSE mount of a 3-node cluster of separate
//! processes: pjdfstest (0 failures; skips only as listed in tests/pjdfstest/skipped.txt) and fsx.

use std::path::Path;
use std::process::Command;

use sealfs_tests::{parse_pjdfstest, pjdfstest_list, tool, TestCluster};

fn run_pjdfstest(mnt: &Path, config: &str) -> Vec<(String, String, String)> {
    let dir = mnt.join(format!("pjd-{}", config.trim_end_matches(".toml")));
    std::fs::create_dir(&dir).unwrap();
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("pjdfstest").join(config);
    let out = Command::new(tool("pjdfstest", "cargo install pjdfstest"))
        .arg("-c")
        .arg(&cfg)
        .arg("-p")
        .arg(&dir)
        .env("RUST_BACKTRACE", "0")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run pjdfstest");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = parse_pjdfstest(&text);
    let failed: Vec<_> = rows.iter().filter(|r| r.1 == "FAILED").collect();
    assert!(
        failed.is_empty(),
        "pjdfstest ({config}) failures:\n{failed:#?}\n\nfull output:\n{text}"
    );
    assert!(
        out.status.success(),
        "pjdfstest ({config}) exited with {}:\n{text}",
        out.status
    );
    assert!(
        rows.iter().filter(|r| r.1 == "ok").count() > 300,
        "pjdfstest ran too few tests:\n{text}"
    );
    rows
}

#[test]
fn pjdfstest_passes_on_the_fuse_mount() {
    let c = TestCluster::start(3, true);
    let listed = pjdfstest_list("skipped.txt");
    let shared = run_pjdfstest(&c.mnt(), "shared.toml");
    let extended = run_pjdfstest(&c.mnt(), "extended.toml");
    let ok_in_extended: std::collections::HashSet<_> =
        extended.iter().filter(|r| r.1 == "ok").map(|r| r.0.clone()).collect();
    for (name, status, reason) in &shared {
        if status == "skipped" && !listed.contains_key(name) {
            assert!(
                reason.starts_with("requires features") && ok_in_extended.contains(name),
                "{name} was skipped ({reason}) but is not listed in tests/pjdfstest/skipped.txt"
            );
        }
    }
    for (name, status, reason) in &extended {
        if status == "skipped" {
            assert!(
                listed.contains_key(name),
                "{name} was skipped ({reason}) but is not listed in skipped.txt"
            );
        }
    }
}

fn run_fsx(file: &Path, ops: u32, seed: u32) {
    let artifacts = tempfile::tempdir().unwrap();
    let out = Command::new(tool("fsx", "cargo install fsx"))
        .args(["-N", &ops.to_string(), "-S", &seed.to_string(), "-P"])
        .arg(artifacts.path())
        .arg(file)
        .output()
        .expect("run fsx");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("All operations completed A-OK"),
        "fsx (seed {seed}) failed:\n{text}"
    );
}

#[test]
fn fsx_is_clean_on_the_fuse_mount() {
    let c = TestCluster::start(3, true);
    run_fsx(&c.mnt().join("fsx-a"), 20_000, 1);
    run_fsx(&c.mnt().join("fsx-b"), 10_000, 77);
}

#[test]
fn locks_hold_between_processes_of_one_mount() {
    let c = TestCluster::start(2, true);
    let f = c.mnt().join("lockfile");
    std::fs::write(&f, b"x").unwrap();
    // One process holds an exclusive flock for a while; another cannot take it meanwhile.
    let mut holder = Command::new("flock")
        .arg("-x")
        .arg(&f)
        .args(["-c", "sleep 2"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let busy = Command::new("flock")
        .arg("-n")
        .arg("-x")
        .arg(&f)
        .arg("true")
        .status()
        .unwrap();
    assert!(!busy.success(), "a second exclusive flock was granted");
    // The lock goes when its holder (flock and its child, which shares the open file) exits.
    assert!(holder.wait().unwrap().success());
    let free = Command::new("flock")
        .arg("-n")
        .arg("-x")
        .arg(&f)
        .arg("true")
        .status()
        .unwrap();
    assert!(free.success(), "the lock was not released with its holder");
    // POSIX record locks: F_SETLK from another process conflicts with a held write lock.
    let held = std::fs::OpenOptions::new().read(true).write(true).open(&f).unwrap();
    let lock = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: a valid fd and a valid flock struct.
    assert_eq!(unsafe { libc::fcntl(held.as_raw_fd(), libc::F_SETLK, &lock) }, 0);
    let probe = format!(
        "import fcntl,sys\nf=open({:?},'r+')\ntry:\n fcntl.lockf(f,fcntl.LOCK_EX|fcntl.LOCK_NB)\nexcept OSError:\n sys.exit(3)\n",
        f.to_string_lossy()
    );
    let st = Command::new("python3").args(["-c", &probe]).status().unwrap();
    assert_eq!(
        st.code(),
        Some(3),
        "a conflicting POSIX lock was granted to another process"
    );
}

/// Run `script` with sh as uid and gid 1000 (no supplementary groups); its stdout.
fn sh_as_user(script: &str) -> String {
    let out = Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups", "sh", "-c", script])
        .output()
        .expect("setpriv");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// As uid 1000, `command 'f'`, then the mode (permission bits) that user's `stat` of `f` shows.
fn then_mode_as_user(command: &str, f: &Path) -> u32 {
    let f = f.display();
    let seen = sh_as_user(&format!("{command} '{f}' && stat -c %a '{f}'"));
    u32::from_str_radix(&seen, 8).unwrap()
}

/// The mount clears set-id bits on writes itself (the kernel leaves it to it and stops asking
/// for security.capability before every write): a write or truncate by a user without
/// CAP_FSETID clears set-user-ID, and set-group-ID where it means group execute, at once, as
/// the writer's next stat shows; root's writes keep them.
#[test]
fn writes_by_other_users_clear_set_id_bits() {
    use std::os::unix::fs::PermissionsExt;
    let c = TestCluster::start(3, true);
    let dir = c.mnt().join("setid");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    // (file, size: inline or chunked, mode before, mode after a write by another user)
    let cases = [
        ("suid-small", 10usize, 0o4777, 0o777),
        ("suid-big", 5 << 20, 0o4777, 0o777),
        ("sgid-exec", 5 << 20, 0o2777, 0o777),
        ("sgid-noexec", 5 << 20, 0o2767, 0o2767),
        ("both", 10, 0o6777, 0o777),
    ];
    for (name, size, before, after) in cases {
        let f = dir.join(name);
        std::fs::write(&f, vec![7u8; size]).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(before)).unwrap();
        // Root's write keeps them.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&f)
            .and_then(|mut h| std::io::Write::write_all(&mut h, b"root"))
            .unwrap();
        assert_eq!(mode(&f), before, "{name}: after root's write");
        // Another user's write: the mode its own stat shows right after, and what the nodes
        // keep once the file is closed.
        let seen = then_mode_as_user("printf x >>", &f);
        assert_eq!(seen, after, "{name}: the writer's stat");
        assert_eq!(mode(&f), after, "{name}: after another user's write");
    }
    // Set again on a file this mount has seen written (the kernel's "nothing to clear" mark),
    // and a truncate by another user.
    let f = dir.join("suid-big");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4777)).unwrap();
    let seen = then_mode_as_user("printf y >>", &f);
    assert_eq!(seen, 0o777, "set-user-ID set again, then another user's write");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4777)).unwrap();
    let seen = then_mode_as_user("truncate -s 100", &f);
    assert_eq!(seen, 0o777, "another user's truncate");
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 100);

    // File capabilities (cap_net_raw, effective): the kernel drops them when another user
    // writes the file, in that user's name, and the write goes through.
    let mut caps = Vec::new();
    for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        caps.extend_from_slice(&word.to_le_bytes());
    }
    sealfs_tests::xattr_set(&f, "security.capability", &caps).unwrap();
    assert_eq!(sealfs_tests::xattr_get(&f, "security.capability"), caps);
    sh_as_user(&format!("printf z >> '{}'", f.display()));
    assert!(
        !sealfs_tests::xattr_list(&f).contains(&"security.capability".to_string()),
        "a write by another user keeps the file's capabilities"
    );
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 101);
}
