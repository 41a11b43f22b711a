//! Two FUSE mounts of one cluster, each letting its kernel cache entries and attributes for five
//! minutes while its change streams are live: each sees the other's changes (size, mode, rename,
//! unlink, rmdir) as they commit, not when a cache time runs out; and a node they watch still stops
//! cleanly. Also the page cache a mount fills around small reads (`read_around_kb`): right bytes,
//! none while the file is open for writing here, kept right across another mount's change and a
//! cut, and never an older version after an open, with reads around going on throughout.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sealfs_tests::TestCluster;

/// Five minutes: a change seen within the deadline below was invalidated, not expired.
const LONG_TTL_MS: &str = "300000";
/// How long a change may take to show on the other mount (a bound on correctness, far below
/// the cache time, not a speed figure).
const DEADLINE: Duration = Duration::from_secs(20);

struct SecondMount {
    child: Child,
    mnt: PathBuf,
}

impl SecondMount {
    fn start(c: &TestCluster, mnt: &Path, log: &Path) -> SecondMount {
        std::fs::create_dir_all(mnt).unwrap();
        let bin = c.cluster.spec.bin_dir.join("sealfs-fuse");
        let child = Command::new(bin)
            .arg("--manager")
            .arg(&c.cluster.manager_addr)
            .arg("--secret-file")
            .arg(c.dir.path().join("secret"))
            .arg("--watched-ttl-ms")
            .arg(LONG_TTL_MS)
            .arg(mnt)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start a second sealfs-fuse");
        let m = SecondMount {
            child,
            mnt: mnt.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sealfs_cli::cluster::is_fuse_mounted(mnt) {
            assert!(Instant::now() < deadline, "second mount did not appear");
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }
}

impl Drop for SecondMount {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        if sealfs_cli::cluster::is_fuse_mounted(&self.mnt) {
            let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Wait until a mount's log says its change streams are live (so it caches for long).
fn wait_live(log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("change streams live") {
            return;
        }
        assert!(Instant::now() < deadline, "change streams never went live:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until `ok()` holds, failing with `what` past the deadline.
fn eventually(what: &str, ok: impl FnMut() -> bool) {
    sealfs_tests::eventually_within(what, DEADLINE, ok);
}

fn meta(p: &Path) -> Option<(u64, u32)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.len(), m.mode() & 0o7777))
}

#[test]
fn two_mounts_see_each_others_changes_despite_long_caching() {
    let c = TestCluster::start_with(3, true, |s| {
        s.fuse_args = vec!["--watched-ttl-ms".into(), LONG_TTL_MS.into()];
    });
    let a = c.mnt();
    let b_log = c.dir.path().join("logs/fuse-b.log");
    let b_mount = SecondMount::start(&c, &c.dir.path().join("mnt-b"), &b_log);
    let b = b_mount.mnt.clone();
    wait_live(&c.dir.path().join("logs/fuse.log"));
    wait_live(&b_log);

    // B caches f's attributes and entry; A changes its size and mode.
    std::fs::write(a.join("f"), b"one").unwrap();
    assert_eq!(std::fs::read(b.join("f")).unwrap(), b"one");
    assert_eq!(meta(&b.join("f")).map(|m| m.0), Some(3));
    std::fs::write(a.join("f"), b"one two three").unwrap();
    std::fs::set_permissions(a.join("f"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    eventually("size and mode change", || meta(&b.join("f")) == Some((13, 0o600)));
    // Close-to-open: B opens it again and reads the new bytes.
    assert_eq!(std::fs::read(b.join("f")).unwrap(), b"one two three");

    // A renames it: B's cached name goes, the new one appears.
    std::fs::rename(a.join("f"), a.join("g")).unwrap();
    eventually("rename", || {
        meta(&b.join("f")).is_none() && meta(&b.join("g")).is_some()
    });

    // B makes a folder with a file; A caches both; B removes them.
    std::fs::create_dir(b.join("d")).unwrap();
    std::fs::write(b.join("d/x"), b"x").unwrap();
    assert_eq!(meta(&a.join("d/x")).map(|m| m.0), Some(1));
    assert!(a.join("d").is_dir());
    std::fs::remove_file(b.join("d/x")).unwrap();
    eventually("unlink", || meta(&a.join("d/x")).is_none());
    std::fs::remove_dir(b.join("d")).unwrap();
    eventually("rmdir", || meta(&a.join("d")).is_none());

    // A makes a folder, so it answers lookups of names it never made there by itself; a name B
    // makes in it shows on A all the same, and so do A's own.
    std::fs::create_dir(a.join("k")).unwrap();
    assert!(meta(&a.join("k/new")).is_none());
    std::fs::write(b.join("k/new"), b"from b").unwrap();
    eventually("a name another mount made in a folder this one made", || {
        meta(&a.join("k/new")).map(|m| m.0) == Some(6)
    });
    std::fs::write(a.join("k/mine"), b"m").unwrap();
    std::fs::rename(a.join("k/mine"), a.join("k/moved")).unwrap();
    assert!(meta(&a.join("k/mine")).is_none());
    assert_eq!(meta(&a.join("k/moved")).map(|m| m.0), Some(1));
    eventually("a name made in a folder the other mount made", || {
        meta(&b.join("k/moved")).is_some()
    });
    for n in ["new", "moved"] {
        std::fs::remove_file(a.join("k").join(n)).unwrap();
    }
    std::fs::remove_dir(a.join("k")).unwrap();

    // B removes g, which A holds in its cache.
    assert!(meta(&a.join("g")).is_some());
    std::fs::remove_file(b.join("g")).unwrap();
    eventually("unlink of a renamed file", || meta(&a.join("g")).is_none());

    // A's own changes never wait on anything: it sees them at once.
    std::fs::write(a.join("h"), b"h").unwrap();
    assert_eq!(meta(&a.join("h")).map(|m| m.0), Some(1));
    // ...including the ones that reach an inode through a name (link counts), which the kernel
    // asks the mount about and the mount answers from its own cache.
    own_changes_show_at_once(&a);
    extracted_file_shows_its_attributes(&a, &b);
    // And B, which holds h's attributes in its own cache now, sees A's later changes to it.
    assert_eq!(meta(&b.join("h")).map(|m| m.0), Some(1));
    std::fs::OpenOptions::new()
        .append(true)
        .open(a.join("h"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"hh"))
        .unwrap();
    eventually("append on the other mount", || {
        meta(&b.join("h")).map(|m| m.0) == Some(3)
    });

    // A node with both mounts watching it still stops cleanly on SIGTERM (its server waits for
    // streams to end, so it must end them), rather than being killed after the grace period.
    let mut c = c;
    let clean = c.dir.path().join("node0/data/CLEAN");
    assert!(!clean.exists());
    c.cluster.stop_node(0, nix::sys::signal::Signal::SIGTERM);
    assert!(
        clean.exists(),
        "node 0 did not stop cleanly on SIGTERM while mounts watched it"
    );
    drop(b_mount);
}

/// A file made as tar extracts one: written in pieces, then its times, owner and mode set
/// through the open file. The mount holds the changes with the pieces and sends them with them
/// at close: `a` shows each at once, `b` all of them once `a` closed the file, and a chown
/// clears the set-user-ID bit a chmod before it gave, as it would one call at a time.
fn extracted_file_shows_its_attributes(a: &Path, b: &Path) {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let shown = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.len(), m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()))
    };
    let t = a.join("extracted");
    let mut f = std::fs::File::create(&t).unwrap();
    f.write_all(&vec![b'x'; 10 << 10]).unwrap();
    f.write_all(b"end").unwrap();
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    f.set_times(std::fs::FileTimes::new().set_accessed(when).set_modified(when))
        .unwrap();
    f.set_permissions(PermissionsExt::from_mode(0o4755)).unwrap();
    assert_eq!(shown(&t).map(|s| s.1), Some(0o4755), "a chmod shows at once");
    std::os::unix::fs::fchown(&f, Some(4242), Some(4343)).unwrap();
    let want = Some(((10 << 10) + 3, 0o755, 4242, 4343, 1_500_000_000));
    assert_eq!(shown(&t), want, "times, owner and mode show at once");
    drop(f);
    eventually("the other mount sees them after the close", || {
        shown(&b.join("extracted")) == want
    });
    assert_eq!(shown(&t), want, "and this one still does");
    assert_eq!(std::fs::read(b.join("extracted")).unwrap().len(), (10 << 10) + 3);
    std::fs::remove_file(&t).unwrap();
}

/// One mount's own changes, each checked by a stat right after it.
fn own_changes_show_at_once(a: &Path) {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let nlink = |p: &Path| std::fs::metadata(p).unwrap().nlink();
    let f = a.join("own");
    std::fs::write(&f, b"12345").unwrap();
    assert_eq!(meta(&f).map(|m| m.0), Some(5));
    std::fs::hard_link(&f, a.join("own2")).unwrap();
    assert_eq!(nlink(&f), 2);
    std::fs::remove_file(a.join("own2")).unwrap();
    assert_eq!(nlink(&f), 1);
    std::fs::write(a.join("other"), b"o").unwrap();
    std::fs::hard_link(&f, a.join("keep")).unwrap();
    // A rename over "keep" takes a link from f's inode.
    std::fs::rename(a.join("other"), a.join("keep")).unwrap();
    assert_eq!(nlink(&f), 1);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(2)
        .unwrap();
    assert_eq!(meta(&f).map(|m| m.0), Some(2));
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    assert_eq!(meta(&f), Some((2, 0o640)));
    let big = vec![7u8; 300_000];
    std::fs::write(&f, &big).unwrap();
    assert_eq!(meta(&f).map(|m| m.0), Some(300_000));
    std::fs::remove_file(&f).unwrap();
    std::fs::remove_file(a.join("keep")).unwrap();

    // The kernel holds names and attributes for long, so it checks search permission itself:
    // a name cached in a folder another user may not search stays out of reach, and so does a
    // name the mount knows is free there.
    let private = a.join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::write(private.join("there"), b"x").unwrap();
    assert!(meta(&private.join("there")).is_some());
    for name in ["there", "missing"] {
        let out = std::process::Command::new("stat")
            .arg(private.join(name))
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Permission denied"),
            "stat of {name} in a 0700 folder as another user: {err}"
        );
    }
    std::fs::remove_file(private.join("there")).unwrap();
    std::fs::remove_dir(&private).unwrap();

    // A small file's data, read with its attributes at open, serves that handle's reads only
    // until this mount changes the file (O_DIRECT: every read reaches the mount).
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let small = a.join("small");
    std::fs::write(&small, b"first").unwrap();
    // The writer opens first, so the reader's open is the one whose data the mount keeps.
    let mut w = std::fs::OpenOptions::new().write(true).open(&small).unwrap();
    let mut r = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&small)
        .unwrap();
    let read_all = |r: &mut std::fs::File| {
        let mut s = String::new();
        r.seek(std::io::SeekFrom::Start(0)).unwrap();
        r.read_to_string(&mut s).unwrap();
        s
    };
    assert_eq!(read_all(&mut r), "first");
    w.write_all(b"FIRST, then more").unwrap();
    assert_eq!(read_all(&mut r), "FIRST, then more");
    w.set_len(3).unwrap();
    assert_eq!(read_all(&mut r), "FIR");
    drop((r, w));
    std::fs::remove_file(&small).unwrap();

    // A small file written in pieces: the mount holds them and sends them as one write when
    // the file settles, but its callers see them at once: the size, another handle's reads,
    // a write past a hole, and the file growing out of its inode into chunks.
    let pieces = a.join("pieces");
    let mut w = std::fs::File::create(&pieces).unwrap();
    let mut expect = Vec::new();
    for i in 0..3u8 {
        let piece = vec![b'a' + i; 10 << 10];
        w.write_all(&piece).unwrap();
        expect.extend_from_slice(&piece);
        assert_eq!(meta(&pieces).map(|m| m.0), Some(expect.len() as u64));
    }
    let mut r = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&pieces)
        .unwrap();
    let read_bytes = |r: &mut std::fs::File| {
        let mut v = Vec::new();
        r.seek(std::io::SeekFrom::Start(0)).unwrap();
        r.read_to_end(&mut v).unwrap();
        v
    };
    assert!(read_bytes(&mut r) == expect, "another handle reads the held pieces");
    // A mode change while pieces are held goes with them, in one call.
    w.write_all(b"tail").unwrap();
    expect.extend_from_slice(b"tail");
    w.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o640))
        .unwrap();
    assert_eq!(meta(&pieces), Some((expect.len() as u64, 0o640)));
    assert!(read_bytes(&mut r) == expect, "the pieces sent with a mode change");
    // Past a hole: not a continuation, so the held pieces land first.
    w.seek(std::io::SeekFrom::Start(40 << 10)).unwrap();
    w.write_all(b"after a hole").unwrap();
    expect.resize(40 << 10, 0);
    expect.extend_from_slice(b"after a hole");
    assert!(read_bytes(&mut r) == expect, "a write past a hole");
    // Out of the inode: 40 KiB more takes it past the inline size.
    let more = vec![b'z'; 40 << 10];
    w.write_all(&more).unwrap();
    expect.extend_from_slice(&more);
    assert_eq!(meta(&pieces).map(|m| m.0), Some(expect.len() as u64));
    assert!(read_bytes(&mut r) == expect, "grown into chunks");
    drop((r, w));
    assert!(std::fs::read(&pieces).unwrap() == expect, "after close");
    std::fs::remove_file(&pieces).unwrap();
}

/// The test file's bytes: version `v` of the byte at `off`.
fn pattern(off: u64, len: usize, v: u8) -> Vec<u8> {
    (off..off + len as u64)
        .map(|i| ((i / 4096) as u8).wrapping_mul(31) ^ (i as u8) ^ v)
        .collect()
}

/// Which pages of `f`'s first `len` bytes the kernel's page cache holds (mincore).
fn resident(f: &std::fs::File, len: u64) -> Vec<bool> {
    use std::os::fd::AsRawFd;
    let pages = len.div_ceil(4096) as usize;
    let mut vec = vec![0u8; pages];
    // SAFETY: a read-only shared mapping of a file this function holds open, only passed to
    // mincore and unmapped before returning; `vec` has a byte for every page of it.
    unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(at, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        let r = libc::mincore(at, len as usize, vec.as_mut_ptr());
        let err = std::io::Error::last_os_error();
        libc::munmap(at, len as usize);
        assert_eq!(r, 0, "mincore: {err}");
    }
    vec.iter().map(|b| b & 1 == 1).collect()
}

/// Drop `f`'s pages from the kernel's cache and tell it to read no more than it is asked.
fn cold_and_random(f: &std::fs::File) {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    posix_fadvise(f, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED).unwrap();
    posix_fadvise(f, 0, 0, PosixFadviseAdvice::POSIX_FADV_RANDOM).unwrap();
}

fn pread(f: &std::fs::File, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    let n = f.read_at(&mut buf, off).unwrap();
    buf.truncate(n);
    buf
}

/// A small read through a descriptor that cannot write brings its whole read-around block
/// (128 KiB) into the kernel's page cache with the right bytes, and nothing past it; through
/// one that can write it brings only what was asked (the mount's own writes then stay seen);
/// a change another mount made is read after the next open, and a cut made meanwhile, here or
/// by another mount, is not undone by the blocks read around it.
#[test]
fn small_reads_fill_the_page_cache_around_them_and_stay_right() {
    const BLOCK: u64 = 128 << 10;
    const PAGES: usize = (BLOCK / 4096) as usize;
    let len = 8 * BLOCK;
    let c = TestCluster::start(3, true);
    let a = c.mnt();
    let b_log = c.dir.path().join("logs/fuse-b.log");
    let b_mount = SecondMount::start(&c, &c.dir.path().join("mnt-b"), &b_log);
    let b = b_mount.mnt.clone();
    let path = a.join("rand.dat");
    std::fs::write(&path, pattern(0, len as usize, 1)).unwrap();
    let block = |pages: &[bool], i: u64| {
        let first = (i * BLOCK / 4096) as usize;
        pages[first..first + PAGES].iter().filter(|r| **r).count()
    };

    // Read-only: one 4 KiB read in block 3 brings all of block 3, and only it.
    let ro = std::fs::File::open(&path).unwrap();
    cold_and_random(&ro);
    assert!(resident(&ro, len).iter().all(|r| !r), "the pages are dropped first");
    let at = 3 * BLOCK + 5 * 4096;
    assert_eq!(pread(&ro, at, 4096), pattern(at, 4096, 1));
    eventually("the rest of block 3 in the page cache", || {
        block(&resident(&ro, len), 3) == PAGES
    });
    let pages = resident(&ro, len);
    for i in (0..8).filter(|i| *i != 3) {
        assert_eq!(block(&pages, i), 0, "block {i} was not read");
    }
    // What the kernel holds is the file's bytes.
    assert_eq!(
        pread(&ro, 3 * BLOCK, BLOCK as usize),
        pattern(3 * BLOCK, BLOCK as usize, 1)
    );

    // A descriptor that may write is open: a read brings only what it asks for, and the
    // writes through it are read back.
    let rw = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    cold_and_random(&rw);
    let at = 5 * BLOCK;
    assert_eq!(pread(&rw, at, 4096), pattern(at, 4096, 1));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(block(&resident(&rw, len), 5), 1, "only the page asked for");
    std::os::unix::fs::FileExt::write_all_at(&rw, &pattern(at, 8192, 2), at).unwrap();
    assert_eq!(pread(&ro, at, 8192), pattern(at, 8192, 2));
    drop(rw);

    // Another mount rewrites block 3; this one opens the file again and reads the new bytes,
    // not the ones it read around before.
    let other = std::fs::OpenOptions::new()
        .write(true)
        .open(b.join("rand.dat"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&other, &pattern(3 * BLOCK, BLOCK as usize, 3), 3 * BLOCK).unwrap();
    drop(other);
    drop(ro);
    let ro = std::fs::File::open(&path).unwrap();
    assert_eq!(
        pread(&ro, 3 * BLOCK, BLOCK as usize),
        pattern(3 * BLOCK, BLOCK as usize, 3)
    );

    // Cut by path in the middle of block 6 while a reader reads around there: the size stays
    // cut, and the bytes before the cut are the file's.
    cold_and_random(&ro);
    let cut = 6 * BLOCK + 12 * 1024;
    nix::unistd::truncate(&path, cut as i64).unwrap();
    let got = pread(&ro, 6 * BLOCK, 4096);
    assert_eq!(got, pattern(6 * BLOCK, 4096, 1));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ro.metadata().unwrap().len(), cut, "the cut stays");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), cut);
    let tail = pread(&ro, 6 * BLOCK, BLOCK as usize);
    assert_eq!(tail, pattern(6 * BLOCK, (cut - 6 * BLOCK) as usize, 1));

    // The other mount cuts it shorter while this one holds it open: once this one has seen
    // the new size, a read around the new end does not grow the file back.
    let cut = 4 * BLOCK + 8 * 1024;
    nix::unistd::truncate(&b.join("rand.dat"), cut as i64).unwrap();
    eventually("the other mount's cut", || {
        std::fs::metadata(&path).unwrap().len() == cut
    });
    cold_and_random(&ro);
    assert_eq!(pread(&ro, 4 * BLOCK, 4096), pattern(4 * BLOCK, 4096, 1));
    std::thread::sleep(Duration::from_millis(500));
    // A read to past the end first: a stat would ask the mount again.
    let tail = pread(&ro, 4 * BLOCK, BLOCK as usize);
    assert_eq!(tail.len() as u64, cut - 4 * BLOCK, "the other mount's cut stays");
    assert_eq!(tail, pattern(4 * BLOCK, (cut - 4 * BLOCK) as usize, 1));
    assert_eq!(ro.metadata().unwrap().len(), cut);
}

/// Readers read a file at random through one mount (each read bringing its block into the page
/// cache) while another mount rewrites it whole again and again: every open after a rewrite
/// reads the rewrite's bytes, none read around from a version before (a store must never land
/// after the open that drops the old pages).
#[test]
fn an_open_after_another_mounts_rewrite_never_reads_an_older_version() {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, RwLock};
    const PAGES: u64 = 1024;
    let version = |k: u8| -> Vec<u8> {
        (0..PAGES * 4096)
            .map(|i| ((i / 4096) as u8).wrapping_mul(7) ^ k)
            .collect()
    };
    let c = TestCluster::start(3, true);
    let b_log = c.dir.path().join("logs/fuse-b.log");
    let b_mount = SecondMount::start(&c, &c.dir.path().join("mnt-b"), &b_log);
    let (a, b) = (c.mnt().join("f"), b_mount.mnt.join("f"));
    std::fs::write(&b, version(0)).unwrap();
    let current = Arc::new(RwLock::new(Arc::new(std::fs::File::open(&a).unwrap())));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..3u64)
        .map(|seed| {
            let (current, stop, reads) = (current.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut buf = vec![0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let f = current.read().unwrap().clone();
                    random_advice(&f);
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let _ = f.read_at(&mut buf, (x % PAGES) * 4096);
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for k in 1..=30u8 {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&b)
            .unwrap()
            .write_all_at(&version(k), 0)
            .unwrap();
        let f = Arc::new(std::fs::File::open(&a).unwrap());
        *current.write().unwrap() = f.clone();
        let want = version(k);
        for i in (0..PAGES).step_by(37) {
            let got = pread(&f, i * 4096, 4096);
            assert!(
                got[..] == want[(i * 4096) as usize..][..4096],
                "rewrite {k}: page {i} reads an older version (first byte {}, want {})",
                got[0],
                want[(i * 4096) as usize]
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(reads.load(Ordering::Relaxed) > 0);
}

/// Read no more than asked (no kernel read-ahead) through `f`.
fn random_advice(f: &std::fs::File) {
    let _ = nix::fcntl::posix_fadvise(f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM);
}
