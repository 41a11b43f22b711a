//! POSIX semantics through SealClient against an in-process cluster (manager and nodes as tasks,
//! real gRPC over loopback, real RocksDB): the paths every frontend shares.

use bytes::Bytes;
use sealfs_client::{DirtyChunks, SealClient, WriteMode};
use sealfs_core::attr::{FileKind, SetAttr};
use sealfs_core::{Credentials, FsError, ROOT_INO};
use sealfs_tests::{pattern, InProcessCluster};

const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;

fn root() -> Credentials {
    Credentials::root()
}

async fn write_all(c: &SealClient, ino: u64, off: u64, data: &[u8]) {
    let mut dirty = DirtyChunks::default();
    let mut pos = 0;
    while pos < data.len() {
        let n = (data.len() - pos).min(1 << 20);
        c.write(
            &root(),
            ino,
            off + pos as u64,
            Bytes::copy_from_slice(&data[pos..pos + n]),
            WriteMode::default(),
            &mut dirty,
        )
        .await
        .expect("write");
        pos += n;
    }
    c.commit(ino, dirty).await.expect("commit");
}

async fn read_all(c: &SealClient, ino: u64) -> Vec<u8> {
    let size = c.getattr(&root(), ino).await.expect("getattr").attr.size;
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let d = c.read(&root(), ino, out.len() as u64, 1 << 20).await.expect("read");
        assert!(!d.is_empty(), "short read at {}", out.len());
        out.extend_from_slice(&d);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_grow_from_inline_to_chunked() {
    let cluster = InProcessCluster::start(3, 16).await;
    let c = cluster.client().await;
    for (i, size) in [0usize, 1, 4096, 4097, 10_000, 5 << 20, (9 << 20) + 3]
        .into_iter()
        .enumerate()
    {
        let name = format!("f{i}");
        let e = c
            .create(&root(), ROOT_INO, name.as_bytes(), FileKind::Regular, 0o644, 0, true, 0)
            .await
            .unwrap();
        let data = pattern(i as u64, size);
        write_all(&c, e.attr.ino, 0, &data).await;
        let a = c.getattr(&root(), e.attr.ino).await.unwrap();
        assert_eq!(a.attr.size, size as u64, "size of a {size}-byte file");
        assert_eq!(read_all(&c, e.attr.ino).await, data, "content of a {size}-byte file");
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_cuts_and_zero_fills() {
    let cluster = InProcessCluster::start(2, 16).await;
    let c = cluster.client().await;
    let e = c
        .create(&root(), ROOT_INO, b"t", FileKind::Regular, 0o644, 0, true, 0)
        .await
        .unwrap();
    let ino = e.attr.ino;
    let data = pattern(7, 6 << 20);
    write_all(&c, ino, 0, &data).await;
    c.setattr(
        &root(),
        ino,
        &SetAttr {
            size: Some(1000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    c.setattr(
        &root(),
        ino,
        &SetAttr {
            size: Some(5 << 20),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let back = read_all(&c, ino).await;
    assert_eq!(&back[..1000], &data[..1000]);
    assert!(
        back[1000..].iter().all(|b| *b == 0),
        "bytes past a truncation read as zeros"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_spread_and_rename_across_partitions() {
    let cluster = InProcessCluster::start(3, 16).await;
    let c = cluster.client().await;
    let mut dirs = Vec::new();
    for i in 0..12 {
        dirs.push(
            c.mkdir(&root(), ROOT_INO, format!("d{i}").as_bytes(), 0o755)
                .await
                .unwrap()
                .attr
                .ino,
        );
    }
    let parts: std::collections::HashSet<_> = dirs.iter().map(|d| sealfs_core::ids::ino_partition(*d)).collect();
    assert!(parts.len() > 3, "new directories spread over partitions: {parts:?}");
    // A file moves between directories on different partitions, then a directory moves into
    // another one; nlink of parents follows.
    let f = c
        .create(&root(), dirs[0], b"file", FileKind::Regular, 0o644, 0, true, 0)
        .await
        .unwrap();
    write_all(&c, f.attr.ino, 0, b"payload").await;
    c.rename(&root(), dirs[0], b"file", dirs[1], b"moved", 0).await.unwrap();
    assert_eq!(
        c.lookup(&root(), dirs[0], b"file").await.unwrap_err(),
        FsError::NotFound
    );
    let m = c.lookup(&root(), dirs[1], b"moved").await.unwrap();
    assert_eq!(m.attr.ino, f.attr.ino);
    assert_eq!(read_all(&c, m.attr.ino).await, b"payload");
    c.rename(&root(), ROOT_INO, b"d2", dirs[3], b"sub", 0).await.unwrap();
    assert_eq!(c.getattr(&root(), dirs[3]).await.unwrap().attr.nlink, 3);
    let root_links = c.getattr(&root(), ROOT_INO).await.unwrap().attr.nlink;
    assert_eq!(root_links, 2 + 11);
    // A directory cannot move below itself.
    assert!(matches!(
        c.rename(&root(), ROOT_INO, b"d3", dirs[2], b"loop", 0).await,
        Err(FsError::Invalid(_))
    ));
    // rmdir of a non-empty directory fails, of an empty one succeeds.
    assert_eq!(c.rmdir(&root(), ROOT_INO, b"d3").await.unwrap_err(), FsError::NotEmpty);
    c.rmdir(&root(), dirs[3], b"sub").await.unwrap();
    c.rmdir(&root(), ROOT_INO, b"d3").await.unwrap();
    assert_eq!(c.getattr(&root(), dirs[3]).await.unwrap_err(), FsError::NotFound);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_flags_and_hard_links() {
    let cluster = InProcessCluster::start(2, 16).await;
    let c = cluster.client().await;
    let a = c
        .create(&root(), ROOT_INO, b"a", FileKind::Regular, 0o644, 0, true, 0)
        .await
        .unwrap();
    let d = c.mkdir(&root(), ROOT_INO, b"d", 0o755).await.unwrap();
    assert_eq!(
        c.rename(&root(), ROOT_INO, b"a", ROOT_INO, b"d", RENAME_NOREPLACE)
            .await
            .unwrap_err(),
        FsError::Exists
    );
    c.rename(&root(), ROOT_INO, b"a", ROOT_INO, b"d", RENAME_EXCHANGE)
        .await
        .unwrap();
    assert_eq!(c.lookup(&root(), ROOT_INO, b"a").await.unwrap().attr.ino, d.attr.ino);
    assert_eq!(c.lookup(&root(), ROOT_INO, b"d").await.unwrap().attr.ino, a.attr.ino);
    // Hard links in two directories; the inode lives until the last name goes.
    c.link(&root(), a.attr.ino, d.attr.ino, b"l1").await.unwrap();
    c.link(&root(), a.attr.ino, ROOT_INO, b"l2").await.unwrap();
    assert_eq!(c.getattr(&root(), a.attr.ino).await.unwrap().attr.nlink, 3);
    c.unlink(&root(), ROOT_INO, b"d").await.unwrap();
    c.unlink(&root(), d.attr.ino, b"l1").await.unwrap();
    assert_eq!(c.getattr(&root(), a.attr.ino).await.unwrap().attr.nlink, 1);
    c.unlink(&root(), ROOT_INO, b"l2").await.unwrap();
    assert_eq!(c.getattr(&root(), a.attr.ino).await.unwrap_err(), FsError::NotFound);
    cluster.stop().await;
}

/// Every change to a directory reports the directory's attributes just before and just after
/// it (what the NFS gateway sends as wcc data): `before` is what a reader saw last, `after` is
/// what the next reader sees, and a rename across partitions reports both directories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_changes_report_attributes_before_and_after() {
    let cluster = InProcessCluster::start(3, 16).await;
    let c = cluster.client().await;
    let seen = |ino| {
        let c = &c;
        async move { c.getattr(&root(), ino).await.unwrap().attr }
    };
    let d = c.mkdir(&root(), ROOT_INO, b"wcc", 0o755).await.unwrap();
    let ch = d.dir.expect("mkdir reports the parent's change");
    assert_eq!(ch.after, seen(ROOT_INO).await);
    assert_ne!(ch.before.ctime, ch.after.ctime);
    let d = d.attr.ino;
    let mut last = seen(d).await;
    let mut check = |ch: Option<sealfs_client::DirChange>, now: sealfs_core::attr::FileAttr, what: &str| {
        let ch = ch.unwrap_or_else(|| panic!("{what}: no directory change"));
        assert_eq!(ch.before, last, "{what}: before is the last state seen");
        assert_eq!(ch.after, now, "{what}: after is the state now");
        last = now;
    };
    let f = c
        .create(&root(), d, b"f", FileKind::Regular, 0o644, 0, true, 0)
        .await
        .unwrap();
    check(f.dir, seen(d).await, "create");
    let s = c.symlink(&root(), d, b"s", b"f").await.unwrap();
    check(s.dir, seen(d).await, "symlink");
    let l = c.link(&root(), f.attr.ino, d, b"l").await.unwrap();
    check(l.dir, seen(d).await, "link");
    let ch = c.rename(&root(), d, b"l", d, b"l2", 0).await.unwrap();
    check(ch.dir, seen(d).await, "rename within");
    let ch = c.unlink(&root(), d, b"l2").await.unwrap();
    check(ch.dir, seen(d).await, "unlink");
    let sub = c.mkdir(&root(), d, b"sub", 0o755).await.unwrap();
    check(sub.dir, seen(d).await, "mkdir");
    let ch = c.rmdir(&root(), d, b"sub").await.unwrap();
    check(ch.dir, seen(d).await, "rmdir");
    // Opening an existing file through a non-exclusive create changes nothing.
    let again = c
        .create(&root(), d, b"f", FileKind::Regular, 0o644, 0, false, libc::O_RDWR)
        .await
        .unwrap();
    let ch = again.dir.expect("open-by-create reports the directory");
    assert_eq!(ch.before, ch.after);
    // Across directories: the source's change always, the target's when its node is the
    // same one (otherwise None: the gateway then sends attributes after only).
    let other = c.mkdir(&root(), ROOT_INO, b"other", 0o755).await.unwrap().attr.ino;
    let other_before = seen(other).await;
    let ch = c.rename(&root(), d, b"f", other, b"f", 0).await.unwrap();
    check(ch.dir, seen(d).await, "rename out");
    if let Some(n) = ch.new_dir {
        assert_eq!(n.before, other_before);
        assert_eq!(n.after, seen(other).await);
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_is_complete_and_stable_under_creates() {
    let cluster = InProcessCluster::start(2, 16).await;
    let c = cluster.client().await;
    let d = c.mkdir(&root(), ROOT_INO, b"big", 0o755).await.unwrap().attr.ino;
    for i in 0..600 {
        c.create(
            &root(),
            d,
            format!("old{i}").as_bytes(),
            FileKind::Regular,
            0o644,
            0,
            true,
            0,
        )
        .await
        .unwrap();
    }
    let mut seen = std::collections::HashMap::new();
    let mut cookie = 0;
    let mut extra = 0;
    loop {
        let (page, eof) = c.readdir(&root(), d, cookie, 50, true).await.unwrap();
        for e in &page {
            *seen.entry(e.name.clone()).or_insert(0) += 1;
            assert!(e.attr.is_some(), "readdirplus gives attributes");
        }
        // Concurrent creates between pages must not make old entries repeat or vanish.
        for _ in 0..5 {
            c.create(
                &root(),
                d,
                format!("new{extra}").as_bytes(),
                FileKind::Regular,
                0o644,
                0,
                true,
                0,
            )
            .await
            .unwrap();
            extra += 1;
        }
        if let Some(last) = page.last() {
            cookie = last.cookie;
        }
        if eof {
            break;
        }
    }
    for i in 0..600 {
        assert_eq!(
            seen.get(format!("old{i}").as_bytes()),
            Some(&1),
            "old{i} listed exactly once"
        );
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_at_once_in_one_directory_each_get_their_own_answer() {
    // Creates that arrive together in one directory are committed together: each must still
    // get its own answer, right or wrong, and together they must leave what one at a time would.
    let cluster = InProcessCluster::start(3, 16).await;
    let c = cluster.client().await;
    let d = c.mkdir(&root(), ROOT_INO, b"shared", 0o755).await.unwrap().attr.ino;
    c.create(&root(), d, b"old", FileKind::Regular, 0o600, 0, true, 0)
        .await
        .unwrap();
    let user = Credentials {
        uid: 1000,
        gid: 1000,
        groups: vec![],
    };
    let before = c.getattr(&root(), d).await.unwrap().attr;
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..4 {
        for i in 0..32 {
            let c = c.clone();
            let name = format!("f{round}-{i}");
            tasks.spawn(async move {
                let r = c
                    .create(&root(), d, name.as_bytes(), FileKind::Regular, 0o644, 0, true, 0)
                    .await;
                ("new", name, r)
            });
        }
        for i in 0..4 {
            // The same name, exclusive, from several callers: one wins, the others see it.
            let c = c.clone();
            tasks.spawn(async move {
                let name = format!("race{round}");
                let r = c
                    .create(&root(), d, name.as_bytes(), FileKind::Regular, 0o644, 0, true, 0)
                    .await;
                ("race", format!("{name}/{i}"), r)
            });
        }
        // No write permission in the folder: refused, and the others go on.
        let (cu, uc) = (c.clone(), user.clone());
        tasks.spawn(async move {
            let r = cu.create(&uc, d, b"denied", FileKind::Regular, 0o644, 0, true, 0).await;
            ("denied", String::new(), r)
        });
        // Opening what exists through a non-exclusive create: its inode, not a new one.
        let c2 = c.clone();
        tasks.spawn(async move {
            let r = c2
                .create(&root(), d, b"old", FileKind::Regular, 0o644, 0, false, libc::O_RDWR)
                .await;
            ("open", String::new(), r)
        });
    }
    let old = c.lookup(&root(), d, b"old").await.unwrap().attr.ino;
    let mut inos = std::collections::HashSet::new();
    let mut raced = std::collections::HashMap::<String, (usize, usize)>::new();
    while let Some(done) = tasks.join_next().await {
        let (what, name, r) = done.unwrap();
        match what {
            "new" => {
                let e = r.unwrap_or_else(|e| panic!("create {name}: {e}"));
                assert!(inos.insert(e.attr.ino), "{name}: inode {} handed out twice", e.attr.ino);
                let ch = e.dir.expect("a create reports its directory's change");
                assert!(ch.after.mtime >= ch.before.mtime, "{name}: the folder's time went back");
            }
            "race" => {
                let slot = raced.entry(name.split('/').next().unwrap().to_string()).or_default();
                match r {
                    Ok(e) => {
                        assert!(inos.insert(e.attr.ino), "{name}: inode handed out twice");
                        slot.0 += 1;
                    }
                    Err(FsError::Exists) => slot.1 += 1,
                    Err(e) => panic!("{name}: {e}"),
                }
            }
            "denied" => assert_eq!(r.err(), Some(FsError::Access)),
            _ => assert_eq!(r.unwrap().attr.ino, old),
        }
    }
    assert_eq!(raced.len(), 4);
    for (name, (won, lost)) in raced {
        assert_eq!((won, lost), (1, 3), "{name}: one exclusive create wins");
    }
    let mut listed = std::collections::HashSet::new();
    let mut cookie = 0;
    loop {
        let (page, eof) = c.readdir(&root(), d, cookie, 100, false).await.unwrap();
        for e in &page {
            listed.insert(String::from_utf8(e.name.clone()).unwrap());
        }
        match page.last() {
            Some(last) if !eof => cookie = last.cookie,
            _ => break,
        }
    }
    listed.retain(|n| n != "." && n != "..");
    assert_eq!(listed.len(), 4 * 32 + 4 + 1, "every new name listed once, and old");
    assert!(!listed.contains("denied"));
    let after = c.getattr(&root(), d).await.unwrap().attr;
    assert!(after.mtime > before.mtime);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_sizes_are_refused() {
    let cluster = InProcessCluster::start(1, 16).await;
    let c = cluster.client().await;
    let long = vec![b'x'; 256];
    assert_eq!(
        c.create(&root(), ROOT_INO, &long, FileKind::Regular, 0o644, 0, true, 0)
            .await
            .unwrap_err(),
        FsError::NameTooLong
    );
    assert_eq!(
        c.mkdir(&root(), ROOT_INO, &long, 0o755).await.unwrap_err(),
        FsError::NameTooLong
    );
    assert_eq!(
        c.lookup(&root(), ROOT_INO, &long).await.unwrap_err(),
        FsError::NameTooLong
    );
    assert!(c
        .create(&root(), ROOT_INO, b"a/b", FileKind::Regular, 0o644, 0, true, 0)
        .await
        .is_err());
    let f = c
        .create(&root(), ROOT_INO, b"f", FileKind::Regular, 0o644, 0, true, 0)
        .await
        .unwrap();
    let mut dirty = DirtyChunks::default();
    let max = sealfs_core::config::MAX_FILE_SIZE;
    let r = c
        .write(
            &root(),
            f.attr.ino,
            max,
            Bytes::from_static(b"x"),
            WriteMode {
                stable: true,
                ..Default::default()
            },
            &mut dirty,
        )
        .await;
    assert_eq!(r.unwrap_err(), FsError::FileTooBig);
    let r = c
        .setattr(
            &root(),
            f.attr.ino,
            &SetAttr {
                size: Some(max + 1),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(r.unwrap_err(), FsError::FileTooBig);
    // A forged inode id (a partition the cluster does not have) is a stale handle, not a panic.
    assert_eq!(c.getattr(&root(), u64::MAX).await.unwrap_err(), FsError::Stale);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xattrs_of_one_inode_are_bounded() {
    use sealfs_core::config::{MAX_XATTR_COUNT, MAX_XATTR_TOTAL, MAX_XATTR_VALUE};
    let cluster = InProcessCluster::start(1, 4).await;
    let c = cluster.client().await;
    let root = Credentials::root();
    let f = c
        .create(&root, ROOT_INO, b"x", FileKind::Regular, 0o644, 0, true, 0)
        .await
        .unwrap();
    let ino = f.attr.ino;
    // Big values: the total runs out before the count.
    let big = vec![7u8; MAX_XATTR_VALUE];
    let mut stored = 0;
    let err = loop {
        match c
            .setxattr(&root, ino, format!("user.big{stored}").as_bytes(), &big, 0)
            .await
        {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
        assert!(
            stored <= MAX_XATTR_TOTAL / MAX_XATTR_VALUE,
            "the total limit did not hold"
        );
    };
    assert_eq!(err.to_errno(), libc::ENOSPC, "{err}");
    assert_eq!(stored, MAX_XATTR_TOTAL / MAX_XATTR_VALUE - 1);
    // Replacing a value with one of the same size still fits; removing makes room.
    c.setxattr(&root, ino, b"user.big0", &big, 2).await.unwrap();
    for i in 0..stored {
        c.removexattr(&root, ino, format!("user.big{i}").as_bytes())
            .await
            .unwrap();
    }
    // Small values: the count runs out.
    for i in 0..MAX_XATTR_COUNT {
        c.setxattr(&root, ino, format!("user.s{i}").as_bytes(), b"v", 0)
            .await
            .unwrap();
    }
    let err = c.setxattr(&root, ino, b"user.one-more", b"v", 0).await.unwrap_err();
    assert_eq!(err.to_errno(), libc::ENOSPC, "{err}");
    // What is there is intact.
    assert_eq!(&c.getxattr(&root, ino, b"user.s7").await.unwrap()[..], b"v");
    cluster.stop().await;
}

/// Chunk and checksum files of `ino` on every node of `cluster`.
fn chunk_files(cluster: &InProcessCluster, ino: u64) -> Vec<std::path::PathBuf> {
    // Named as chunks.rs names them: `<data-dir>/p<partition>/<ino as 16 hex digits>.<index>`.
    let prefix = format!("{ino:016x}.");
    let mut out = Vec::new();
    for node in std::fs::read_dir(cluster.dir.path()).expect("cluster dir").flatten() {
        let Ok(parts) = std::fs::read_dir(node.path().join("data")) else {
            continue;
        };
        for part in parts.flatten().filter(|p| p.path().is_dir()) {
            for f in std::fs::read_dir(part.path()).expect("partition dir").flatten() {
                if f.file_name().to_string_lossy().starts_with(&prefix) {
                    out.push(f.path());
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlinked_files_chunks_are_removed_right_away() {
    let cluster = InProcessCluster::start(3, 16).await;
    let c = cluster.client().await;
    let e = c
        .create(&root(), ROOT_INO, b"big", FileKind::Regular, 0o644, 0, true, 0)
        .await
        .unwrap();
    let ino = e.attr.ino;
    write_all(&c, ino, 0, &pattern(7, 9 << 20)).await;
    assert!(!chunk_files(&cluster, ino).is_empty(), "the file has no chunk files");
    // Another unlink first, of a file with no chunks: it gives the clean-up worker nothing to
    // do, and must not keep it from the one that does.
    c.create(&root(), ROOT_INO, b"small", FileKind::Regular, 0o644, 0, true, 0)
        .await
        .unwrap();
    c.unlink(&root(), ROOT_INO, b"small").await.unwrap();
    c.unlink(&root(), ROOT_INO, b"big").await.unwrap();
    // The worker also sweeps every 30 s on its own; an unlink that records a removal wakes it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut left = chunk_files(&cluster, ino);
    while !left.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        left = chunk_files(&cluster, ino);
    }
    assert!(
        left.is_empty(),
        "15 s after the unlink these chunk files remain: {left:?}"
    );
    cluster.stop().await;
}

/// Many small unstable writes to one chunk at once queue behind each other and go to the node
/// several to a call: every byte lands where it was written, on every replica alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_writes_at_once_to_one_chunk_land_on_every_replica() {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    let cluster = InProcessCluster::start(3, 16).await;
    let c = cluster.client().await;
    let e = c
        .create(&root(), ROOT_INO, b"burst", FileKind::Regular, 0o644, 0, true, 0)
        .await
        .unwrap();
    let ino = e.attr.ino;
    // Chunked (past the inline size) and 1 MiB long.
    let mut model = pattern(1, 1 << 20);
    write_all(&c, ino, 0, &model).await;
    // 4 KiB blocks in random order, and odd-sized writes between them, all at once: none
    // overlap, so the outcome does not depend on which lands first.
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut blocks: Vec<u64> = (0..200).map(|b| b * 5 * 1024).collect();
    blocks.shuffle(&mut rng);
    let mut writes = Vec::new();
    for (i, off) in blocks.into_iter().enumerate() {
        let len = if i % 3 == 0 { rng.random_range(1..1024) } else { 4096 };
        let data = pattern(i as u64 + 2, len);
        model[off as usize..off as usize + len].copy_from_slice(&data);
        writes.push((off, data));
    }
    let dirty = futures::future::join_all(writes.into_iter().map(|(off, data)| {
        let c = c.clone();
        async move {
            let mut dirty = DirtyChunks::default();
            c.write(&root(), ino, off, Bytes::from(data), WriteMode::default(), &mut dirty)
                .await
                .expect("write");
            dirty
        }
    }))
    .await;
    let mut all = DirtyChunks::default();
    for d in dirty {
        all.merge(d);
    }
    c.commit(ino, all).await.expect("commit");
    assert_eq!(read_all(&c, ino).await, model);
    // Each replica's own copy of the chunk.
    let map = c.router().map();
    let p = map.chunk_partition(ino, 0);
    let holders = &map.replicas(p).unwrap().in_sync;
    assert_eq!(holders.len(), 3);
    for id in holders {
        let addr = &map.node(*id).unwrap().addr;
        let mut n = sealfs_client::node_client(&cluster.security(), addr, std::time::Duration::from_secs(10)).unwrap();
        let req = sealfs_proto::pb::ReadChunkRequest {
            ctx: Some(sealfs_proto::ctx(map.epoch, &root())),
            chunk: Some(sealfs_proto::pb::ChunkId { ino, index: 0 }),
            offset: 0,
            size: 2 << 20,
            from_replica: true,
        };
        let (_, mut msg, mut ext) = n.read_chunk(req).await.unwrap().into_parts();
        sealfs_proto::attach::take_into(&mut ext, &mut msg.data);
        assert!(msg.data[..] == model[..], "node {id}'s copy differs");
    }
    cluster.stop().await;
}
