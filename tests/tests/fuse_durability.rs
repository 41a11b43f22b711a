//! Durability through the FUSE mount of a cluster of separate processes: a whole-cluster restart
//! keeps every object and attribute, and `kill -9` of a storage node loses nothing that a writer
//! had fsync'd, while the mount keeps answering.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{chown, mkfifo, Gid, Uid};
use sealfs_tests::{pattern, snapshot, xattr_set, TestCluster};

fn set_times(p: &Path, atime: i64, mtime: i64) {
    utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &TimeSpec::new(atime, 123_456_789),
        &TimeSpec::new(mtime, 987_654_321),
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// A tree with every kind of object and attribute sealfs stores.
fn build_tree(root: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for d in ["a", "a/b", "a/b/c", "d", "e", "sticky", "sgid"] {
        fs::create_dir(root.join(d)).unwrap();
        all.push(root.join(d));
    }
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(root.join("sgid"), fs::Permissions::from_mode(0o2775)).unwrap();
    chown(&root.join("sgid"), Some(Uid::from_raw(1000)), Some(Gid::from_raw(2000))).unwrap();
    for (i, size) in [0usize, 1, 100, 4096, 4097, 70_000, (5 << 20) + 17]
        .into_iter()
        .enumerate()
    {
        let dir = ["a", "a/b", "a/b/c", "d", "e", "sticky", "sgid"][i];
        let p = root.join(dir).join(format!("file{i}"));
        fs::write(&p, pattern(i as u64, size)).unwrap();
        all.push(p);
    }
    let f = root.join("a/b/file1");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o4755)).unwrap();
    chown(&f, Some(Uid::from_raw(1234)), Some(Gid::from_raw(5678))).unwrap();
    fs::set_permissions(root.join("d/file3"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::hard_link(root.join("a/file0"), root.join("e/hardlink")).unwrap();
    fs::hard_link(root.join("a/b/c/file2"), root.join("d/hardlink2")).unwrap();
    symlink("b/c/file2", root.join("a/rel-link")).unwrap();
    symlink("/no/such/target", root.join("dangling")).unwrap();
    mkfifo(&root.join("e/fifo"), Mode::from_bits_truncate(0o640)).unwrap();
    mknod(
        &root.join("e/dev"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    xattr_set(&root.join("a/file0"), "user.color", b"blue").unwrap();
    xattr_set(&root.join("a/b"), "user.big", &pattern(9, 3000)).unwrap();
    xattr_set(&root.join("d/file3"), "trusted.secret", b"\x00\x01binary").unwrap();
    // Times last: every change above moved them.
    for (i, p) in all.iter().enumerate() {
        set_times(p, 1_000_000_000 + i as i64, 1_500_000_000 + i as i64);
    }
    // As tar extracts a file: written, then its times, owner and mode set through the open
    // descriptor before the close (changes the mount leaves for the close to make durable).
    let p = root.join("d/extracted");
    let mut f = fs::File::create_new(&p).unwrap();
    std::io::Write::write_all(&mut f, &pattern(11, 70_000)).unwrap();
    nix::sys::stat::futimens(&f, &TimeSpec::new(1_100_000_000, 5), &TimeSpec::new(1_200_000_000, 7)).unwrap();
    nix::unistd::fchown(&f, Some(Uid::from_raw(4321)), Some(Gid::from_raw(8765))).unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o640)).unwrap();
    drop(f);
    all.push(p);
    all
}

#[test]
fn whole_cluster_restart_keeps_everything() {
    let mut c = TestCluster::start(3, true);
    let mnt = c.mnt();
    let tree = mnt.join("tree");
    fs::create_dir(&tree).unwrap();
    build_tree(&tree);
    let before = snapshot(&tree);
    assert!(before.len() > 20, "the tree has {} objects", before.len());
    c.cluster.stop_all();
    assert!(!sealfs_cli::cluster::is_fuse_mounted(&mnt), "stop_all unmounts");
    c.cluster.start_all().unwrap();
    let after = snapshot(&tree);
    for (path, snap) in &before {
        assert_eq!(
            Some(snap),
            after.get(path),
            "{} changed across the restart",
            path.display()
        );
    }
    assert_eq!(before.len(), after.len(), "objects appeared across the restart");
    // And the restarted cluster takes writes.
    fs::write(tree.join("new"), b"after restart").unwrap();
    assert_eq!(fs::read(tree.join("new")).unwrap(), b"after restart");
}

/// Bytes of file `i` of the writer.
fn content(i: u64) -> Vec<u8> {
    let size = match i % 4 {
        0 => 700,
        1 => 9_000,
        2 => 300_000,
        _ => (4 << 20) + 4321,
    };
    pattern(1000 + i, size)
}

fn write_fsync(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    for piece in data.chunks(1 << 20) {
        f.write_all(piece)?;
    }
    f.sync_all()?;
    Ok(())
}

#[test]
fn kill_9_of_a_node_loses_no_fsynced_file() {
    let mut c = TestCluster::start(3, true);
    // The victim must not hold the root or the writer's directory (without replication nothing
    // under a lost directory can be reached); it does hold chunks of the files written.
    let map = c.cluster.fetch_map().unwrap();
    let owner = |ino: u64| {
        map.primary(sealfs_core::ids::ino_partition(ino))
            .map(|n| n.addr.clone())
            .unwrap()
    };
    let root_owner = owner(sealfs_core::ROOT_INO);
    let dir = (0..64)
        .map(|i| {
            let d = c.mnt().join(format!("writer{i}"));
            fs::create_dir(&d).unwrap();
            d
        })
        .find(|d| owner(std::os::unix::fs::MetadataExt::ino(&fs::metadata(d).unwrap())) == root_owner)
        .expect("some directory lands on the root's node");
    let victim = (0..3)
        .find(|i| c.cluster.node_addr(*i).as_deref() != Some(root_owner.as_str()))
        .unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (dir, acked, failed, progress, stop) = (
            dir.clone(),
            acked.clone(),
            failed.clone(),
            progress.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                match write_fsync(&dir.join(format!("f{i}")), &content(i)) {
                    Ok(()) => acked.lock().unwrap().push(i),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
                i += 1;
                progress.store(i, Ordering::SeqCst);
            }
        })
    };
    // Waits for the writer to get `n` files further, failing if it stops moving: a hung mount.
    let advance = |n: u64| {
        let start = progress.load(Ordering::SeqCst);
        let mut last = (start, Instant::now());
        while progress.load(Ordering::SeqCst) < start + n {
            let now = progress.load(Ordering::SeqCst);
            if now != last.0 {
                last = (now, Instant::now());
            }
            assert!(
                last.1.elapsed() < Duration::from_secs(90),
                "the writer made no progress for 90 s: the mount hangs"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    advance(12);
    c.cluster.stop_node(victim, Signal::SIGKILL);
    // With the node down, files on its partitions fail and the others go on.
    advance(8);
    let root_still_answers = fs::metadata(c.mnt()).is_ok();
    c.cluster.start_node(victim).unwrap();
    c.cluster.wait_nodes_up(Duration::from_secs(60)).unwrap();
    let acked_before_restart = acked.lock().unwrap().len();
    advance(12);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(root_still_answers, "the mount answered while a node was down");
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > acked_before_restart,
        "files were acknowledged again after the node came back"
    );
    let mut checked = 0;
    for i in &acked {
        let mut back = Vec::new();
        File::open(dir.join(format!("f{i}")))
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(
            back == content(*i),
            "f{i} was fsync'd but reads back different ({} bytes)",
            back.len()
        );
        checked += 1;
    }
    eprintln!(
        "{checked} fsync'd files intact; {} writes failed while the node was down",
        failed.load(Ordering::SeqCst)
    );
}

/// The node whose partition holds `ino`.
fn node_of(c: &TestCluster, ino: u64) -> usize {
    let map = c.cluster.fetch_map().unwrap();
    let owner = map.primary(sealfs_core::ids::ino_partition(ino)).unwrap().addr.clone();
    (0..c.cluster.spec.nodes)
        .find(|i| c.cluster.node_addr(*i).as_deref() == Some(owner.as_str()))
        .unwrap()
}

fn ino(p: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap())
}

/// A 3-node cluster with a FUSE mount whose nodes read crash points from the returned file
/// (empty: none yet).
fn cluster_with_failpoints() -> (TestCluster, tempfile::NamedTempFile) {
    let points = tempfile::NamedTempFile::new().unwrap();
    let points_path = points.path().to_string_lossy().into_owned();
    let c = TestCluster::start_with(3, true, |spec| {
        spec.env.push(("SEALFS_FAILPOINTS_FILE".into(), points_path));
    });
    (c, points)
}

/// Make folders at the mount's root until two sit on two different nodes, neither the root's
/// (which must stay up); returns them with their nodes.
fn two_dirs_on_other_nodes(c: &TestCluster) -> [(PathBuf, usize); 2] {
    let mnt = c.mnt();
    let root_node = node_of(c, sealfs_core::ROOT_INO);
    let mut dirs = Vec::new();
    for i in 0..64 {
        let d = mnt.join(format!("d{i}"));
        fs::create_dir(&d).unwrap();
        let n = node_of(c, ino(&d));
        if n != root_node && dirs.iter().all(|(_, m)| *m != n) {
            dirs.push((d, n));
        }
        if dirs.len() == 2 {
            break;
        }
    }
    <[_; 2]>::try_from(dirs).expect("two directories on two other nodes")
}

/// Arm crash point `point`, run `op` through the mount while `node` aborts at it, then disarm it,
/// start the node again and wait for the cluster. `op`'s own result is not looked at: its node
/// died under it.
fn crash_at(
    c: &mut TestCluster,
    points: &Path,
    point: &str,
    node: usize,
    op: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) {
    fs::write(points, format!("{point}\n")).unwrap();
    let running = std::thread::spawn(op);
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.cluster.node_running(node) {
        assert!(Instant::now() < deadline, "the failpoint did not fire");
        std::thread::sleep(Duration::from_millis(50));
    }
    fs::write(points, "").unwrap();
    c.cluster.start_node(node).unwrap();
    c.cluster.wait_nodes_up(Duration::from_secs(60)).unwrap();
    let _ = running.join().unwrap();
}

/// `node`'s log shows it aborted at `point` and replayed the intent it left.
fn assert_crashed_and_replayed(c: &TestCluster, node: usize, point: &str) {
    let log = fs::read_to_string(c.cluster.log_path(&format!("node{node}"))).unwrap();
    assert!(
        log.contains(&format!("failpoint {point}")),
        "the node did not crash at the failpoint"
    );
    assert!(
        log.contains("replaying intents left by a crash"),
        "the node did not replay the intent"
    );
}

#[test]
fn a_crash_in_the_middle_of_cross_partition_operations_is_recovered() {
    let (mut c, points) = cluster_with_failpoints();
    let [(src_dir, src_node), (dst_dir, _)] = two_dirs_on_other_nodes(&c);
    fs::write(src_dir.join("file"), b"moved intact").unwrap();
    let file_ino = ino(&src_dir.join("file"));

    // The source directory's node coordinates the rename and dies right after the first step
    // (the new entry exists, the old one too). The file system must end with the rename done
    // exactly once.
    let (a, b) = (src_dir.join("file"), dst_dir.join("file"));
    crash_at(&mut c, points.path(), "intent-after-step-0", src_node, move || {
        fs::rename(a, b)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let old = fs::symlink_metadata(src_dir.join("file"));
        let new = fs::symlink_metadata(dst_dir.join("file"));
        match (old, new) {
            (Err(o), Ok(n)) if o.raw_os_error() == Some(libc::ENOENT) => {
                assert_eq!(std::os::unix::fs::MetadataExt::ino(&n), file_ino);
                assert_eq!(std::os::unix::fs::MetadataExt::nlink(&n), 1);
                break;
            }
            state => {
                assert!(Instant::now() < deadline, "rename not recovered: {state:?}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    assert_eq!(fs::read(dst_dir.join("file")).unwrap(), b"moved intact");
    let names: Vec<_> = fs::read_dir(&src_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(names.is_empty(), "the source directory still lists {names:?}");
    fs::remove_dir(&src_dir).unwrap();
    assert_crashed_and_replayed(&c, src_node, "intent-after-step-0");
}

#[test]
fn an_answered_cross_partition_operation_left_unfinished_by_a_crash_is_applied_once() {
    let (mut c, points) = cluster_with_failpoints();
    let [(src_dir, _), (dst_dir, dst_node)] = two_dirs_on_other_nodes(&c);
    fs::write(src_dir.join("file"), b"linked once").unwrap();
    let file_ino = ino(&src_dir.join("file"));

    // The link is coordinated by the new name's node (the file's count goes up on the other):
    // it answers once both steps are applied, then dies before its intent is deleted. Started
    // again, it replays the intent, whose steps must find their markers and not apply again.
    // The caller may have had its answer or an error (a retry finds the name taken); either way
    // the link must exist once. (The failpoint names the first step, so the mkdirs above,
    // finishing meanwhile, pass it.)
    let point = "intent-before-finish-adjust-inode";
    let (a, b) = (src_dir.join("file"), dst_dir.join("link"));
    crash_at(&mut c, points.path(), point, dst_node, move || fs::hard_link(a, b));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match fs::symlink_metadata(dst_dir.join("link")) {
            Ok(m) => {
                assert_eq!(std::os::unix::fs::MetadataExt::ino(&m), file_ino);
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "link not recovered: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    // A third name's reply carries the count as the file's node holds it: 3, not 4 (a replayed
    // step applied twice would have counted the second name twice).
    fs::hard_link(src_dir.join("file"), dst_dir.join("third")).unwrap();
    let m = fs::symlink_metadata(dst_dir.join("third")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::nlink(&m), 3);
    assert_eq!(fs::read(dst_dir.join("link")).unwrap(), b"linked once");
    assert_crashed_and_replayed(&c, dst_node, point);
}
