//! How long an NFS server took to answer each call, from a packet capture taken on the server's
//! host (`tcpdump -s 8400 -w F tcp port P`): the time from a call's first packet to its
//! reply's. Next to the client's own round trips (its mountstats) it splits a slower call into
//! time in the server and time on the way (here: qemu's user-mode network and the guest's kernel).
//!
//! Only the first bytes of each packet are needed: every TCP direction is followed by sequence
//! number from one ONC RPC record mark to the next, so calls and replies are found wherever they
//! start (several in one packet, or one spread over many) without keeping their data. A message
//! that starts past what was kept of its packet is missed, and so is what follows it up to the
//! next packet that starts with a message; the counts say how many were found.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use anyhow::{bail, Context};

/// The NFS program and version whose calls are timed.
const NFS_PROGRAM: u32 = 100_003;
const NFS_V3: u32 = 3;
/// A record longer than this is taken for a misread mark, not an NFS message.
const MAX_RECORD: u32 = 64 << 20;

/// Names of the NFSv3 procedures (RFC 1813), by number.
const PROCEDURES: [&str; 22] = [
    "NULL",
    "GETATTR",
    "SETATTR",
    "LOOKUP",
    "ACCESS",
    "READLINK",
    "READ",
    "WRITE",
    "CREATE",
    "MKDIR",
    "SYMLINK",
    "MKNOD",
    "REMOVE",
    "RMDIR",
    "RENAME",
    "LINK",
    "READDIR",
    "READDIRPLUS",
    "FSSTAT",
    "FSINFO",
    "PATHCONF",
    "COMMIT",
];

/// The server's answer times of one procedure.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CallTimes {
    /// Calls whose call and reply were both found.
    pub count: u64,
    /// Sum of their times, in seconds.
    pub total_secs: f64,
}

impl CallTimes {
    /// Mean time to answer, in milliseconds.
    pub fn mean_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.total_secs * 1000.0 / self.count as f64
        }
    }
}

/// An address and TCP port.
type Endpoint = (IpAddr, u16);

/// One TCP segment as captured.
struct Segment<'a> {
    time: f64,
    src: Endpoint,
    dst: Endpoint,
    seq: u32,
    /// The payload's full length on the wire (the capture may hold less of it).
    len: u32,
    /// The captured start of the payload.
    data: &'a [u8],
}

/// Where the next record of one TCP direction starts.
#[derive(Default)]
struct Direction {
    /// Sequence number of the next record mark, once one was seen.
    next_mark: Option<u32>,
    /// The record being read is a later fragment of a message (no RPC header at its start).
    continued: bool,
}

/// The server's answer times per NFSv3 procedure name, for the server on TCP `port`, from the
/// pcap file contents `file`.
pub fn nfs_server_times(file: &[u8], port: u16) -> anyhow::Result<BTreeMap<&'static str, CallTimes>> {
    let mut dirs: HashMap<(Endpoint, Endpoint), Direction> = HashMap::new();
    // (client address, xid) -> (time of the call, procedure)
    let mut pending: HashMap<(Endpoint, u32), (f64, u32)> = HashMap::new();
    let mut out: BTreeMap<&'static str, CallTimes> = BTreeMap::new();
    for seg in segments(file)? {
        let seg = seg?;
        let to_server = seg.dst.1 == port;
        if !to_server && seg.src.1 != port {
            continue;
        }
        let dir = dirs.entry((seg.src, seg.dst)).or_default();
        for msg in records(dir, &seg) {
            if to_server {
                if let Some((xid, proc_)) = parse_call(msg) {
                    pending.insert((seg.src, xid), (seg.time, proc_));
                }
            } else if let Some(xid) = parse_reply(msg) {
                if let Some((t0, proc_)) = pending.remove(&(seg.dst, xid)) {
                    let e = out.entry(PROCEDURES[proc_ as usize]).or_default();
                    e.count += 1;
                    e.total_secs += (seg.time - t0).max(0.0);
                }
            }
        }
    }
    Ok(out)
}

/// The captured starts of the messages that begin in `seg` (each slice starts at an RPC
/// header), advancing `dir` past them.
fn records<'a>(dir: &mut Direction, seg: &Segment<'a>) -> Vec<&'a [u8]> {
    let mut found = Vec::new();
    if seg.len == 0 {
        return found;
    }
    // resync: no mark is known in this packet, so its start is taken for one if it looks like
    // a message.
    let (mut pos, resync) = match dir.next_mark {
        Some(n) => {
            let d = n.wrapping_sub(seg.seq);
            if d < seg.len {
                (d as usize, false)
            } else if (d as i32) > 0 {
                // Inside a record that began earlier.
                return found;
            } else {
                // A packet was missed.
                (0, true)
            }
        }
        None => (0, true),
    };
    if resync {
        dir.continued = false;
    }
    loop {
        let Some(mark) = word(seg.data.get(pos..).unwrap_or_default(), 0) else {
            // The next mark is past what was captured of this packet: lost until one starts a
            // packet again.
            dir.next_mark = None;
            return found;
        };
        let (last, len) = (mark & 0x8000_0000 != 0, mark & 0x7fff_ffff);
        if len > MAX_RECORD || len < 8 && !dir.continued {
            dir.next_mark = None;
            return found;
        }
        let msg = &seg.data[(pos + 4).min(seg.data.len())..];
        if resync && pos == 0 && !plausible(msg) {
            // Not a mark after all (the middle of a message): its "length" means nothing.
            dir.next_mark = None;
            return found;
        }
        if !dir.continued {
            found.push(msg);
        }
        dir.continued = !last;
        let next = seg.seq.wrapping_add(pos as u32).wrapping_add(4).wrapping_add(len);
        dir.next_mark = Some(next);
        let d = next.wrapping_sub(seg.seq);
        if d >= seg.len {
            return found;
        }
        pos = d as usize;
    }
}

/// Whether the start of a message taken up after a lost mark looks like an RPC call or reply.
fn plausible(msg: &[u8]) -> bool {
    match (word(msg, 1), word(msg, 2)) {
        (Some(0), Some(rpcvers)) => rpcvers == 2,
        (Some(1), Some(reply_stat)) => reply_stat <= 1,
        _ => false,
    }
}

/// The `n`th big-endian 32-bit word of `b`.
fn word(b: &[u8], n: usize) -> Option<u32> {
    b.get(n * 4..n * 4 + 4)
        .map(|w| u32::from_be_bytes(w.try_into().expect("4 bytes")))
}

/// An NFSv3 call: its xid and procedure.
fn parse_call(msg: &[u8]) -> Option<(u32, u32)> {
    let (xid, kind, rpcvers, prog, vers, proc_) = (
        word(msg, 0)?,
        word(msg, 1)?,
        word(msg, 2)?,
        word(msg, 3)?,
        word(msg, 4)?,
        word(msg, 5)?,
    );
    (kind == 0 && rpcvers == 2 && prog == NFS_PROGRAM && vers == NFS_V3 && (proc_ as usize) < PROCEDURES.len())
        .then_some((xid, proc_))
}

/// A reply: its xid.
fn parse_reply(msg: &[u8]) -> Option<u32> {
    (word(msg, 1)? == 1).then_some(word(msg, 0)?)
}

/// The TCP segments of a pcap file (classic format, Ethernet or Linux cooked captures).
fn segments(file: &[u8]) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Segment<'_>>>> {
    let head = file.get(..24).context("not a pcap file: too short")?;
    let magic = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    let (big, nanos) = match magic {
        0xa1b2_c3d4 => (false, false),
        0xa1b2_3c4d => (false, true),
        0xd4c3_b2a1 => (true, false),
        0x4d3c_b2a1 => (true, true),
        _ => bail!("not a pcap file (magic {magic:#x}); pcapng is not read: capture with tcpdump -w"),
    };
    let u32_at = move |b: &[u8], at: usize| -> u32 {
        let w: [u8; 4] = b[at..at + 4].try_into().expect("4 bytes");
        if big {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        }
    };
    let link = u32_at(head, 20);
    if ![1, 113, 276].contains(&link) {
        bail!("pcap link type {link} is not read (Ethernet, Linux cooked v1 and v2 are)");
    }
    let mut at = 24;
    Ok(std::iter::from_fn(move || loop {
        let rec = file.get(at..at + 16)?;
        let (secs, frac, incl) = (u32_at(rec, 0), u32_at(rec, 4), u32_at(rec, 8) as usize);
        let Some(frame) = file.get(at + 16..at + 16 + incl) else {
            return Some(Err(anyhow::anyhow!("pcap file cut short in a packet")));
        };
        at += 16 + incl;
        let time = f64::from(secs) + f64::from(frac) / if nanos { 1e9 } else { 1e6 };
        if let Some(seg) = tcp_segment(link, frame, time) {
            return Some(Ok(seg));
        }
    }))
}

/// The TCP segment in one captured frame, if it holds one.
fn tcp_segment(link: u32, frame: &[u8], time: f64) -> Option<Segment<'_>> {
    let be16 = |b: &[u8], at: usize| b.get(at..at + 2).map(|w| u16::from_be_bytes([w[0], w[1]]));
    let (ethertype, ip) = match link {
        1 => (be16(frame, 12)?, frame.get(14..)?),
        113 => (be16(frame, 14)?, frame.get(16..)?),
        _ => (be16(frame, 0)?, frame.get(20..)?),
    };
    let (src, dst, tcp, tcp_len) = match ethertype {
        0x0800 => {
            let ihl = usize::from(*ip.first()? & 0x0f) * 4;
            if *ip.get(9)? != 6 || ihl < 20 {
                return None;
            }
            let total = usize::from(be16(ip, 2)?);
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (
                IpAddr::from(src),
                IpAddr::from(dst),
                ip.get(ihl..)?,
                total.checked_sub(ihl)?,
            )
        }
        0x86dd => {
            if *ip.get(6)? != 6 {
                return None;
            }
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (
                IpAddr::from(src),
                IpAddr::from(dst),
                ip.get(40..)?,
                usize::from(be16(ip, 4)?),
            )
        }
        _ => return None,
    };
    let off = usize::from(*tcp.get(12)? >> 4) * 4;
    let len = tcp_len.checked_sub(off)? as u32;
    Some(Segment {
        time,
        src: (src, be16(tcp, 0)?),
        dst: (dst, be16(tcp, 2)?),
        seq: u32::from_be_bytes(tcp.get(4..8)?.try_into().ok()?),
        len,
        data: tcp.get(off..).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: u16 = 2049;
    const CLIENT: u16 = 700;
    const SNAP: usize = 14 + 20 + 20 + 120;

    /// A classic little-endian pcap (microseconds, Ethernet) of `packets`: (time in µs, from the
    /// client?, sequence number, payload), each cut to SNAP bytes like `tcpdump -s`.
    fn pcap(packets: &[(u64, bool, u32, Vec<u8>)]) -> Vec<u8> {
        let mut f = Vec::new();
        for w in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, SNAP as u32, 1] {
            f.extend_from_slice(&w.to_le_bytes());
        }
        for (t, from_client, seq, payload) in packets {
            let (sp, dp) = if *from_client {
                (CLIENT, SERVER)
            } else {
                (SERVER, CLIENT)
            };
            let mut frame = vec![0u8; 12];
            frame.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = (20 + 20 + payload.len()) as u16;
            frame.extend_from_slice(&[0x45, 0]);
            frame.extend_from_slice(&total.to_be_bytes());
            frame.extend_from_slice(&[0, 0, 0, 0, 64, 6, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
            frame.extend_from_slice(&sp.to_be_bytes());
            frame.extend_from_slice(&dp.to_be_bytes());
            frame.extend_from_slice(&seq.to_be_bytes());
            frame.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x18, 0, 0, 0, 0, 0, 0]);
            frame.extend_from_slice(payload);
            let orig = frame.len();
            frame.truncate(SNAP);
            for w in [
                (t / 1_000_000) as u32,
                (t % 1_000_000) as u32,
                frame.len() as u32,
                orig as u32,
            ] {
                f.extend_from_slice(&w.to_le_bytes());
            }
            f.extend_from_slice(&frame);
        }
        f
    }

    /// One RPC record: mark, then `words`, then `pad` zero bytes.
    fn record(words: &[u32], pad: usize) -> Vec<u8> {
        let len = (words.len() * 4 + pad) as u32;
        let mut r = (0x8000_0000 | len).to_be_bytes().to_vec();
        words.iter().for_each(|w| r.extend_from_slice(&w.to_be_bytes()));
        r.resize(r.len() + pad, 0);
        r
    }

    fn call(xid: u32, proc_: u32, pad: usize) -> Vec<u8> {
        record(&[xid, 0, 2, NFS_PROGRAM, NFS_V3, proc_], pad)
    }

    fn reply(xid: u32, pad: usize) -> Vec<u8> {
        record(&[xid, 1, 0], pad)
    }

    #[test]
    fn times_calls_found_wherever_their_records_start() {
        // CREATE (8) answered after 500 µs; two LOOKUPs (3) sent in one packet and answered in
        // one (300 µs each); a WRITE (7) of 100 KiB over three packets, only their starts
        // captured, with a READ (6) right behind it in the third (its start not captured: lost),
        // then a READ in a packet of its own, answered after 1 ms.
        let mut two_calls = call(2, 3, 40);
        two_calls.extend(call(3, 3, 40));
        let mut two_replies = reply(2, 60);
        two_replies.extend(reply(3, 60));
        let write = call(4, 7, 100 * 1024);
        let mut tail = write[60_000..].to_vec();
        tail.extend(call(5, 6, 16));
        let c_seq = [1000u32, 1000 + 64, 1000 + 64 + two_calls.len() as u32];
        let w_seq = c_seq[2] + 60_000;
        let s_seq = [9000u32, 9000 + 60, 9000 + 60 + two_replies.len() as u32];
        let packets = vec![
            (10_000_000, true, c_seq[0], call(1, 8, 36)),
            (10_000_500, false, s_seq[0], reply(1, 44)),
            (10_001_000, true, c_seq[1], two_calls.clone()),
            (10_001_300, false, s_seq[1], two_replies.clone()),
            (10_002_000, true, c_seq[2], write[..30_000].to_vec()),
            (10_002_100, true, c_seq[2] + 30_000, write[30_000..60_000].to_vec()),
            (10_002_200, true, w_seq, tail.clone()),
            (10_002_300, true, w_seq + tail.len() as u32, call(6, 6, 16)),
            (10_002_900, false, s_seq[2], reply(5, 100)),
            (10_003_300, false, s_seq[2] + 116, reply(6, 100)),
        ];
        let times = nfs_server_times(&pcap(&packets), SERVER).unwrap();
        assert_eq!(times.len(), 3, "{times:?}");
        let create = &times["CREATE"];
        assert_eq!(create.count, 1);
        assert!((create.mean_ms() - 0.5).abs() < 1e-6, "{create:?}");
        let lookup = &times["LOOKUP"];
        assert_eq!(lookup.count, 2);
        assert!((lookup.mean_ms() - 0.3).abs() < 1e-6, "{lookup:?}");
        let read = &times["READ"];
        assert_eq!(read.count, 1, "only the READ that starts a packet is found");
        assert!((read.mean_ms() - 1.0).abs() < 1e-6, "{read:?}");
        assert!(!times.contains_key("WRITE"), "the WRITE got no reply");
    }

    #[test]
    fn picks_up_again_after_a_lost_packet_and_ignores_other_ports() {
        // The packet that held the mark of the second call is missing: its reply is not timed,
        // the third call (starting a packet) is.
        let first = call(1, 1, 20);
        let packets = vec![
            (1_000, true, 1, first.clone()),
            (1_100, false, 1, reply(1, 10)),
            (2_000, true, 1 + first.len() as u32 + 200, call(3, 4, 20)),
            (2_400, false, 1 + reply(1, 10).len() as u32, reply(3, 10)),
        ];
        let times = nfs_server_times(&pcap(&packets), SERVER).unwrap();
        assert_eq!(times["GETATTR"].count, 1);
        assert_eq!(times["ACCESS"].count, 1);
        assert!((times["ACCESS"].mean_ms() - 0.4).abs() < 1e-6);
        assert!(nfs_server_times(&pcap(&packets), 111).unwrap().is_empty());
    }

    #[test]
    fn garbage_in_packets_or_records_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let good = pcap(&[(1, true, 1, call(1, 1, 20)), (2, false, 1, reply(1, 10))]);
        for _ in 0..2000 {
            let mut f = good.clone();
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(24..f.len());
                f[i] = rng.random();
            }
            if rng.random_bool(0.3) {
                f.truncate(rng.random_range(24..f.len()));
            }
            // An error or a (possibly empty) answer: never a panic.
            let _ = nfs_server_times(&f, SERVER);
        }
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert!(nfs_server_times(b"short", SERVER).is_err());
        assert!(nfs_server_times(&[0u8; 24], SERVER).is_err());
        let mut cut = pcap(&[(1, true, 1, call(1, 1, 20))]);
        cut.truncate(cut.len() - 5);
        assert!(nfs_server_times(&cut, SERVER).is_err());
    }
}
