//! The fuzz targets' bodies: each takes arbitrary bytes and must neither panic nor hang, whatever
//! they hold. `fuzz/` runs them under libFuzzer (`cargo fuzz run <target>`); the tests here
//! replay every input kept in `fuzz/corpus/<target>` and `fuzz/regressions/<target>`, so a crash
//! found once stays fixed.
//!
//! The metadata key and record codecs are compiled in from the storage node's own source files,
//! so fuzzing them does not build RocksDB.

use std::net::SocketAddr;
use std::sync::OnceLock;

use prost::Message;
use sealfs_proto::pb;

/// The storage node's key codec.
#[path = "../../storage-node/src/keys.rs"]
#[allow(dead_code)]
pub mod keys;
/// The storage node's record formats.
#[path = "../../storage-node/src/records.rs"]
#[allow(dead_code)]
pub mod records;
/// The chunk checksum file format.
#[path = "../../storage-node/src/sums.rs"]
#[allow(dead_code)]
pub mod sums;

mod nfs;

/// gRPC request and message decoding, and every conversion a server applies to what it decoded:
/// the first byte picks the message type, the rest is its encoding.
pub fn rpc_decode(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    if which >= 0xF0 {
        // A frame of the framed transport (after its length prefix), as a server or a client
        // would decode it, on a version 1 or 2 (attachments) connection.
        let mut frame = bytes::Bytes::copy_from_slice(body);
        let v2 = which & 2 != 0;
        if which & 1 == 0 {
            let _ = sealfs_proto::framed::decode_request(&mut frame, v2);
        } else {
            let _ = sealfs_proto::framed::decode_reply(&mut frame, v2);
        }
        return;
    }
    match which % 12 {
        0 => {
            if let Ok(m) = pb::ClusterMapMsg::decode(body) {
                let _ = sealfs_proto::map_from_pb(&m);
            }
        }
        1 => {
            if let Ok(m) = pb::Attr::decode(body) {
                let _ = sealfs_proto::attr_from_pb(&m);
            }
        }
        2 => {
            if let Ok(m) = pb::WriteRequest::decode(body) {
                let _ = sealfs_proto::creds_from_ctx(m.ctx.as_ref());
            }
        }
        3 => {
            let _ = pb::ReplicateMetaRequest::decode(body);
        }
        4 => {
            let _ = pb::FillRequest::decode(body);
        }
        5 => {
            let _ = pb::RegisterRequest::decode(body);
        }
        6 => {
            if let Ok(m) = pb::SetAttrRequest::decode(body) {
                let _ = sealfs_proto::creds_from_ctx(m.ctx.as_ref());
            }
        }
        7 => {
            let _ = pb::StepRequest::decode(body);
        }
        8 => {
            let _ = pb::ReadDirReply::decode(body);
        }
        9 => {
            // Chunk writes, and the split of their data by a piece table, as a node does it.
            if let Ok(m) = pb::ReplicateChunkRequest::decode(body) {
                if let Some(pb::replicate_chunk_request::Op::Write(w)) = m.op {
                    let _ = sealfs_proto::split_pieces(w.offset, &w.data, &w.pieces, u64::from(u32::MAX));
                }
            }
            if let Ok(m) = pb::WriteChunkRequest::decode(body) {
                let _ = sealfs_proto::split_pieces(m.offset, &m.data, &m.pieces, u64::from(m.chunk_size));
            }
        }
        10 => {
            // The cluster credential check sees attacker-chosen header text.
            if let Ok(text) = std::str::from_utf8(body) {
                let secret = sealfs_proto::auth::Secret::new("fuzzing-secret-0123456789").expect("secret");
                let _ = secret.verify(text, 1_700_000_000);
            }
        }
        _ => {
            // A status from a peer, decoded into the error a caller sees.
            let msg = String::from_utf8_lossy(body);
            let mut st = tonic_status(&msg);
            if let Ok(v) = msg.parse() {
                st.metadata_mut().insert("x-sealfs-kind", v);
            }
            let _ = sealfs_proto::error_from_status(&st);
        }
    }
}

fn tonic_status(msg: &str) -> tonic::Status {
    tonic::Status::internal(msg.to_string())
}

/// The metadata key and record codecs: parse arbitrary keys and records, and check that what
/// parses re-encodes to the same bytes.
pub fn key_codec(data: &[u8]) {
    let _ = keys::key_partition(data);
    if let Some((parent, cookie, name)) = keys::parse_dentry(data) {
        let p = keys::key_partition(data).expect("a dentry key has a partition");
        // The cookie is a hash of the name; parsing does not check it (only sealfs writes keys),
        // so only keys whose cookie fits their name encode back to themselves.
        if cookie == keys::name_cookie(name) {
            assert_eq!(keys::dentry(p, parent, name), data, "dentry key round trip");
        }
    }
    let _ = keys::parse_xattr_name(data);
    let _ = keys::parse_intent(data);
    let _ = keys::parse_gc(data);
    let _ = keys::prefix_end(data);
    if let Ok(r) = records::InodeRecord::decode(1, data) {
        let again = records::InodeRecord::decode(1, &r.encode()).expect("re-decode");
        assert_eq!(again, r, "inode record round trip");
    }
    if let Ok(r) = records::DentryRecord::decode(data) {
        let _ = r.encode();
    }
    if let Ok(r) = records::GcRecord::decode(data) {
        let _ = r.encode();
    }
    if let Ok(s) = sums::Sums::decode(data) {
        assert_eq!(s.encode(), data, "checksum file round trip");
    }
}

/// One NFS/MOUNT/portmap RPC record through the server the gateway runs (record parsing, XDR
/// decoding, dispatch, reply encoding), over a backend that parses handles the way the gateway
/// does.
pub fn nfs_record(data: &[u8]) {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("runtime"));
    let server = nfs::server();
    let peer: SocketAddr = "10.1.2.3:700".parse().expect("address");
    if let Some(reply) = rt.block_on(server.handle_record(data, peer)) {
        // A reply is at least an xid and a message type.
        assert!(reply.len() >= 8, "short reply");
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let top = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut out = Vec::new();
        for kind in ["corpus", "regressions"] {
            let Ok(dir) = std::fs::read_dir(top.join(kind).join(target)) else {
                continue;
            };
            for e in dir.flatten() {
                out.push((e.path(), std::fs::read(e.path()).expect("read input")));
            }
        }
        out
    }

    fn replay(target: &str, f: fn(&[u8])) {
        let all = inputs(target);
        assert!(!all.is_empty(), "no kept inputs for {target}");
        for (path, data) in all {
            let r = std::panic::catch_unwind(|| f(&data));
            assert!(r.is_ok(), "{target} fails on {}", path.display());
        }
    }

    #[test]
    fn rpc_decode_inputs() {
        replay("rpc_decode", super::rpc_decode);
    }

    #[test]
    fn key_codec_inputs() {
        replay("key_codec", super::key_codec);
    }

    #[test]
    fn nfs_record_inputs() {
        replay("nfs_record", super::nfs_record);
    }
}

/// Seed inputs for the corpora: well-formed examples of what each target parses, so fuzzing
/// starts from the real formats. `SEALFS_WRITE_SEEDS=1 cargo test -p sealfs-fuzz-targets seeds`
/// writes them to fuzz/corpus.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    use sealfs_core::attr::{FileAttr, FileKind, TimeSpec};
    let mut out = Vec::new();
    let tagged = |tag: u8, body: Vec<u8>| {
        let mut v = vec![tag];
        v.extend(body);
        v
    };
    let map = sealfs_core::placement::ClusterMap::new(7, 4, 2, 1 << 22);
    out.push((
        "rpc_decode",
        "map",
        tagged(0, sealfs_proto::map_to_pb(&map).encode_to_vec()),
    ));
    let a = FileAttr {
        ino: 5,
        kind: FileKind::Regular,
        perm: 0o644,
        nlink: 1,
        uid: 1,
        gid: 1,
        size: 6,
        blocks: 1,
        atime: TimeSpec::default(),
        mtime: TimeSpec::default(),
        ctime: TimeSpec::default(),
        rdev: 0,
        generation: 1,
    };
    out.push((
        "rpc_decode",
        "attr",
        tagged(1, sealfs_proto::attr_to_pb(&a, false, 1 << 22).encode_to_vec()),
    ));
    let w = pb::WriteRequest {
        ctx: Some(sealfs_proto::ctx(3, &sealfs_core::Credentials::root())),
        ino: 5,
        offset: 10,
        data: bytes::Bytes::from_static(b"hello"),
        ..Default::default()
    };
    out.push(("rpc_decode", "write", tagged(2, w.encode_to_vec())));
    let pieces = pb::WriteChunkRequest {
        chunk: Some(pb::ChunkId { ino: 5, index: 0 }),
        data: bytes::Bytes::from_static(b"0123456789"),
        chunk_size: 1 << 22,
        pieces: vec![
            pb::ChunkPiece { offset: 4096, len: 4 },
            pb::ChunkPiece { offset: 0, len: 6 },
        ],
        ..Default::default()
    };
    out.push(("rpc_decode", "chunk-pieces", tagged(9, pieces.encode_to_vec())));
    let secret = sealfs_proto::auth::Secret::new("fuzzing-secret-0123456789").expect("secret");
    out.push((
        "rpc_decode",
        "token",
        tagged(10, secret.token(1_700_000_000).into_bytes()),
    ));
    out.push(("rpc_decode", "status", tagged(11, b"fs".to_vec())));

    out.push(("key_codec", "dentry", keys::dentry(3, 1, b"name")));
    out.push(("key_codec", "inode-key", keys::inode(3, (3 << 48) | 9)));
    out.push(("key_codec", "xattr", keys::xattr(3, 9, b"user.x")));
    let rec = records::InodeRecord {
        attr: a,
        parent: 1,
        chunk_size: 1 << 22,
        flags: records::FLAG_INLINE,
        data: b"inline".to_vec(),
    };
    out.push(("key_codec", "inode-record", rec.encode()));
    let mut s = sums::Sums::default();
    s.set(0, b"block");
    out.push(("key_codec", "sums", s.encode()));

    // RPC calls as a client sends them (the record without its 4-byte mark).
    let call = |prog: u32, vers: u32, procedure: u32, args: &[u32], tail: &[u8]| {
        let mut words = vec![0x1234u32, 0, 2, prog, vers, procedure];
        // AUTH_SYS: stamp, machine name "m", uid 0, gid 0, no extra gids.
        words.extend([1, 20, 0, 1, u32::from_be_bytes(*b"m\0\0\0"), 0, 0, 0]);
        words.extend([0, 0]);
        words.extend_from_slice(args);
        let mut v: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        v.extend_from_slice(tail);
        v
    };
    let fh = sealfs_gateway::handle::make(0x5ea1, 1, 1).data;
    let mut fh_xdr = (fh.len() as u32).to_be_bytes().to_vec();
    fh_xdr.extend_from_slice(&fh);
    while !fh_xdr.len().is_multiple_of(4) {
        fh_xdr.push(0);
    }
    out.push(("nfs_record", "null", call(100003, 3, 0, &[], &[])));
    out.push(("nfs_record", "getattr", call(100003, 3, 1, &[], &fh_xdr)));
    let mut lookup = fh_xdr.clone();
    lookup.extend_from_slice(&[0, 0, 0, 4, b'f', b'i', b'l', b'e']);
    out.push(("nfs_record", "lookup", call(100003, 3, 3, &[], &lookup)));
    let mut rdp = fh_xdr.clone();
    rdp.extend_from_slice(&[0u8; 8 + 8]);
    rdp.extend_from_slice(&4096u32.to_be_bytes());
    rdp.extend_from_slice(&65536u32.to_be_bytes());
    out.push(("nfs_record", "readdirplus", call(100003, 3, 17, &[], &rdp)));
    let mut rd = fh_xdr.clone();
    rd.extend_from_slice(&0u64.to_be_bytes());
    rd.extend_from_slice(&4096u32.to_be_bytes());
    out.push(("nfs_record", "read", call(100003, 3, 6, &[], &rd)));
    out.push((
        "nfs_record",
        "mount",
        call(100005, 3, 1, &[1, u32::from_be_bytes(*b"/\0\0\0")], &[]),
    ));
    out.push(("nfs_record", "getport", call(100000, 2, 3, &[100003, 3, 6, 0], &[])));
    out
}

#[cfg(test)]
mod seed_tests {
    #[test]
    fn seeds_run_clean_and_can_be_written() {
        let top = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        for (target, name, data) in super::seeds() {
            match target {
                "rpc_decode" => super::rpc_decode(&data),
                "key_codec" => super::key_codec(&data),
                _ => super::nfs_record(&data),
            }
            if std::env::var_os("SEALFS_WRITE_SEEDS").is_some() {
                std::fs::create_dir_all(top.join(target)).unwrap();
                std::fs::write(top.join(target).join(format!("seed-{name}")), &data).unwrap();
            }
        }
    }
}
