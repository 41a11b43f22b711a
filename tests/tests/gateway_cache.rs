//! The NFS gateway's attribute cache against other processes' changes: a gateway caching for five
//! minutes sees a FUSE mount's size, mode, rename and unlink as they commit (its change streams
//! drop what they touch), its own changes at once, and serves nothing while a stream is down;
//! in folders it made, it answers LOOKUPs of names nobody made without asking a node, and finds
//! the names another process makes there.
//! Its UNSTABLE writes are committed by COMMIT (or by itself once idle) under one write
//! verifier, which changes when a crash of the nodes may have lost them; a file's size grown
//! unsynced is vouched for the same way by the inode's node at the commit.
//! The gateway backend runs in these tests over a real cluster of processes; the FUSE mount is
//! another process, as a second gateway or a user's mount would be.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use nfsserve::nfs::{fattr3, nfs_fh3, nfsstat3, sattr3, set_mode3};
use nfsserve::vfs::{stable_how, Caller, NfsBackend};
use sealfs_client::SealClient;
use sealfs_core::config::{ClientConfig, GatewayConfig, SecurityConfig};
use sealfs_gateway::backend::Gateway;
use sealfs_tests::{pattern, TestCluster};
use tokio_util::sync::CancellationToken;

/// Five minutes: a change seen within the deadline below was dropped by a stream, not expired.
const LONG_CACHE_MS: u64 = 300_000;
/// How long another process's change may take to show (a bound on correctness, far below the
/// cache time, not a speed figure).
const DEADLINE: Duration = Duration::from_secs(20);

fn root() -> Caller {
    Caller {
        uid: 0,
        gid: 0,
        gids: Vec::new(),
        addr: "127.0.0.1:700".parse().unwrap(),
    }
}

/// Poll `f` until it says yes, failing after `DEADLINE`.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < DEADLINE, "{what}: not seen within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn attr(gw: &Gateway, fh: &nfs_fh3) -> Result<fattr3, nfsstat3> {
    gw.getattr(&root(), fh).await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn security(c: &TestCluster) -> SecurityConfig {
    SecurityConfig {
        secret_file: Some(c.dir.path().join("secret").to_string_lossy().into_owned()),
        ..Default::default()
    }
}

/// How the crash tests write: as root, so without the permission check; `stable` or not.
fn write_mode(stable: bool) -> sealfs_client::WriteMode {
    sealfs_client::WriteMode {
        stable,
        check_perm: false,
        known: None,
    }
}

/// Create files f0, f1, ... in the root until `pick` takes one (of 64 at most), and return
/// what it made of it.
async fn first_file_where<T>(
    client: &SealClient,
    mut pick: impl FnMut(sealfs_core::InodeId) -> Option<T>,
    what: &str,
) -> T {
    use sealfs_core::attr::FileKind;
    let cred = sealfs_core::perm::Credentials::root();
    for i in 0..64 {
        let name = format!("f{i}");
        let e = client
            .create(
                &cred,
                sealfs_core::ROOT_INO,
                name.as_bytes(),
                FileKind::Regular,
                0o644,
                0,
                true,
                libc::O_RDWR,
            )
            .await
            .unwrap();
        if let Some(t) = pick(e.attr.ino) {
            return t;
        }
    }
    panic!("no file of 64 {what}");
}

/// Kill node `victim` with SIGKILL and start it again in place (`while_down` runs in between),
/// then wait until it registered again (its word that it crashed moves the map's epoch), and so
/// listens; returns the map then.
fn crash_and_restart(
    c: &mut TestCluster,
    rt: &tokio::runtime::Runtime,
    victim: usize,
    while_down: impl FnOnce(),
) -> sealfs_core::placement::ClusterMap {
    let before = sealfs_tests::cluster_map(&c.cluster).epoch;
    c.cluster.stop_node(victim, nix::sys::signal::Signal::SIGKILL);
    while_down();
    c.cluster.start_node_in_place(victim).unwrap();
    rt.block_on(eventually("the restarted node's registration", || async {
        sealfs_tests::cluster_map(&c.cluster).epoch > before
    }));
    sealfs_tests::cluster_map(&c.cluster)
}

/// A file whose inode's primary is not its first chunk's: the chunk commit then succeeds on its
/// own, and only the inode's unsynced changes can fail it.
async fn file_with_inode_and_chunk_apart(
    client: &SealClient,
    map: &sealfs_core::placement::ClusterMap,
) -> sealfs_core::InodeId {
    let primary = |p| map.primary(p).expect("a primary").id;
    first_file_where(
        client,
        |ino| (primary(map.inode_partition(ino)) != primary(map.chunk_partition(ino, 0))).then_some(ino),
        "has its inode and first chunk on different primaries",
    )
    .await
}

/// Kill the primary of `ino`'s inode (as `map` has it) with SIGKILL and start it again in place;
/// it is back before the manager saw it down, so still the inode's primary.
fn crash_inode_primary_in_place(
    c: &mut TestCluster,
    map: &sealfs_core::placement::ClusterMap,
    ino: sealfs_core::InodeId,
) {
    let p = map.inode_partition(ino);
    let id = map.primary(p).expect("a primary").id;
    let victim = sealfs_tests::node_index(&c.cluster, map, id);
    c.cluster.stop_node(victim, nix::sys::signal::Signal::SIGKILL);
    c.cluster.start_node_in_place(victim).unwrap();
    c.cluster.wait_nodes_up(DEADLINE).unwrap();
    assert_eq!(
        sealfs_tests::cluster_map(&c.cluster).primary(p).map(|n| n.id),
        Some(id),
        "the node is back before the manager saw it down: still the inode's primary"
    );
}

/// Crash `ino`'s inode primary and restart it in place (see `crash_inode_primary_in_place`),
/// then check that the commit of `dirty` fails with EIO: the node cannot vouch for `what` it
/// took unsynced before the crash.
fn commit_fails_after_inode_crash(
    c: &mut TestCluster,
    map: &sealfs_core::placement::ClusterMap,
    rt: &tokio::runtime::Runtime,
    client: &SealClient,
    ino: sealfs_core::InodeId,
    dirty: &sealfs_client::DirtyChunks,
    what: &str,
) {
    crash_inode_primary_in_place(c, map, ino);
    let r = rt.block_on(commit_retrying(client, ino, dirty));
    assert!(
        matches!(r, Err(sealfs_core::FsError::Io(_))),
        "the commit must not vouch for {what} its node may have lost: {r:?}"
    );
}

/// Commit `dirty` of `ino`, again while the cluster answers "retry" (a restarted node not yet
/// back in the map), until `DEADLINE`.
async fn commit_retrying(
    client: &SealClient,
    ino: sealfs_core::InodeId,
    dirty: &sealfs_client::DirtyChunks,
) -> sealfs_core::FsResult<()> {
    let start = Instant::now();
    loop {
        match client.commit(ino, dirty.clone()).await {
            Err(e) if e.is_retryable() && start.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => break r,
        }
    }
}

/// A client library connected to the cluster of `c`.
async fn client(c: &TestCluster) -> SealClient {
    let cfg = ClientConfig {
        manager: c.cluster.manager_addr.clone(),
        security: security(c),
        ..Default::default()
    };
    SealClient::connect(cfg, Duration::from_secs(30)).await.unwrap()
}

/// A gateway backend over the cluster of `c`, caching attributes for `cache_ms`; with a cache,
/// once every change stream is live.
fn gateway(c: &TestCluster, rt: &tokio::runtime::Runtime, cache_ms: u64, cancel: &CancellationToken) -> Gateway {
    rt.block_on(async {
        let client = client(c).await;
        let cfg = GatewayConfig {
            manager: c.cluster.manager_addr.clone(),
            attr_cache_ms: cache_ms,
            security: security(c),
            ..Default::default()
        };
        let gw = Gateway::new(client, cfg).unwrap();
        if cache_ms > 0 {
            gw.watch(cancel.clone());
            eventually("every change stream live", || async { gw.caching() }).await;
        }
        gw
    })
}

#[test]
fn the_gateway_cache_follows_other_processes_changes() {
    let mut c = TestCluster::start(3, true);
    let mnt = c.mnt();
    std::fs::create_dir(mnt.join("d")).unwrap();
    std::fs::write(mnt.join("d/f"), b"v1").unwrap();
    std::fs::write(mnt.join("d/g"), b"gone soon").unwrap();
    std::fs::set_permissions(mnt.join("d/f"), std::fs::Permissions::from_mode(0o644)).unwrap();

    let rt = runtime();
    let cancel = CancellationToken::new();
    let gw = gateway(&c, &rt, LONG_CACHE_MS, &cancel);

    let (f, g, fa) = rt.block_on(async {
        let top = gw.mount(&root(), b"/").await.expect("mount");
        let (d, _) = gw.lookup(&root(), &top, b"d").await.unwrap();
        let (f, fa) = gw.lookup(&root(), &d, b"f").await.unwrap();
        let (g, _) = gw.lookup(&root(), &d, b"g").await.unwrap();
        assert_eq!((fa.size, fa.mode), (2, 0o644));
        let a = attr(&gw, &f).await.unwrap();
        assert!(
            gw.cached(a.fileid),
            "a getattr's reply is kept while the streams are live"
        );
        (f, g, a)
    });

    // Another process changes size and mode: the cached entry is dropped as the change commits.
    std::fs::write(mnt.join("d/f"), b"version 2").unwrap();
    std::fs::set_permissions(mnt.join("d/f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    rt.block_on(eventually("the other mount's write and chmod", || async {
        attr(&gw, &f).await.is_ok_and(|a| a.size == 9 && a.mode == 0o600)
    }));

    // A rename moves the file's ctime; an unlink makes the handle stale.
    let before = rt.block_on(attr(&gw, &f)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::rename(mnt.join("d/f"), mnt.join("d/f2")).unwrap();
    rt.block_on(eventually("the other mount's rename", || async {
        attr(&gw, &f)
            .await
            .is_ok_and(|a| (a.ctime.seconds, a.ctime.nseconds) != (before.ctime.seconds, before.ctime.nseconds))
    }));
    std::fs::remove_file(mnt.join("d/g")).unwrap();
    rt.block_on(eventually("the other mount's unlink", || async {
        attr(&gw, &g).await.is_err()
    }));

    // The gateway's own change shows at once, with no stream involved.
    rt.block_on(async {
        let s = sattr3 {
            mode: set_mode3::mode(0o640),
            ..Default::default()
        };
        gw.setattr(&root(), &f, s, None).await.unwrap();
        assert_eq!(attr(&gw, &f).await.unwrap().mode, 0o640);
    });
    assert_eq!(
        std::fs::metadata(mnt.join("d/f2")).unwrap().permissions().mode() & 0o7777,
        0o640
    );

    // In a folder the gateway made, names nobody made are answered absent without asking a
    // node; names the gateway or another process made are found.
    let own = rt.block_on(async {
        let top = gw.mount(&root(), b"/").await.unwrap();
        let own = gw.mkdir(&root(), &top, b"own", sattr3::default()).await.unwrap().handle;
        let closed = sattr3 {
            mode: set_mode3::mode(0o700),
            ..Default::default()
        };
        let shut = gw.mkdir(&root(), &top, b"shut", closed).await.unwrap().handle;
        assert!(gw.known_absent(&own, b"a") && gw.known_absent(&shut, b"a"));
        assert_eq!(
            gw.lookup(&root(), &own, b"a").await.err(),
            Some(nfsstat3::NFS3ERR_NOENT)
        );
        // Absent, but another user may not search the folder: the node says so.
        let user = Caller {
            uid: 1000,
            gid: 1000,
            ..root()
        };
        assert_eq!(gw.lookup(&user, &shut, b"a").await.err(), Some(nfsstat3::NFS3ERR_ACCES));
        let made = gw
            .create(
                &root(),
                &own,
                b"a",
                nfsserve::vfs::CreateHow::Unchecked(sattr3::default()),
            )
            .await
            .unwrap();
        assert!(!gw.known_absent(&own, b"a"));
        let (found, _) = gw.lookup(&root(), &own, b"a").await.unwrap();
        assert_eq!(found.data, made.handle.data);
        // Removed by the gateway: the name is asked for again (another client's create of it
        // may overlap), and the node says it is gone.
        gw.remove(&root(), &own, b"a").await.unwrap();
        assert!(!gw.known_absent(&own, b"a"));
        assert_eq!(
            gw.lookup(&root(), &own, b"a").await.err(),
            Some(nfsstat3::NFS3ERR_NOENT)
        );
        assert!(gw.known_absent(&own, b"b"));
        own
    });
    std::fs::write(mnt.join("own/b"), b"made elsewhere").unwrap();
    rt.block_on(eventually(
        "the other mount's create in a folder the gateway made",
        || async {
            // With the folder's attributes cached again, as a client's GETATTR would.
            attr(&gw, &own).await.is_ok() && gw.lookup(&root(), &own, b"b").await.is_ok()
        },
    ));
    assert!(!gw.known_absent(&own, b"b"));

    // READs of a chunked file with its attributes cached skip the inode, not the permission
    // check, and follow another process's overwrite.
    let big = pattern(11, 2 << 20);
    std::fs::write(mnt.join("big"), &big).unwrap();
    std::fs::set_permissions(mnt.join("big"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let user = Caller {
        uid: 1000,
        gid: 1000,
        ..root()
    };
    let bh = rt.block_on(async {
        let top = gw.mount(&root(), b"/").await.unwrap();
        // The chmod's stream event may reach the gateway after a first lookup (a stream sends
        // at most one message per 5 ms) and drop what it cached: look again until it stays.
        let deadline = Instant::now() + DEADLINE;
        let bh = loop {
            let (bh, ba) = gw.lookup(&root(), &top, b"big").await.unwrap();
            let (data, eof, _) = gw.read(&root(), &bh, 0, 1 << 20).await.unwrap();
            assert_eq!((&data[..], eof), (&big[..1 << 20], false));
            if gw.cached(ba.fileid) {
                break bh;
            }
            assert!(Instant::now() < deadline, "the gateway never kept big's attributes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (data, eof, _) = gw.read(&root(), &bh, 1 << 20, 1 << 20).await.unwrap();
        assert_eq!((&data[..], eof), (&big[1 << 20..], true));
        assert_eq!(gw.read(&user, &bh, 0, 4096).await.err(), Some(nfsstat3::NFS3ERR_ACCES));
        bh
    });
    let newer = pattern(12, 2 << 20);
    std::fs::write(mnt.join("big"), &newer).unwrap();
    rt.block_on(eventually("the other mount's overwrite", || async {
        gw.read(&root(), &bh, 4096, 4096)
            .await
            .is_ok_and(|(d, _, _)| d[..] == newer[4096..8192])
    }));

    // A node that dies breaks its stream: what was cached may have missed changes, so it goes
    // (nothing reads the file again here, so nothing puts it back).
    assert!(gw.cached(fa.fileid));
    assert!(gw.known_absent(&own, b"c"));
    c.cluster.stop_node(0, nix::sys::signal::Signal::SIGKILL);
    rt.block_on(eventually("the cache dropped once a stream broke", || async {
        !gw.cached(fa.fileid)
    }));
    assert!(
        !gw.known_absent(&own, b"c"),
        "nothing is known absent while a stream is down"
    );
    cancel.cancel();
}

/// The gateway answers LOOKUPs of names it found or made from its caches, and follows every
/// change of such a name: another process's rename over it, its unlink, the gateway's own
/// remove and rename, and a broken change stream.
#[test]
fn the_gateway_knows_the_names_it_saw_until_they_change() {
    let mut c = TestCluster::start(3, true);
    let mnt = c.mnt();
    std::fs::create_dir(mnt.join("d")).unwrap();
    std::fs::write(mnt.join("d/x"), b"x").unwrap();
    std::fs::write(mnt.join("d/y"), b"yy").unwrap();
    let rt = runtime();
    let cancel = CancellationToken::new();
    let gw = gateway(&c, &rt, LONG_CACHE_MS, &cancel);
    let ino = |p: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(mnt.join(p)).unwrap());
    let y = ino("d/y");
    let d = rt.block_on(async {
        let top = gw.mount(&root(), b"/").await.unwrap();
        let (d, _) = gw.lookup(&root(), &top, b"d").await.unwrap();
        assert!(!gw.known_name(&d, b"x"));
        let (_, xa) = gw.lookup(&root(), &d, b"x").await.unwrap();
        assert!(gw.known_name(&d, b"x"), "a LOOKUP's answer is kept");
        let (_, again) = gw.lookup(&root(), &d, b"x").await.unwrap();
        assert_eq!((again.fileid, again.size), (xa.fileid, 1));
        gw.lookup(&root(), &d, b"y").await.unwrap();
        // Only the folder's searchers are answered from the cache: the node says who may not.
        let closed = sattr3 {
            mode: set_mode3::mode(0o700),
            ..Default::default()
        };
        gw.setattr(&root(), &d, closed, None).await.unwrap();
        let user = Caller {
            uid: 1000,
            gid: 1000,
            ..root()
        };
        assert_eq!(gw.lookup(&user, &d, b"x").await.err(), Some(nfsstat3::NFS3ERR_ACCES));
        d
    });

    // Another process renames x away: its inode and the folder live on (GETATTRs cache both
    // again, so only the name's own invalidation can tell), but the name x is gone.
    let xh = rt.block_on(gw.lookup(&root(), &d, b"x")).unwrap().0;
    std::fs::rename(mnt.join("d/x"), mnt.join("d/w")).unwrap();
    rt.block_on(eventually("the other mount's rename of a known name", || async {
        attr(&gw, &d).await.is_ok()
            && attr(&gw, &xh).await.is_ok()
            && gw.lookup(&root(), &d, b"x").await.err() == Some(nfsstat3::NFS3ERR_NOENT)
    }));
    // Another process renames y over w: w names y's inode, and y nothing.
    let (wh, _) = rt.block_on(gw.lookup(&root(), &d, b"w")).unwrap();
    assert_eq!(wh.data, xh.data, "the renamed file");
    assert!(gw.known_name(&d, b"w"));
    std::fs::rename(mnt.join("d/y"), mnt.join("d/w")).unwrap();
    rt.block_on(eventually("the other mount's rename over a known name", || async {
        gw.lookup(&root(), &d, b"w").await.is_ok_and(|(_, a)| a.fileid == y)
            && gw.lookup(&root(), &d, b"y").await.err() == Some(nfsstat3::NFS3ERR_NOENT)
    }));
    assert!(gw.known_name(&d, b"w"), "looked up again");
    std::fs::remove_file(mnt.join("d/w")).unwrap();
    rt.block_on(eventually("the other mount's unlink of a known name", || async {
        gw.lookup(&root(), &d, b"w").await.err() == Some(nfsstat3::NFS3ERR_NOENT)
    }));
    assert!(!gw.known_name(&d, b"w"));

    // The gateway's own changes show at once.
    rt.block_on(async {
        let how = nfsserve::vfs::CreateHow::Unchecked(sattr3::default());
        let made = gw.create(&root(), &d, b"n", how).await.unwrap();
        assert!(gw.known_name(&d, b"n"), "a name the gateway made");
        assert_eq!(gw.lookup(&root(), &d, b"n").await.unwrap().0.data, made.handle.data);
        gw.remove(&root(), &d, b"n").await.unwrap();
        assert!(!gw.known_name(&d, b"n"));
        assert_eq!(gw.lookup(&root(), &d, b"n").await.err(), Some(nfsstat3::NFS3ERR_NOENT));
        let how = nfsserve::vfs::CreateHow::Unchecked(sattr3::default());
        let made = gw.create(&root(), &d, b"a", how).await.unwrap();
        gw.rename(&root(), &d, b"a", &d, b"b").await.unwrap();
        assert!(!gw.known_name(&d, b"a") && !gw.known_name(&d, b"b"));
        assert_eq!(gw.lookup(&root(), &d, b"a").await.err(), Some(nfsstat3::NFS3ERR_NOENT));
        assert_eq!(gw.lookup(&root(), &d, b"b").await.unwrap().0.data, made.handle.data);
        assert!(gw.known_name(&d, b"b"));
    });

    // A broken stream may have hidden a change of any name: none is known any more.
    c.cluster.stop_node(0, nix::sys::signal::Signal::SIGKILL);
    rt.block_on(eventually("the names dropped once a stream broke", || async {
        !gw.known_name(&d, b"b")
    }));
    cancel.cancel();
}

/// WRITE with UNSTABLE is answered before the data is durable, under one write verifier, and
/// COMMIT makes it durable under the same (a small file's inline data too); FILE_SYNC writes are
/// durable at once. When
/// every node restarts after a crash between a write and its COMMIT, no node can vouch for the
/// write any more (it may have been lost with the page cache), and the COMMIT answers a new
/// verifier, which makes a client send it again.
#[test]
fn unstable_writes_are_committed_and_a_crash_changes_the_verifier() {
    let mut c = TestCluster::start(3, false);
    let rt = runtime();
    let cancel = CancellationToken::new();
    let gw = gateway(&c, &rt, 0, &cancel);
    let piece = |i: u64| bytes::Bytes::from(pattern(i, 1 << 20));
    let (fh, v0) = rt.block_on(async {
        let top = gw.mount(&root(), b"/").await.unwrap();
        let how = nfsserve::vfs::CreateHow::Unchecked(sattr3::default());
        let fh = gw.create(&root(), &top, b"u", how).await.unwrap().handle;
        // 6 MiB over two chunks, unstable.
        let mut verifiers = Vec::new();
        for i in 0..6u64 {
            let w = gw
                .write(&root(), &fh, i << 20, piece(i), stable_how::UNSTABLE)
                .await
                .unwrap();
            assert_eq!((w.count, w.committed), (1 << 20, stable_how::UNSTABLE));
            verifiers.push(w.verifier);
        }
        let v0 = verifiers[0];
        assert!(verifiers.iter().all(|v| *v == v0), "one verifier for all");
        // Readable before the commit.
        let (data, _, attr) = gw.read(&root(), &fh, 3 << 20, 1 << 20).await.unwrap();
        assert_eq!(data, piece(3));
        assert_eq!(attr.unwrap().size, 6 << 20);
        let (v, attr) = gw.commit(&root(), &fh, 0, 0).await.unwrap();
        assert_eq!(v, v0, "nothing was lost");
        assert_eq!(attr.unwrap().size, 6 << 20);
        // Asked for durability: durable before the reply, same verifier.
        let w = gw
            .write(&root(), &fh, 0, piece(9), stable_how::FILE_SYNC)
            .await
            .unwrap();
        assert_eq!((w.committed, w.verifier), (stable_how::FILE_SYNC, v0));
        // A small file's data lives in its inode: unstable too, readable at once, made durable
        // by the COMMIT; durable before the reply when asked.
        let small = gw.create(&root(), &top, b"small", how).await.unwrap().handle;
        let w = gw
            .write(
                &root(),
                &small,
                0,
                bytes::Bytes::from_static(b"tiny"),
                stable_how::UNSTABLE,
            )
            .await
            .unwrap();
        assert_eq!((w.committed, w.verifier), (stable_how::UNSTABLE, v0));
        assert_eq!(&gw.read(&root(), &small, 0, 100).await.unwrap().0[..], b"tiny");
        assert_eq!(gw.unstable_files(), 1);
        assert_eq!(gw.commit(&root(), &small, 0, 0).await.unwrap().0, v0);
        assert_eq!(gw.unstable_files(), 0);
        let w = gw
            .write(
                &root(),
                &small,
                4,
                bytes::Bytes::from_static(b" more"),
                stable_how::FILE_SYNC,
            )
            .await
            .unwrap();
        assert_eq!(w.committed, stable_how::FILE_SYNC);
        assert_eq!(gw.unstable_files(), 0);
        // Writes no COMMIT covers are committed by the gateway once idle.
        let w = gw
            .write(&root(), &fh, 1 << 20, piece(8), stable_how::UNSTABLE)
            .await
            .unwrap();
        assert_eq!(w.committed, stable_how::UNSTABLE);
        assert_eq!(gw.unstable_files(), 1);
        assert_eq!(gw.commit_idle(Duration::from_secs(3600)).await, 0, "not idle yet");
        assert_eq!(gw.commit_idle(Duration::ZERO).await, 1);
        assert_eq!(gw.unstable_files(), 0);
        assert_eq!(gw.commit(&root(), &fh, 0, 0).await.unwrap().0, v0);
        // Unstable again, then no commit before the crash.
        let w = gw
            .write(&root(), &fh, 4 << 20, piece(7), stable_how::UNSTABLE)
            .await
            .unwrap();
        assert_eq!((w.committed, w.verifier), (stable_how::UNSTABLE, v0));
        (fh, v0)
    });
    for i in 0..3 {
        c.cluster.stop_node(i, nix::sys::signal::Signal::SIGKILL);
    }
    // Back on their addresses within the failure timeout: to the manager nothing changed but
    // the nodes' word that they crashed.
    for i in 0..3 {
        c.cluster.start_node_in_place(i).unwrap();
    }
    c.cluster.wait_nodes_up(DEADLINE).unwrap();
    rt.block_on(async {
        let start = Instant::now();
        let v1 = loop {
            match gw.commit(&root(), &fh, 0, 0).await {
                Ok((v, _)) => break v,
                Err(nfsstat3::NFS3ERR_JUKEBOX) if start.elapsed() < DEADLINE => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("commit after the restart: {e:?}"),
            }
        };
        assert_ne!(v1, v0, "after a crash of every node the writes cannot be vouched for");
        // The client sends the write again; from here on the new verifier holds.
        let w = gw
            .write(&root(), &fh, 4 << 20, piece(7), stable_how::UNSTABLE)
            .await
            .unwrap();
        assert_eq!(w.verifier, v1);
        assert_eq!(gw.commit(&root(), &fh, 0, 0).await.unwrap().0, v1);
        let (data, _, _) = gw.read(&root(), &fh, 4 << 20, 1 << 20).await.unwrap();
        assert_eq!(data, piece(7));
    });
    cancel.cancel();
}

/// A file's size grown without a sync (the chunks are elsewhere) is vouched for at the commit by
/// the inode's node: if that node alone crashed and came back in place before the commit, the
/// commit fails instead of calling a size durable that the crash may have lost.
#[test]
fn a_crash_of_the_inode_node_alone_fails_the_commit_of_its_unsynced_size() {
    use sealfs_client::DirtyChunks;
    use sealfs_core::perm::Credentials;
    let mut c = TestCluster::start(3, false);
    let rt = runtime();
    let client = rt.block_on(client(&c));
    let cred = Credentials::root();
    let map = sealfs_tests::wait_healthy(&c.cluster, DEADLINE);
    let ino = rt.block_on(file_with_inode_and_chunk_apart(&client, &map));
    let data = bytes::Bytes::from(pattern(1, 64 << 10));
    let unstable = write_mode(false);
    // Unstable, then committed: nothing was lost.
    let mut dirty = DirtyChunks::default();
    rt.block_on(client.write(&cred, ino, 0, data.clone(), unstable, &mut dirty))
        .unwrap();
    rt.block_on(client.commit(ino, dirty)).unwrap();
    // Unstable again (growing the file), then the inode's node crashes and is back in place.
    let mut dirty = DirtyChunks::default();
    rt.block_on(client.write(&cred, ino, 64 << 10, data.clone(), unstable, &mut dirty))
        .unwrap();
    commit_fails_after_inode_crash(&mut c, &map, &rt, &client, ino, &dirty, "a size");
    // The file as the nodes have it now is whole up to what was durable, and writable again.
    let mut dirty = DirtyChunks::default();
    rt.block_on(client.write(&cred, ino, 64 << 10, data.clone(), write_mode(true), &mut dirty))
        .unwrap();
    let attr = rt.block_on(client.getattr(&cred, ino)).unwrap().attr;
    assert_eq!(attr.size, 128 << 10);
}

/// A change of a file's attributes made while it has unsynced writes (`setattr_with_writes`,
/// as the FUSE mount sends a chmod, chown or utimes of a file being written) is visible at once
/// and made durable by the writes' commit, which vouches for it as for an unsynced size: if the
/// inode's node alone crashed and came back in place before the commit, the commit fails.
#[test]
fn an_attribute_change_left_for_the_commit_is_vouched_for_like_the_size() {
    use sealfs_client::DirtyChunks;
    use sealfs_core::attr::SetAttr;
    use sealfs_core::perm::Credentials;
    let mut c = TestCluster::start(3, false);
    let rt = runtime();
    let client = rt.block_on(client(&c));
    let cred = Credentials::root();
    let map = sealfs_tests::wait_healthy(&c.cluster, DEADLINE);
    let ino = rt.block_on(file_with_inode_and_chunk_apart(&client, &map));
    let data = bytes::Bytes::from(pattern(3, 64 << 10));
    let mut dirty = DirtyChunks::default();
    rt.block_on(client.write(&cred, ino, 0, data, write_mode(false), &mut dirty))
        .unwrap();
    rt.block_on(client.commit(ino, dirty)).unwrap();
    let mode = |perm: u32| SetAttr {
        perm: Some(perm),
        ..Default::default()
    };
    // Left unsynced, owed to the commit, and what every client reads at once.
    let mut dirty = DirtyChunks::default();
    let e = rt
        .block_on(client.setattr_with_writes(&cred, ino, &mode(0o600), &mut dirty))
        .unwrap();
    assert_eq!(e.attr.perm & 0o7777, 0o600);
    assert!(!dirty.is_empty(), "the change is owed to the commit");
    let other = rt.block_on(self::client(&c));
    assert_eq!(
        rt.block_on(other.getattr(&cred, ino)).unwrap().attr.perm & 0o7777,
        0o600
    );
    rt.block_on(client.commit(ino, dirty)).unwrap();
    // A size change is synced at once, whatever the caller holds.
    let mut dirty = DirtyChunks::default();
    let cut = SetAttr {
        size: Some(32 << 10),
        ..Default::default()
    };
    rt.block_on(client.setattr_with_writes(&cred, ino, &cut, &mut dirty))
        .unwrap();
    assert!(dirty.is_empty(), "a truncation owes nothing");
    // Owed again, then the inode's node crashes and is back in place before the commit.
    let mut dirty = DirtyChunks::default();
    rt.block_on(client.setattr_with_writes(&cred, ino, &mode(0o640), &mut dirty))
        .unwrap();
    commit_fails_after_inode_crash(&mut c, &map, &rt, &client, ino, &dirty, "a change");
}

/// A small file's data written unstable lives in its inode record unsynced until the commit,
/// which vouches for it as for an unsynced size: if the inode's node alone crashed and came back
/// in place before the commit, the commit fails. Writes sent with an attribute change
/// (`setattr_after_writes`, as the FUSE mount sends the pieces it held) are made with it, or,
/// past the inline size, not at all.
#[test]
fn a_small_files_unstable_data_is_vouched_for_like_the_size() {
    use sealfs_client::DirtyChunks;
    use sealfs_core::perm::Credentials;
    let mut c = TestCluster::start(3, false);
    let rt = runtime();
    let client = rt.block_on(client(&c));
    let cred = Credentials::root();
    let map = sealfs_tests::wait_healthy(&c.cluster, DEADLINE);
    let ino = rt.block_on(first_file_where(&client, Some, "any"));
    let data = bytes::Bytes::from(pattern(5, 20 << 10));
    // Unstable, inline, owed to the commit, and what every client reads at once.
    let mut dirty = DirtyChunks::default();
    let e = rt
        .block_on(client.write(&cred, ino, 0, data.clone(), write_mode(false), &mut dirty))
        .unwrap();
    assert!(e.layout.inline, "20 KiB stays in the inode");
    assert!(!dirty.is_empty(), "the data is owed to the commit");
    let other = rt.block_on(self::client(&c));
    assert_eq!(rt.block_on(other.read(&cred, ino, 0, 1 << 20)).unwrap(), data);
    rt.block_on(client.commit(ino, dirty)).unwrap();
    // Writes a caller held, sent with an attribute change: both made in one update, owed to
    // the commit; past the inline size, neither.
    let mode = |perm: u32| sealfs_core::attr::SetAttr {
        perm: Some(perm),
        ..Default::default()
    };
    let mut dirty = DirtyChunks::default();
    let tail = data.slice(..1000);
    let e = rt
        .block_on(client.setattr_after_writes(&cred, ino, &mode(0o600), (20 << 10, tail.clone()), Some(&mut dirty)))
        .unwrap()
        .expect("written inline");
    assert_eq!((e.attr.size, e.attr.perm & 0o7777), ((20 << 10) + 1000, 0o600));
    assert!(!dirty.is_empty(), "owed to the commit");
    assert_eq!(rt.block_on(other.read(&cred, ino, 20 << 10, 1000)).unwrap(), tail);
    let mut past = DirtyChunks::default();
    let r = rt
        .block_on(client.setattr_after_writes(&cred, ino, &mode(0o644), (60 << 10, data.clone()), Some(&mut past)))
        .unwrap();
    assert!(r.is_none(), "80 KiB does not fit inline");
    let a = rt.block_on(other.getattr(&cred, ino)).unwrap();
    assert_eq!(
        (a.attr.size, a.attr.perm & 0o7777, a.layout.inline),
        ((20 << 10) + 1000, 0o600, true)
    );
    rt.block_on(client.commit(ino, dirty)).unwrap();
    // Without anything to owe them to: made and synced at once.
    let e = rt
        .block_on(client.setattr_after_writes(&cred, ino, &mode(0o640), (0, tail.clone()), None))
        .unwrap()
        .expect("written inline");
    assert_eq!((e.attr.size, e.attr.perm & 0o7777), ((20 << 10) + 1000, 0o640));
    assert_eq!(rt.block_on(other.read(&cred, ino, 0, 1000)).unwrap(), tail);
    // Stable: nothing owed.
    let mut dirty = DirtyChunks::default();
    rt.block_on(client.write(&cred, ino, 0, data.clone(), write_mode(true), &mut dirty))
        .unwrap();
    assert!(dirty.is_empty(), "a stable write owes nothing");
    // Owed again, then the inode's node crashes and is back in place before the commit.
    let mut dirty = DirtyChunks::default();
    rt.block_on(client.write(&cred, ino, 20 << 10, data, write_mode(false), &mut dirty))
        .unwrap();
    commit_fails_after_inode_crash(&mut c, &map, &rt, &client, ino, &dirty, "data");
}

/// A backup that crashed between unstable writes and their commit may have lost them with its
/// page cache, though the primary still holds them. If it is back before the manager saw it
/// down, the commit must not count its copy as durable: it refuses the forwarded commit, the
/// primary drops it and copies the partition to it again. The power cut's loss is played by
/// emptying the backup's chunk file while it is down.
#[test]
fn a_backup_that_crashed_before_the_commit_is_filled_again_instead_of_vouched_for() {
    use sealfs_client::DirtyChunks;
    use sealfs_core::attr::FileKind;
    use sealfs_core::perm::Credentials;
    use sealfs_core::ROOT_INO;
    let mut c = TestCluster::start(3, false);
    let rt = runtime();
    let client = rt.block_on(client(&c));
    let cred = Credentials::root();
    let map = sealfs_tests::wait_healthy(&c.cluster, DEADLINE);
    let ino = rt
        .block_on(client.create(&cred, ROOT_INO, b"f", FileKind::Regular, 0o644, 0, true, libc::O_RDWR))
        .unwrap()
        .attr
        .ino;
    let p = map.chunk_partition(ino, 0);
    let replicas = map.replicas(p).expect("replicas").in_sync.clone();
    assert_eq!(replicas.len(), 3);
    let victim_id = replicas[1];
    let victim = sealfs_tests::node_index(&c.cluster, &map, victim_id);
    let chunk = c
        .cluster
        .spec
        .dir
        .join(format!("node{victim}/data/p{p:05}/{ino:016x}.0"));
    let data = bytes::Bytes::from(pattern(3, 256 << 10));
    let mut dirty = DirtyChunks::default();
    rt.block_on(client.write(&cred, ino, 0, data.clone(), write_mode(false), &mut dirty))
        .unwrap();
    assert!(std::fs::read(&chunk).unwrap() == data, "the backup took the write");
    let after = crash_and_restart(&mut c, &rt, victim, || {
        std::fs::File::create(&chunk).unwrap().sync_all().unwrap();
    });
    assert!(
        after.replicas(p).is_some_and(|r| r.in_sync.contains(&victim_id)),
        "back before the manager saw it down: still an in-sync backup"
    );
    let r = rt.block_on(commit_retrying(&client, ino, &dirty));
    r.expect("the primary holds the writes: the commit succeeds");
    let healed = sealfs_tests::wait_healthy(&c.cluster, DEADLINE);
    assert!(healed.replicas(p).is_some_and(|r| r.in_sync.contains(&victim_id)));
    let copy = std::fs::read(&chunk).unwrap();
    assert!(
        copy == data,
        "the backup holds {} bytes, not the {} committed: counted as holding what it lost",
        copy.len(),
        data.len()
    );
}

/// The metadata half of the case above: a backup of a file's inode that crashed after an
/// unstable write grew the file, and is back before the manager saw it down, must not vouch for
/// the unsynced size at the commit. It refuses the forwarded sync, the primary drops it (which
/// moves the map's epoch) and copies the partition to it again. The backup is chosen to hold
/// none of the file's data, so only the size's sync can drop it.
#[test]
fn a_backup_that_crashed_before_the_size_was_synced_is_filled_again_instead_of_vouched_for() {
    use sealfs_client::DirtyChunks;
    use sealfs_core::perm::Credentials;
    let mut c = TestCluster::start(4, false);
    let rt = runtime();
    let client = rt.block_on(client(&c));
    let cred = Credentials::root();
    let map = sealfs_tests::wait_healthy(&c.cluster, DEADLINE);
    let (ino, victim_id) = rt.block_on(first_file_where(
        &client,
        |ino| {
            let meta = &map.replicas(map.inode_partition(ino)).expect("replicas").in_sync;
            let data = &map.replicas(map.chunk_partition(ino, 0)).expect("replicas").in_sync;
            meta.iter().skip(1).find(|n| !data.contains(n)).map(|v| (ino, *v))
        },
        "has an inode backup that holds none of its data",
    ));
    let p = map.inode_partition(ino);
    let mut dirty = DirtyChunks::default();
    let data = bytes::Bytes::from(pattern(4, 256 << 10));
    rt.block_on(client.write(&cred, ino, 0, data, write_mode(false), &mut dirty))
        .unwrap();
    let victim = sealfs_tests::node_index(&c.cluster, &map, victim_id);
    let restarted = crash_and_restart(&mut c, &rt, victim, || {});
    assert!(
        restarted.replicas(p).is_some_and(|r| r.in_sync.contains(&victim_id)),
        "back before the manager saw it down: still an in-sync backup of the inode"
    );
    let r = rt.block_on(commit_retrying(&client, ino, &dirty));
    r.expect("the primary holds the size: the commit succeeds");
    // The primary reports a replica it drops before it answers, so the map moved by now.
    assert!(
        sealfs_tests::cluster_map(&c.cluster).epoch > restarted.epoch,
        "the restarted backup was counted as holding a size it may have lost"
    );
    let healed = sealfs_tests::wait_healthy(&c.cluster, DEADLINE);
    assert!(
        healed.replicas(p).is_some_and(|r| r.in_sync.contains(&victim_id)),
        "filled again"
    );
    let attr = rt.block_on(client.getattr(&cred, ino)).unwrap().attr;
    assert_eq!(attr.size, 256 << 10);
}
