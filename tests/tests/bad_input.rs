//! Bad input gets a clear error and loses nothing: unusable folders at start-up, malformed and
//! oversized RPCs, names and sizes past the limits, and a full data disk.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use sealfs_core::attr::FileKind;
use sealfs_core::config::{MAX_IO_SIZE, MAX_MESSAGE_SIZE};
use sealfs_core::{Credentials, ROOT_INO};
use sealfs_proto::auth::Security;
use sealfs_proto::pb;
use sealfs_tests::{eventually_within, pattern, InProcessCluster, TestCluster};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

fn bin(name: &str) -> PathBuf {
    sealfs_cli::cluster::default_bin_dir().join(name)
}

/// Run sealfs-node with these folders; it must exit with an error that names the problem.
fn node_start_error(meta: &Path, data: &Path, as_nobody: bool) -> String {
    let mut cmd = Command::new(bin("sealfs-node"));
    cmd.args(["--manager", "127.0.0.1:1", "--listen", "127.0.0.1:0", "--meta-dir"])
        .arg(meta)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_BACKTRACE", "0");
    if as_nobody {
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().expect("run sealfs-node");
    assert!(
        !out.status.success(),
        "sealfs-node started with meta {} data {}",
        meta.display(),
        data.display()
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "a panic is not a clear message: {err}");
    err
}

#[test]
fn unusable_folders_are_named_at_start_up() {
    let tmp = tempfile::tempdir().unwrap();
    let ok = tmp.path().join("ok");
    fs::create_dir(&ok).unwrap();
    let missing = tmp.path().join("missing");
    let err = node_start_error(&missing, &ok, false);
    assert!(err.contains("meta dir") && err.contains("does not exist"), "{err}");
    let err = node_start_error(&ok, &missing, false);
    assert!(err.contains("data dir") && err.contains("does not exist"), "{err}");
    let file = tmp.path().join("file");
    fs::write(&file, b"x").unwrap();
    let err = node_start_error(&ok, &file, false);
    assert!(err.contains("data dir") && err.contains("is not a folder"), "{err}");
    // Folders owned by root with mode 0755 are not writable for nobody.
    let ro_meta = tmp.path().join("ro-meta");
    let ro_data = tmp.path().join("ro-data");
    for d in [&ro_meta, &ro_data] {
        fs::create_dir(d).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let err = node_start_error(&ro_meta, &ro_data, true);
    assert!(err.contains("meta dir") && err.contains("not writable"), "{err}");
    // The manager names its folder too.
    let out = Command::new(bin("sealfs-manager"))
        .args(["--listen", "127.0.0.1:0", "--dir"])
        .arg(&ro_meta)
        .env("RUST_BACKTRACE", "0")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not writable"), "{err}");
}

/// A codec that sends and receives raw bytes, to put arbitrary bodies on the wire.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

/// Call `method` with a raw body, over HTTP/2 or over the framed transport.
async fn raw_call(
    sec: &Security,
    framed: bool,
    addr: &str,
    method: &'static str,
    body: Bytes,
) -> Result<Bytes, Status> {
    raw_call_attached(sec, framed, addr, method, body, None).await
}

/// [`raw_call`] with data beside the body (inlined into it over HTTP/2).
async fn raw_call_attached(
    sec: &Security,
    framed: bool,
    addr: &str,
    method: &'static str,
    body: Bytes,
    attachment: Option<sealfs_proto::attach::Attachment>,
) -> Result<Bytes, Status> {
    let chan = if framed {
        sealfs_proto::auth::Transport::Framed(sealfs_proto::framed::FramedChannel::new(
            addr,
            Duration::from_secs(10),
            Duration::from_secs(2),
        ))
    } else {
        sealfs_proto::auth::Transport::Http2(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
    };
    let chan = tonic::service::interceptor::InterceptedService::new(chan, sec.client_auth());
    let mut grpc = tonic::client::Grpc::new(chan).max_encoding_message_size(usize::MAX);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    let mut req = tonic::Request::new(body);
    if let Some(a) = attachment {
        req.extensions_mut().insert(a);
    }
    grpc.unary(req, path, RawCodec).await.map(|r| r.into_inner())
}

async fn node_addrs(sec: &Security, manager: &str) -> Vec<String> {
    let map = sealfs_cli::cluster::fetch_map(sec, manager).await.unwrap();
    map.nodes.iter().map(|n| n.addr.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_rpcs_get_error_replies() {
    let cluster = InProcessCluster::start(2, 16).await;
    let client = cluster.client().await;
    let root = Credentials::root();
    let keep = client
        .create(&root, ROOT_INO, b"keep", FileKind::Regular, 0o644, 0, true, 0)
        .await
        .unwrap();
    let sec = cluster.security();
    let addrs = node_addrs(&sec, &cluster.manager_addr).await;
    let node = addrs[0].clone();

    // Not HTTP/2 at all: the connection is closed, nothing else happens.
    let mut s = std::net::TcpStream::connect(&node).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&pattern(1, 4096)).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    // The framed transport's magic, then frames that do not parse or are too large: closed.
    for frame in [
        // Too large, too small for a call id, a call id and nothing else, a path longer than
        // the frame, a header count with no headers.
        [&u32::MAX.to_le_bytes()[..], &pattern(4, 64)].concat(),
        [&3u32.to_le_bytes()[..], &[0u8; 3][..]].concat(),
        [&8u32.to_le_bytes()[..], &[0u8; 8][..]].concat(),
        [&12u32.to_le_bytes()[..], &[0u8; 8][..], &[0xff, 0xff, 1, 2][..]].concat(),
        [&13u32.to_le_bytes()[..], &[0u8; 8][..], &[1, 0, b'/', 9, 0][..]].concat(),
    ] {
        let mut s = std::net::TcpStream::connect(&node).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(sealfs_proto::framed::MAGIC).unwrap();
        s.write_all(&frame).unwrap();
        let mut buf = Vec::new();
        // A read timeout would be an error here: the node must close the connection.
        s.read_to_end(&mut buf)
            .expect("the node closes a connection sending garbage frames");
    }

    for framed in [false, true] {
        malformed_calls(&sec, framed, &cluster.manager_addr, &addrs, keep.attr.ino).await;
    }

    // Everything still works, nothing was lost, and no refused write left bytes behind.
    let again = client.lookup(&root, ROOT_INO, b"keep").await.unwrap();
    assert_eq!(again.attr.ino, keep.attr.ino);
    let chunk = client.read_chunks(keep.attr.ino, 0, 4 << 20, 4 << 20).await.unwrap();
    let written = chunk.iter().filter(|b| **b != 0).count();
    assert_eq!(written, 0, "refused chunk writes left {written} bytes");
    client.mkdir(&root, ROOT_INO, b"after", 0o755).await.unwrap();
    cluster.stop().await;
}

/// Garbage, oversized and out-of-range calls over one transport: each gets an error reply.
async fn malformed_calls(sec: &Security, framed: bool, manager: &str, addrs: &[String], keep: u64) {
    let node = addrs[0].clone();
    // A garbage protobuf body is a decode error, answered as such.
    for method in [
        "/sealfs.v1.Node/Lookup",
        "/sealfs.v1.Node/ApplyStep",
        "/sealfs.v1.Manager/Register",
    ] {
        if method.contains("Manager") && framed {
            // The manager speaks HTTP/2 only.
            continue;
        }
        let target = if method.contains("Manager") {
            manager.to_string()
        } else {
            node.clone()
        };
        let st = raw_call(sec, framed, &target, method, Bytes::from(pattern(2, 333)))
            .await
            .unwrap_err();
        assert!(
            matches!(st.code(), tonic::Code::Internal | tonic::Code::InvalidArgument),
            "{method}: {st:?}"
        );
    }
    // An oversized message is refused before it is decoded.
    let big = Bytes::from(vec![0u8; MAX_MESSAGE_SIZE + 1024]);
    let st = raw_call(sec, framed, &node, "/sealfs.v1.Node/WriteChunk", big)
        .await
        .unwrap_err();
    assert!(
        matches!(st.code(), tonic::Code::ResourceExhausted | tonic::Code::OutOfRange),
        "{st:?}"
    );

    // Well-formed messages with values out of range.
    let ctx = Some(pb::Ctx {
        epoch: 0,
        uid: 0,
        gid: 0,
        groups: vec![],
    });
    let cases: Vec<(&'static str, Bytes)> = vec![
        (
            "/sealfs.v1.Node/Lookup",
            pb::LookupRequest {
                ctx: ctx.clone(),
                parent: ROOT_INO,
                name: vec![b'n'; 1 << 20].into(),
            }
            .encode_to_vec()
            .into(),
        ),
        (
            "/sealfs.v1.Node/Create",
            pb::CreateRequest {
                ctx: ctx.clone(),
                parent: ROOT_INO,
                name: "k".into(),
                kind: 99,
                ..Default::default()
            }
            .encode_to_vec()
            .into(),
        ),
        (
            "/sealfs.v1.Node/WriteChunk",
            pb::WriteChunkRequest {
                ctx: ctx.clone(),
                chunk: Some(pb::ChunkId { ino: keep, index: 0 }),
                offset: u32::MAX,
                data: vec![1u8; 100].into(),
                stable: true,
                chunk_size: 4 << 20,
                pieces: Vec::new(),
            }
            .encode_to_vec()
            .into(),
        ),
        (
            "/sealfs.v1.Node/WriteChunk",
            pb::WriteChunkRequest {
                ctx: ctx.clone(),
                chunk: None,
                ..Default::default()
            }
            .encode_to_vec()
            .into(),
        ),
        (
            "/sealfs.v1.Node/ApplyStep",
            pb::StepRequest {
                ctx: ctx.clone(),
                intent_id: 1,
                step_index: 0,
                step: None,
                partition: 70000,
            }
            .encode_to_vec()
            .into(),
        ),
        (
            "/sealfs.v1.Node/Write",
            pb::WriteRequest {
                ctx: ctx.clone(),
                ino: keep,
                offset: u64::MAX - 3,
                length: 100,
                ..Default::default()
            }
            .encode_to_vec()
            .into(),
        ),
        (
            "/sealfs.v1.Node/GetAttr",
            pb::InoRequest {
                ctx: ctx.clone(),
                ino: (9999u64 << 48) | 5,
            }
            .encode_to_vec()
            .into(),
        ),
    ];
    for (method, body) in cases {
        // Either node may own the inode: ask both, each must answer with an error.
        for a in addrs {
            let st = raw_call(sec, framed, a, method, body.clone()).await.unwrap_err();
            assert_ne!(st.code(), tonic::Code::Unknown, "{method} on {a}: {st:?}");
        }
    }
    // Chunk data beside the message (inlined over HTTP/2): too much of it, or past the chunk's
    // end, is refused like the same data inside the message.
    let attached_write = |offset: u32, len: usize, pieces: Vec<(u32, u32)>| {
        let msg = pb::WriteChunkRequest {
            ctx: ctx.clone(),
            chunk: Some(pb::ChunkId { ino: keep, index: 0 }),
            offset,
            data: Bytes::new(),
            stable: true,
            chunk_size: 4 << 20,
            pieces: pieces
                .into_iter()
                .map(|(offset, len)| pb::ChunkPiece { offset, len })
                .collect(),
        };
        let data = Bytes::from(pattern(3, len));
        let a = sealfs_proto::attach::Attachment::new(sealfs_proto::attach::WRITE_CHUNK_DATA, data);
        (Bytes::from(msg.encode_to_vec()), a)
    };
    // Too much data, past the chunk's end, and piece tables that do not describe the data: more
    // pieces than data, less, one past the chunk's end, an empty one, too many.
    // (method, offset, bytes of data, piece table as (offset, length) pairs)
    type Case = (&'static str, u32, usize, Vec<(u32, u32)>);
    let cases: Vec<Case> = vec![
        ("WriteChunk", 0, MAX_IO_SIZE + 4096, vec![]),
        ("WriteChunk", (4 << 20) - 4096, 8192, vec![]),
        ("WriteChunkPieces", 0, 8192, vec![(0, 4096), (8192, 8192)]),
        ("WriteChunkPieces", 0, 8192, vec![(0, 4096)]),
        ("WriteChunkPieces", 0, 8192, vec![(0, 4096), ((4 << 20) - 100, 4096)]),
        ("WriteChunkPieces", 0, 4096, vec![(0, 4096), (100, 0)]),
        ("WriteChunkPieces", 0, 2048, (0..2048).map(|i| (i * 8, 1)).collect()),
    ];
    for (method, offset, len, pieces) in cases {
        let mut refused = 0;
        for a in addrs {
            let (body, att) = attached_write(offset, len, pieces.clone());
            let path = if method == "WriteChunk" {
                "/sealfs.v1.Node/WriteChunk"
            } else {
                "/sealfs.v1.Node/WriteChunkPieces"
            };
            let st = raw_call_attached(sec, framed, a, path, body, Some(att))
                .await
                .unwrap_err();
            // The chunk's primary checks the write; the other node sends the caller to it.
            match st.code() {
                tonic::Code::InvalidArgument => refused += 1,
                tonic::Code::FailedPrecondition => {}
                _ => panic!("{method} {len} at {offset} {pieces:?} on {a}: {st:?}"),
            }
        }
        assert_eq!(refused, 1, "{method} {len} at {offset}: the chunk's primary refuses it");
    }

    // A huge read is capped, not an allocation of 4 GiB.
    let r = pb::ReadChunkRequest {
        ctx,
        chunk: Some(pb::ChunkId { ino: keep, index: 0 }),
        offset: 0,
        size: u32::MAX,
        from_replica: false,
    };
    for a in addrs {
        let _ = raw_call(sec, framed, a, "/sealfs.v1.Node/ReadChunk", r.encode_to_vec().into()).await;
    }
}

#[test]
fn names_and_sizes_past_the_limits_through_fuse() {
    let c = TestCluster::start(2, true);
    let mnt = c.mnt();
    let long = mnt.join("x".repeat(256));
    let e = fs::write(&long, b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG), "{e}");
    let e = fs::create_dir(&long).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG), "{e}");
    fs::write(mnt.join("x".repeat(255)), b"ok").unwrap();
    // A write past the largest file size is EFBIG, and the file keeps what it had.
    let p = mnt.join("big");
    fs::write(&p, b"head").unwrap();
    let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    use std::os::unix::fs::FileExt;
    let e = f.write_at(b"x", sealfs_core::config::MAX_FILE_SIZE).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EFBIG), "{e}");
    let e = f.set_len(sealfs_core::config::MAX_FILE_SIZE + 1).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EFBIG), "{e}");
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"head");
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .expect("mount a tmpfs for the full-disk test (the tests run as root)");
        Tmpfs(path.to_path_buf())
    }

    fn free(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.0).unwrap();
        s.blocks_available() * s.fragment_size()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn fill(path: &Path) -> std::io::Error {
    let mut f = fs::File::create(path).unwrap();
    let piece = pattern(5, 1 << 20);
    loop {
        if let Err(e) = f.write_all(&piece) {
            return e;
        }
        if let Err(e) = f.sync_all() {
            return e;
        }
    }
}

#[test]
fn a_full_data_disk_gives_enospc_and_keeps_serving() {
    let mut disk = None;
    let c = TestCluster::start_with(1, true, |spec| {
        disk = Some(Tmpfs::mount(&spec.dir.join("node0/data"), "24m"));
    });
    let disk = disk.unwrap();
    let mnt = c.mnt();
    let small = pattern(1, 1000);
    let big = pattern(2, 3 << 20);
    fs::write(mnt.join("keep-small"), &small).unwrap();
    fs::write(mnt.join("keep-big"), &big).unwrap();
    let e = fill(&mnt.join("filler"));
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling the data disk: {e}");
    // The node keeps serving: what was written before is intact, listings and stats work.
    assert_eq!(fs::read(mnt.join("keep-small")).unwrap(), small);
    assert_eq!(fs::read(mnt.join("keep-big")).unwrap(), big);
    assert!(fs::read_dir(&mnt).unwrap().count() >= 3);
    // Freeing space lets writes succeed again (chunks of removed files go in the background).
    fs::remove_file(mnt.join("filler")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while disk.free() < 12 << 20 {
        assert!(
            Instant::now() < deadline,
            "space of a removed file was not freed within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let again = pattern(3, 8 << 20);
    let mut f = fs::File::create(mnt.join("after")).unwrap();
    f.write_all(&again).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::read(mnt.join("after")).unwrap(), again);
    assert_eq!(fs::read(mnt.join("keep-big")).unwrap(), big);
    drop(c);
    drop(disk);
}

/// Flip one byte of the stored chunk `index` of `ino` on node `node` of `c`; returns the path.
fn flip_a_byte(c: &TestCluster, node: usize, ino: u64, index: u64, at: u64) -> PathBuf {
    let data = c.dir.path().join(format!("node{node}/data"));
    let name = format!("{ino:016x}.{index}");
    let path = fs::read_dir(&data)
        .unwrap()
        .flatten()
        .map(|p| p.path().join(&name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no chunk {name} under {}", data.display()));
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    f.sync_all().unwrap();
    path
}

async fn cluster_client(c: &TestCluster) -> sealfs_client::SealClient {
    let cfg = sealfs_core::config::ClientConfig {
        manager: c.cluster.manager_addr.clone(),
        retry_deadline_ms: 5000,
        security: c.cluster.spec.security.clone(),
        ..Default::default()
    };
    sealfs_client::SealClient::connect(cfg, Duration::from_secs(30))
        .await
        .unwrap()
}

/// Write `data` durably to /victim through the mount; a client of the cluster and its inode.
async fn store_victim(c: &TestCluster, data: &[u8]) -> (sealfs_client::SealClient, u64) {
    let mut f = fs::File::create(c.mnt().join("victim")).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let client = cluster_client(c).await;
    let ino = client
        .lookup(&Credentials::root(), ROOT_INO, b"victim")
        .await
        .unwrap()
        .attr
        .ino;
    (client, ino)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_caught_never_served() {
    let mut c = TestCluster::start(1, true);
    let data = pattern(7, 300_000);
    let (client, ino) = store_victim(&c, &data).await;
    let root = Credentials::root();
    assert_eq!(&client.read(&root, ino, 0, 300_000).await.unwrap()[..], &data[..]);
    let chunk = flip_a_byte(&c, 0, ino, 0, 200_000);
    // The block holding the flipped byte is refused with EIO; the others still read.
    let e = client.read(&root, ino, 196_608, 1000).await.unwrap_err();
    assert_eq!(e.to_errno(), libc::EIO, "{e}");
    assert_eq!(&client.read(&root, ino, 0, 1000).await.unwrap()[..], &data[..1000]);
    // The node's log names the chunk.
    let log = fs::read_to_string(c.cluster.log_path("node0")).unwrap();
    assert!(
        log.contains("checksum mismatch") && log.contains(&chunk.display().to_string()),
        "node log: {log}"
    );
    c.cluster.check_running().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_repaired_from_a_replica() {
    let mut c = TestCluster::start(3, true);
    let data = pattern(8, 500_000);
    let (client, ino) = store_victim(&c, &data).await;
    let root = Credentials::root();
    let map = c.cluster.fetch_map().unwrap();
    let primary = map.primary(map.chunk_partition(ino, 0)).unwrap().addr.clone();
    let node = (0..3)
        .find(|i| c.cluster.node_addr(*i).as_deref() == Some(primary.as_str()))
        .unwrap();
    flip_a_byte(&c, node, ino, 0, 400_000);
    // The reader gets the right data: the primary mends its copy from another replica.
    assert_eq!(&client.read(&root, ino, 0, 500_000).await.unwrap()[..], &data[..]);
    let log = fs::read_to_string(c.cluster.log_path(&format!("node{node}"))).unwrap();
    assert!(log.contains("checksum mismatch"), "node log: {log}");
    assert!(log.contains("repaired a corrupt chunk"), "node log: {log}");
    // Mended for good: the block reads again without another repair.
    assert_eq!(
        &client.read(&root, ino, 393_216, 10_000).await.unwrap()[..],
        &data[393_216..403_216]
    );
    c.cluster.check_running().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_nobody_reads_is_found_and_mended_by_the_scrub() {
    let mut c = TestCluster::start_with(3, true, |spec| {
        spec.env.push(("SEALFS_SCRUB_INTERVAL_SECS".into(), "1".into()));
    });
    let data = pattern(9, 500_000);
    let (_client, ino) = store_victim(&c, &data).await;
    let map = c.cluster.fetch_map().unwrap();
    let primary = map.primary(map.chunk_partition(ino, 0)).unwrap().addr.clone();
    // A copy that is not the primary's: no client read ever comes to it.
    let node = (0..3)
        .find(|i| c.cluster.node_addr(*i).as_deref() != Some(primary.as_str()))
        .unwrap();
    let chunk = flip_a_byte(&c, node, ino, 0, 400_000);
    assert_ne!(fs::read(&chunk).unwrap(), data);
    let log_path = c.cluster.log_path(&format!("node{node}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::read(&chunk).unwrap() != data {
        if Instant::now() > deadline {
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            panic!("the flipped byte is still there after 60 s of scrubbing\nnode log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("scrub: checksum mismatch") && log.contains(&chunk.display().to_string()),
        "node log: {log}"
    );
    assert!(log.contains("repaired a corrupt chunk"), "node log: {log}");
    // The manager reports it with the node's next heartbeat.
    let (sec, manager) = (c.cluster.security.clone(), c.cluster.manager_addr.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = sealfs_cli::status::fetch(&sec, &manager).await.unwrap();
        let scrubs: Vec<pb::ScrubStats> = status
            .nodes
            .iter()
            .filter_map(|n| n.stats.as_ref().and_then(|s| s.scrub))
            .collect();
        let found: u64 = scrubs.iter().map(|s| s.corrupt).sum();
        let mended: u64 = scrubs.iter().map(|s| s.repaired).sum();
        if found > 0 && scrubs.iter().all(|s| s.passes > 0) {
            assert_eq!((found, mended), (1, 1), "{scrubs:?}");
            assert!(scrubs.iter().all(|s| s.unrepaired == 0), "{scrubs:?}");
            let text = sealfs_cli::status::render(&status);
            assert!(text.contains("1 corrupt: 1 mended"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the scrub's findings were not reported: {scrubs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every copy checks out on the next passes, and the file reads whole.
    let root = Credentials::root();
    let client = cluster_client(&c).await;
    assert_eq!(&client.read(&root, ino, 0, 500_000).await.unwrap()[..], &data[..]);
    c.cluster.check_running().unwrap();
}

const MINUTE: Duration = Duration::from_secs(60);

/// The number after `key` (as `key=` in a log line's fields).
fn field(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split(|ch: char| !ch.is_ascii_digit()).next()?.parse().ok()
}

#[test]
fn a_scrub_pass_cut_short_by_a_restart_goes_on_where_it_was() {
    // Passes read 1 MiB a second, the first five seconds after the first start: slow enough to
    // stop a node in the middle of one.
    let mut c = TestCluster::start_with(3, true, |spec| {
        spec.env.push(("SEALFS_SCRUB_INTERVAL_SECS".into(), "5".into()));
        spec.env.push(("SEALFS_SCRUB_MIB_PER_SEC".into(), "1".into()));
    });
    // One chunk each, over many partitions; every node holds every partition.
    for i in 0..16u64 {
        fs::write(c.mnt().join(format!("f{i}")), pattern(i, 1 << 20)).unwrap();
    }
    let log_path = c.cluster.log_path("node0");
    let lines = |what: &str| -> Vec<String> {
        fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(what))
            .map(String::from)
            .collect()
    };
    // A pass that begins once all the data is in (one may have run over an empty cluster, if
    // starting it took long).
    let begun = lines("scrub pass begins").len();
    eventually_within("a scrub pass beginning", MINUTE, || {
        lines("scrub pass begins").len() > begun
    });
    let ended = lines("scrub pass done").len();
    // Halfway through 16 MiB at 1 MiB a second.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(lines("scrub pass done").len(), ended, "the pass ended already");
    c.cluster.stop_node(0, nix::sys::signal::Signal::SIGTERM);
    c.cluster.start_node(0).unwrap();
    eventually_within("a scrub pass beginning after the restart", MINUTE, || {
        lines("scrub pass begins").len() >= begun + 2
    });
    // It goes on from a partition past the first, not from the start.
    let resumed = lines("scrub pass begins")[begun + 1].clone();
    let from = field(&resumed, "from_partition=").unwrap_or_else(|| panic!("no partition in {resumed:?}"));
    assert!(from > 0, "the pass after the restart began from the start: {resumed}");
    // And ends, having checked fewer chunks than a whole pass has.
    eventually_within("the resumed scrub pass ending", MINUTE, || {
        lines("scrub pass done").len() > ended
    });
    let done = lines("scrub pass done")[ended].clone();
    let chunks = field(&done, "chunks=").unwrap_or_else(|| panic!("no chunk count in {done:?}"));
    assert!(chunks > 0 && chunks < 16, "{done}");
    c.cluster.check_running().unwrap();
}

#[test]
fn a_full_meta_disk_gives_enospc_keeps_serving_and_recovers() {
    let mut disk = None;
    let mut c = TestCluster::start_with(1, true, |spec| {
        disk = Some(Tmpfs::mount(&spec.dir.join("node0/meta"), "48m"));
    });
    let disk = disk.unwrap();
    let mnt = c.mnt();
    fs::write(mnt.join("keep"), b"kept before the disk filled").unwrap();
    let big = pattern(4, 1 << 20);
    fs::write(mnt.join("keep-big"), &big).unwrap();
    // Something else fills the metadata disk.
    let ballast = c.dir.path().join("node0/meta/ballast");
    let e = fill(&ballast);
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    // Writers get ENOSPC once what RocksDB had set aside is used up.
    let mut refused = None;
    for i in 0..50_000 {
        if let Err(e) = fs::write(mnt.join(format!("n{i:05}")), pattern(i as u64, 200)) {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("50,000 creates on a full metadata disk all succeeded");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENOSPC),
        "a create on a full meta disk: {e}"
    );
    // The node still serves what it has.
    assert_eq!(fs::read(mnt.join("keep")).unwrap(), b"kept before the disk filled");
    assert_eq!(fs::read(mnt.join("keep-big")).unwrap(), big);
    assert!(fs::read_dir(&mnt).unwrap().count() >= 2);
    // Space freed: writes work again, without a restart.
    fs::remove_file(&ballast).unwrap();
    assert!(disk.free() > 16 << 20);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match fs::write(mnt.join("after"), b"written after space was freed") {
            Ok(()) => break,
            Err(e) => {
                if Instant::now() > deadline {
                    let log = fs::read_to_string(c.cluster.log_path("node0")).unwrap_or_default();
                    panic!("writes still fail 90 s after space was freed: {e}\nnode log:\n{log}");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    assert_eq!(fs::read(mnt.join("after")).unwrap(), b"written after space was freed");
    assert_eq!(fs::read(mnt.join("keep")).unwrap(), b"kept before the disk filled");
    c.cluster.check_running().unwrap();
    drop(c);
    drop(disk);
}
