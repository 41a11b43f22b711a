//! The gateway's wire under bad input, over raw TCP: truncated, oversized and garbage RPC
//! records get an error reply or a closed connection, never a panic, and never stall other
//! clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sealfs_cli::cluster::GatewaySpec;
use sealfs_tests::{pattern, TestCluster};

const NFS: u32 = 100003;
const MOUNT: u32 = 100005;

/// An RPC call record: header (AUTH_SYS root credentials) and arguments, record-marked.
fn call(xid: u32, prog: u32, vers: u32, proc_num: u32, args: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    for v in [xid, 0, 2, prog, vers, proc_num] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    // cred: AUTH_UNIX { stamp, machinename "", uid 0, gid 0, gids [] }
    let cred: Vec<u8> = [0u32, 0, 0, 0, 0].iter().flat_map(|v| v.to_be_bytes()).collect();
    m.extend_from_slice(&1u32.to_be_bytes());
    m.extend_from_slice(&(cred.len() as u32).to_be_bytes());
    m.extend_from_slice(&cred);
    m.extend_from_slice(&[0; 8]); // verf: AUTH_NULL, empty
    m.extend_from_slice(args);
    let mut rec = ((m.len() as u32) | (1 << 31)).to_be_bytes().to_vec();
    rec.extend_from_slice(&m);
    rec
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Read one reply record; None if the server closed the connection.
fn reply(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head).ok()?;
    let len = (u32::from_be_bytes(head) & 0x7fff_ffff) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

fn word(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes(b[i * 4..i * 4 + 4].try_into().unwrap())
}

/// (xid, accept_stat) of an accepted reply; accept_stat 0 is SUCCESS.
fn accepted(b: &[u8]) -> (u32, u32) {
    assert_eq!(word(b, 1), 1, "a reply");
    assert_eq!(word(b, 2), 0, "MSG_ACCEPTED");
    (word(b, 0), word(b, 5))
}

fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

fn null_works(addr: &str, xid: u32) {
    let mut s = connect(addr);
    s.write_all(&call(xid, NFS, 3, 0, &[])).unwrap();
    let r = reply(&mut s).expect("a reply to NULL");
    assert_eq!(accepted(&r), (xid, 0));
}

#[test]
fn bad_records_get_errors_or_closed_connections() {
    let mut c = TestCluster::start_with(1, false, |s| {
        s.gateways = vec![GatewaySpec {
            nfs_listen: "127.0.0.1:0".into(),
            portmap_listen: None,
            args: vec![],
        }]
    });
    let addr = c.cluster.gateway_addr(0).unwrap();
    null_works(&addr, 1);

    // A connection stalled in the middle of a record must not hold up anyone else.
    let mut stalled = connect(&addr);
    stalled.write_all(&(1000u32 | (1 << 31)).to_be_bytes()).unwrap();
    stalled.write_all(&[7u8; 300]).unwrap();

    // Garbage bytes: closed.
    let mut s = connect(&addr);
    s.write_all(&pattern(1, 4096)).unwrap();
    assert!(closed(&mut s), "garbage must close the connection");

    // A record claiming 2 GiB: closed before anything is allocated for it.
    let mut s = connect(&addr);
    s.write_all(&0xffff_ffffu32.to_be_bytes()).unwrap();
    s.write_all(&[0u8; 1024]).unwrap();
    assert!(closed(&mut s), "an oversized record must close the connection");

    // Fragments that add up past the limit: closed.
    let mut s = connect(&addr);
    let frag = vec![0u8; 1 << 20];
    let mut refused = false;
    for _ in 0..4 {
        if s.write_all(&((1u32 << 20).to_be_bytes())).is_err() || s.write_all(&frag).is_err() {
            refused = true;
            break;
        }
    }
    assert!(
        refused || closed(&mut s),
        "a record growing past the limit must close the connection"
    );

    // A truncated record, then the client goes away.
    let mut s = connect(&addr);
    s.write_all(&(500u32 | (1 << 31)).to_be_bytes()).unwrap();
    s.write_all(&[1u8; 10]).unwrap();
    drop(s);

    // A well-formed call with garbage arguments: GARBAGE_ARGS, and the connection stays usable.
    let mut s = connect(&addr);
    s.write_all(&call(10, NFS, 3, 1, &[0xff, 0xff, 0xff, 0xff])).unwrap();
    let r = reply(&mut s).expect("a reply to garbage arguments");
    assert_eq!(accepted(&r), (10, 4), "GARBAGE_ARGS");
    // A forged file handle: an NFS error, not a crash.
    let mut fh = 25u32.to_be_bytes().to_vec();
    fh.extend_from_slice(&pattern(3, 25));
    fh.extend_from_slice(&[0, 0, 0]);
    s.write_all(&call(11, NFS, 3, 1, &fh)).unwrap();
    let r = reply(&mut s).unwrap();
    assert_eq!(accepted(&r), (11, 0));
    let status = word(&r, 6);
    assert!(status == 10001 || status == 70, "BADHANDLE or STALE, got {status}");
    // An opaque claiming 4 GiB inside a call: refused as garbage, no allocation.
    let mut huge = 25u32.to_be_bytes().to_vec();
    huge.extend_from_slice(&[1u8; 28]);
    huge.extend_from_slice(&0u64.to_be_bytes());
    huge.extend_from_slice(&0u32.to_be_bytes());
    huge.extend_from_slice(&2u32.to_be_bytes());
    huge.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
    s.write_all(&call(12, NFS, 3, 7, &huge)).unwrap();
    let r = reply(&mut s).unwrap();
    assert_eq!(accepted(&r), (12, 4), "GARBAGE_ARGS for an impossible length");
    // Unknown procedure, unknown program, NFSv4 on the NFS port.
    s.write_all(&call(13, NFS, 3, 99, &[])).unwrap();
    assert_eq!(accepted(&reply(&mut s).unwrap()), (13, 3), "PROC_UNAVAIL");
    s.write_all(&call(14, 424242, 1, 0, &[])).unwrap();
    assert_eq!(accepted(&reply(&mut s).unwrap()), (14, 1), "PROG_UNAVAIL");
    s.write_all(&call(15, NFS, 4, 0, &[])).unwrap();
    let r = reply(&mut s).unwrap();
    assert_eq!(accepted(&r), (15, 2), "PROG_MISMATCH");
    assert_eq!((word(&r, 6), word(&r, 7)), (3, 3), "only version 3");
    // MOUNT of a path that is not exported.
    let mut path = 9u32.to_be_bytes().to_vec();
    path.extend_from_slice(b"/no/such\0\0\0\0");
    path.truncate(4 + 12);
    s.write_all(&call(16, MOUNT, 3, 1, &path)).unwrap();
    let r = reply(&mut s).unwrap();
    assert_eq!(accepted(&r), (16, 0));
    assert_ne!(word(&r, 6), 0, "MNT of a missing path fails");

    // Meanwhile the stalled connection blocked nobody, and the gateway is alive.
    null_works(&addr, 20);
    drop(stalled);
    assert!(c.cluster.check_running().is_ok(), "every process still runs");
}
