//! The NFS gateway's attribute cache against other processes' changes: a gateway caching for five
//! minutes sees a FUSE mount's size, mode, rename and unlink as they commit (its change streams
//! drop what they touch), its own changes at once, and serves nothing while a stream is down;
//! in folders it made, it answers LOOKUPs of names nobody made without asking a node, and finds
//! the names another process makes there.
//! The gateway backend runs in this test over a real cluster of processes; the FUSE mount is
//! another process, as a second gateway or a user's mount would be.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use nfsserve::nfs::{fattr3, nfs_fh3, nfsstat3, sattr3, set_mode3};
use nfsserve::vfs::{Caller, NfsBackend};
use sealfs_client::SealClient;
use sealfs_core::config::{ClientConfig, GatewayConfig, SecurityConfig};
use sealfs_gateway::backend::Gateway;
use sealfs_tests::TestCluster;
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

#[test]
fn the_gateway_cache_follows_other_processes_changes() {
    let mut c = TestCluster::start(3, true);
    let mnt = c.mnt();
    std::fs::create_dir(mnt.join("d")).unwrap();
    std::fs::write(mnt.join("d/f"), b"v1").unwrap();
    std::fs::write(mnt.join("d/g"), b"gone soon").unwrap();
    std::fs::set_permissions(mnt.join("d/f"), std::fs::Permissions::from_mode(0o644)).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let security = SecurityConfig {
        secret_file: Some(c.dir.path().join("secret").to_string_lossy().into_owned()),
        ..Default::default()
    };
    let cancel = CancellationToken::new();
    let gw = rt.block_on(async {
        let client_cfg = ClientConfig {
            manager: c.cluster.manager_addr.clone(),
            security: security.clone(),
            ..Default::default()
        };
        let client = SealClient::connect(client_cfg, Duration::from_secs(30)).await.unwrap();
        let cfg = GatewayConfig {
            manager: c.cluster.manager_addr.clone(),
            attr_cache_ms: LONG_CACHE_MS,
            security,
            ..Default::default()
        };
        let gw = Gateway::new(client, cfg).unwrap();
        gw.watch(cancel.clone());
        eventually("every change stream live", || async { gw.caching() }).await;
        gw
    });

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
