//! Replication, failover and online scaling with real processes on loopback (R=3): kill -9 under
//! load, healing back to three copies, adding and draining nodes under load, a rolling restart,
//! a node cut off while another takes over, a manager restart, and a node back after it was
//! dropped being sent only what changed.

use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::sys::signal::Signal;
use sealfs_client::{DirtyChunks, SealClient, WriteMode};
use sealfs_core::attr::FileKind;
use sealfs_core::config::ClientConfig;
use sealfs_core::{Credentials, ROOT_INO};
use sealfs_tests::{cluster_map, node_id, node_index, wait_healthy, TestCluster, Writers};

const HEAL: Duration = Duration::from_secs(180);

fn report(what: &str, w: &Writers) {
    eprintln!(
        "{what}: {} files written, longest file took {} ms",
        w.progress.load(std::sync::atomic::Ordering::SeqCst),
        w.longest_ms.load(std::sync::atomic::Ordering::SeqCst)
    );
}

#[test]
fn kill_9_under_load_loses_nothing_and_heals_to_three_copies() {
    let mut c = TestCluster::start(4, true);
    let w = Writers::start(&c.mnt().join("load"), 4);
    w.advance(20);
    // The root's primary is the node whose loss hurts most.
    let map = cluster_map(&c.cluster);
    let victim = node_index(&c.cluster, &map, map.primary(0).unwrap().id);
    let killed_at = Instant::now();
    c.cluster.stop_node(victim, Signal::SIGKILL);
    w.advance(40);
    let errors = w.errors();
    assert!(errors.is_empty(), "writers saw errors through the failover: {errors:?}");
    report("kill -9", &w);
    // Nobody acts: the cluster makes new copies on the three nodes left.
    let map = wait_healthy(&c.cluster, HEAL);
    eprintln!(
        "back to 3 copies of every partition {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    let dead = map
        .nodes
        .iter()
        .find(|n| n.state == sealfs_core::NodeState::Down)
        .expect("the killed node is down")
        .id;
    assert!(map.assignment.iter().all(|r| r.in_sync.len() == 3 && !r.holds(dead)));
    w.advance(8);
    let checked = w.stop_and_verify();
    eprintln!("{checked} acknowledged files intact");
}

#[test]
fn a_new_node_takes_its_share_and_a_drained_node_ends_empty() {
    let mut c = TestCluster::start(3, true);
    let w = Writers::start(&c.mnt().join("load"), 4);
    w.advance(12);
    let new = c.cluster.add_node().unwrap();
    c.cluster.wait_nodes_up(Duration::from_secs(60)).unwrap();
    w.advance(12);
    let map = wait_healthy(&c.cluster, HEAL);
    let counts: Vec<usize> = map
        .nodes
        .iter()
        .map(|n| map.assignment.iter().filter(|r| r.in_sync.contains(&n.id)).count())
        .collect();
    let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
    assert!(
        counts.len() == 4 && (max - min) as f64 <= 0.1 * max as f64,
        "unbalanced after the join: {counts:?}"
    );
    let new_id = node_id(&c.cluster, &map, new);
    assert!(
        map.assignment.iter().filter(|r| r.in_sync.contains(&new_id)).count() > 0,
        "the new node holds copies"
    );
    assert!(w.errors().is_empty(), "errors while partitions moved: {:?}", w.errors());

    // Drain one of the original nodes: it ends with nothing and can be stopped.
    let drained = map.nodes.iter().find(|n| n.id != new_id).unwrap().id;
    sealfs_cli::cluster::block_on({
        let addr = c.cluster.manager_addr.clone();
        let sec = c.cluster.security.clone();
        async move { sealfs_cli::status::drain(&sec, &addr, drained, true).await }
    })
    .unwrap();
    w.advance(12);
    let map = wait_healthy(&c.cluster, HEAL);
    assert!(
        map.held_partitions(drained).is_empty(),
        "the drained node still holds partitions"
    );
    let idx = node_index(&c.cluster, &map, drained);
    c.cluster.stop_node(idx, Signal::SIGTERM);
    sealfs_cli::cluster::block_on({
        let addr = c.cluster.manager_addr.clone();
        let sec = c.cluster.security.clone();
        async move { sealfs_cli::status::remove_node(&sec, &addr, drained).await }
    })
    .unwrap();
    w.advance(12);
    assert!(w.errors().is_empty(), "errors during the drain: {:?}", w.errors());
    report("join and drain", &w);
    w.stop_and_verify();
}

#[test]
fn a_rolling_restart_under_load_has_no_errors() {
    let mut c = TestCluster::start(4, true);
    let w = Writers::start(&c.mnt().join("load"), 4);
    w.advance(12);
    for i in 0..4 {
        c.cluster.stop_node(i, Signal::SIGTERM);
        w.advance(4);
        c.cluster.start_node(i).unwrap();
        c.cluster.wait_nodes_up(Duration::from_secs(60)).unwrap();
        wait_healthy(&c.cluster, HEAL);
        w.advance(4);
    }
    assert!(
        w.errors().is_empty(),
        "errors during the rolling restart: {:?}",
        w.errors()
    );
    report("rolling restart", &w);
    w.stop_and_verify();
}

#[test]
fn a_manager_restart_under_load_has_no_errors() {
    let mut c = TestCluster::start(3, true);
    let w = Writers::start(&c.mnt().join("load"), 4);
    w.advance(12);
    c.cluster.stop_manager(Signal::SIGTERM);
    // The cluster works on with the map it has.
    w.advance(8);
    c.cluster.start_manager().unwrap();
    w.advance(8);
    wait_healthy(&c.cluster, HEAL);
    assert!(
        w.errors().is_empty(),
        "errors across the manager restart: {:?}",
        w.errors()
    );
    w.stop_and_verify();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_primary_cannot_make_late_writes_visible() {
    let c = TestCluster::start(3, false);
    let cfg = ClientConfig {
        manager: c.cluster.manager_addr.clone(),
        security: c.cluster.spec.security.clone(),
        ..Default::default()
    };
    let client = SealClient::connect(cfg, Duration::from_secs(30)).await.unwrap();
    let root = Credentials::root();
    let stable = WriteMode {
        stable: true,
        ..Default::default()
    };
    let f = client
        .create(&root, ROOT_INO, b"f", FileKind::Regular, 0o644, 0, true, 0)
        .await
        .unwrap();
    let ino = f.attr.ino;
    let mut d = DirtyChunks::default();
    client
        .write(&root, ino, 0, Bytes::from_static(b"version 1"), stable, &mut d)
        .await
        .unwrap();
    let map = cluster_map(&c.cluster);
    let p = sealfs_core::ids::ino_partition(ino);
    let old = map.primary(p).unwrap().clone();
    let old_idx = node_index(&c.cluster, &map, old.id);
    let old_epoch = map.epoch;
    // Cut the primary off; the manager promotes another replica.
    c.cluster.signal_node(old_idx, Signal::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(60);
    let new = loop {
        let m = cluster_map(&c.cluster);
        if let Some(n) = m.primary(p).filter(|n| n.id != old.id) {
            break n.clone();
        }
        assert!(Instant::now() < deadline, "no new primary within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    client
        .write(&root, ino, 0, Bytes::from_static(b"version 2"), stable, &mut d)
        .await
        .unwrap();
    // The old primary wakes up and gets a write from a client that still has the old map.
    c.cluster.signal_node(old_idx, Signal::SIGCONT);
    let mut nc = sealfs_client::node_client(&c.cluster.security, &old.addr, Duration::from_secs(5)).unwrap();
    // It does not serve the old data to that client either.
    let read = sealfs_proto::pb::ReadRequest {
        ctx: Some(sealfs_proto::ctx(old_epoch, &root)),
        ino,
        offset: 0,
        size: 100,
        check_perm: false,
    };
    let r = nc.read(read).await;
    assert!(r.is_err(), "the deposed primary served a read: {r:?}");
    let req = sealfs_proto::pb::WriteRequest {
        ctx: Some(sealfs_proto::ctx(old_epoch, &root)),
        ino,
        offset: 0,
        data: Bytes::from_static(b"LATE WRITE"),
        check_perm: false,
        length: 10,
        defer_sync: false,
    };
    let late = nc.write(req).await;
    assert!(late.is_err(), "the deposed primary acknowledged a late write");
    // What clients read is the acknowledged version, from the new primary.
    let back = client.read(&root, ino, 0, 100).await.unwrap();
    assert_eq!(
        &back[..],
        b"version 2",
        "read {:?} (new primary is node {})",
        String::from_utf8_lossy(&back),
        new.id
    );
    // And once the old node is back in the cluster, its copy is rebuilt, not served.
    wait_healthy(&c.cluster, HEAL);
    let back = client.read(&root, ino, 0, 100).await.unwrap();
    assert_eq!(&back[..], b"version 2");
}

/// Every chunk file (not its checksums) under a node's data folder: path within it -> bytes.
fn chunk_files(data: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for part in std::fs::read_dir(data).unwrap().flatten() {
        if !part.file_type().unwrap().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(part.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(".sum") {
                continue;
            }
            // A chunk removed while the folder is read is simply not there.
            if let Ok(bytes) = std::fs::read(f.path()) {
                out.insert(f.path().strip_prefix(data).unwrap().to_path_buf(), bytes);
            }
        }
    }
    out
}

/// The `key=value` numbers of every "replica filled" line in `log` for fills to `node`: (chunk
/// bytes of the partitions, bytes the target held already).
fn fills_to(log: &str, node: sealfs_core::NodeId) -> Vec<(u64, u64)> {
    let field = |line: &str, k: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
    };
    log.lines()
        .filter(|l| l.contains("replica filled") && field(l, "node") == Some(node))
        .map(|l| (field(l, "chunk_bytes").unwrap(), field(l, "bytes_kept").unwrap()))
        .collect()
}

#[test]
fn a_node_back_after_the_failure_timeout_is_sent_only_what_changed() {
    use rand::RngCore;
    let mut c = TestCluster::start(3, true);
    let dir = c.mnt().join("kept");
    std::fs::create_dir(&dir).unwrap();
    // Files of one and a half chunks (4 MiB each), synced by their close.
    let mut want: Vec<Vec<u8>> = Vec::new();
    for i in 0..8 {
        let mut data = vec![0u8; 6 << 20];
        rand::rng().fill_bytes(&mut data);
        std::fs::write(dir.join(format!("f{i}")), &data).unwrap();
        want.push(data);
    }
    let map = wait_healthy(&c.cluster, HEAL);
    let victim = 2;
    let victim_id = node_id(&c.cluster, &map, victim);
    c.cluster.stop_node(victim, Signal::SIGKILL);
    // Past the failure timeout: the manager drops the node from every partition.
    sealfs_tests::eventually_within("the stopped node is dropped", Duration::from_secs(60), || {
        cluster_map(&c.cluster).held_partitions(victim_id).is_empty()
    });
    // While it is away: 4 KiB rewritten in the middle of one file, one file removed, one cut
    // short, one new.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(dir.join("f0")).unwrap();
        f.write_all_at(&[0xAB; 4096], 5 << 20).unwrap();
        f.sync_all().unwrap();
        want[0][5 << 20..(5 << 20) + 4096].fill(0xAB);
    }
    std::fs::remove_file(dir.join("f1")).unwrap();
    let cut = std::fs::OpenOptions::new().write(true).open(dir.join("f2")).unwrap();
    cut.set_len(1 << 20).unwrap();
    cut.sync_all().unwrap();
    want[2].truncate(1 << 20);
    let mut new = vec![0u8; 2 << 20];
    rand::rng().fill_bytes(&mut new);
    std::fs::write(dir.join("g"), &new).unwrap();

    // While it is filled: 4 KiB writes all over f0 go on, forwarded to it, some reaching a
    // chunk before its comparison.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path, mut w) = (stop.clone(), dir.join("f0"), want[0].clone());
        std::thread::spawn(move || {
            use rand::Rng;
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let off = rand::rng().random_range(0..(6 << 20) / 4096) * 4096;
                let mut block = [0u8; 4096];
                rand::rng().fill_bytes(&mut block);
                f.write_all_at(&block, off as u64).unwrap();
                f.sync_data().unwrap();
                w[off..off + 4096].copy_from_slice(&block);
                n += 1;
            }
            (w, n)
        })
    };
    c.cluster.start_node(victim).unwrap();
    sealfs_tests::eventually_within("the node back holds every partition in sync", HEAL, || {
        let map = cluster_map(&c.cluster);
        map.assignment
            .iter()
            .all(|r| r.in_sync.contains(&victim_id) && r.filling.is_empty())
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (w0, n) = writer.join().unwrap();
    eprintln!("{n} writes to f0 while the node was filled");
    want[0] = w0;

    // What the copies cost: the files untouched while the node was away (f3..f7, 30 MiB) were
    // all found in place, and little else was sent.
    let mut fills = Vec::new();
    for i in (0..3).filter(|i| *i != victim) {
        let log = std::fs::read_to_string(c.cluster.log_path(&format!("node{i}"))).unwrap();
        fills.extend(fills_to(&log, victim_id));
    }
    let total: u64 = fills.iter().map(|f| f.0).sum();
    let kept: u64 = fills.iter().map(|f| f.1).sum();
    eprintln!(
        "{} fills to the node back: {total} chunk bytes, {kept} held already",
        fills.len()
    );
    assert!(!fills.is_empty(), "no fill to the returning node was logged");
    assert!(kept >= 30 << 20, "only {kept} bytes were found in place");
    // The new file, f0's two chunks (rewritten during the fill) and a block or so.
    assert!(total - kept <= 12 << 20, "{} bytes were sent", total - kept);

    // Its chunk files are byte for byte the others' (once the removed file's chunks are gone
    // everywhere), and the files read back as written.
    let data = |i: usize| c.dir.path().join(format!("node{i}/data"));
    sealfs_tests::eventually_within("the returning node's chunks match", Duration::from_secs(90), || {
        let (mine, theirs) = (chunk_files(&data(victim)), chunk_files(&data(0)));
        mine == theirs
    });
    for (i, w) in want.iter().enumerate().filter(|(i, _)| *i != 1) {
        let got = std::fs::read(dir.join(format!("f{i}"))).unwrap();
        assert!(got == *w, "f{i} reads back different");
    }
    assert!(!dir.join("f1").exists());
    assert_eq!(std::fs::read(dir.join("g")).unwrap(), new);
}
