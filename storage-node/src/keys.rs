//! The RocksDB key encoding of the metadata store. This module alone builds and parses keys.
//!
//! Every key of the default column family starts with the partition it belongs to, so one
//! partition is one contiguous key range: it can be copied, replicated, moved or dropped as a
//! unit (`partition_range`). Node-local values live in the `node` column family.
//!
//! Default column family (partition data):
//!
//! | key                                               | value                               |
//! |---------------------------------------------------|-------------------------------------|
//! | p:u16be `I` ino:u64be                             | inode record (records.rs)           |
//! | p:u16be `D` parent:u64be cookie:u64be name        | dentry record (records.rs)          |
//! | p:u16be `X` ino:u64be name                        | xattr value (raw bytes)             |
//! | p:u16be `C`                                       | inode sequence high-water: u64be    |
//! | p:u16be `T` intent:u64be                          | IntentRecord (protobuf, versioned)  |
//! | p:u16be `A` intent:u64be step:u32be               | applied-step result: u64be          |
//! | p:u16be `G` ino:u64be                             | chunk removal record (records.rs)   |
//!
//! `p` is the partition of the inode (`I`, `X`, `G`), of the parent directory (`D`), of the
//! coordinating request (`T`) or of the step's target (`A`).
//!
//! `node` column family: `format` (u64be store format), `node_id`, `cluster_id`,
//! `intent_seq` (u64be high-water of intent ids), `scrub_done_at` (u64be: when the last scrub
//! pass ended, or the node first started, in seconds since 1970; scrub.rs), `scrub_resume`
//! (u64be: the partition a scrub pass cut short by a restart goes on from; 0: none), `wal-fill` (a
//! scratch value that start-up writes and deletes to grow a WAL for reuse; absent otherwise).
//!
//! Big-endian integers keep keys of one parent (or inode) contiguous and in numeric order, so a
//! directory listing is one range scan in cookie (name hash) order, and the cookie is stable.

use sealfs_core::hash::hash64;
use sealfs_core::{InodeId, PartitionId};

/// Format version of the metadata store, kept in the `node` column family under `format`.
pub const FORMAT_VERSION: u64 = 1;

/// Name of the node-local column family.
pub const NODE_CF: &str = "node";

/// The `node` column family's scratch key that start-up writes to grow a WAL for reuse.
pub const WAL_FILL: &[u8] = b"wal-fill";

/// The `node` column family's key of when the last scrub pass ended (scrub.rs).
pub const SCRUB_DONE_AT: &str = "scrub_done_at";
/// The `node` column family's key of the partition an unfinished scrub pass goes on from.
pub const SCRUB_RESUME: &str = "scrub_resume";

/// Smallest directory cookie handed out: 0 starts a listing, 1 and 2 are "." and "..".
pub const MIN_COOKIE: u64 = 3;

const INODE: u8 = b'I';
const DENTRY: u8 = b'D';
const XATTR: u8 = b'X';
const COUNTER: u8 = b'C';
const INTENT: u8 = b'T';
const APPLIED: u8 = b'A';
const GC: u8 = b'G';

fn head(p: PartitionId, tag: u8, cap: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + cap);
    // Partitions are below 65536 (checked when a map is accepted), so 16 bits hold them.
    k.extend_from_slice(&(p as u16).to_be_bytes());
    k.push(tag);
    k
}

/// The partition a key belongs to.
pub fn key_partition(key: &[u8]) -> Option<PartitionId> {
    (key.len() >= 3).then(|| PartitionId::from(u16::from_be_bytes([key[0], key[1]])))
}

/// First key and end (exclusive) of a whole partition.
pub fn partition_range(p: PartitionId) -> (Vec<u8>, Vec<u8>) {
    let start = (p as u16).to_be_bytes().to_vec();
    (start.clone(), prefix_end(&start))
}

/// Key of an inode record.
pub fn inode(p: PartitionId, ino: InodeId) -> Vec<u8> {
    let mut k = head(p, INODE, 8);
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

/// Stable cookie of a name in a directory listing.
pub fn name_cookie(name: &[u8]) -> u64 {
    hash64(name).max(MIN_COOKIE)
}

/// Key of a directory entry.
pub fn dentry(p: PartitionId, parent: InodeId, name: &[u8]) -> Vec<u8> {
    let mut k = dentry_prefix(p, parent);
    k.extend_from_slice(&name_cookie(name).to_be_bytes());
    k.extend_from_slice(name);
    k
}

/// Prefix of all entries of a directory.
pub fn dentry_prefix(p: PartitionId, parent: InodeId) -> Vec<u8> {
    let mut k = head(p, DENTRY, 16 + 32);
    k.extend_from_slice(&parent.to_be_bytes());
    k
}

/// Where a listing resumes: the first key after every entry with cookie <= `cookie`.
pub fn dentry_seek(p: PartitionId, parent: InodeId, cookie: u64) -> Vec<u8> {
    let mut k = dentry_prefix(p, parent);
    match cookie.checked_add(1) {
        Some(c) => k.extend_from_slice(&c.to_be_bytes()),
        None => return prefix_end(&k),
    }
    k
}

/// The inode of an inode record's key.
pub fn parse_inode(key: &[u8]) -> Option<InodeId> {
    if key.len() != 11 || key[2] != INODE {
        return None;
    }
    Some(u64::from_be_bytes(key[3..11].try_into().ok()?))
}

/// Split a dentry key into (parent, cookie, name).
pub fn parse_dentry(key: &[u8]) -> Option<(InodeId, u64, &[u8])> {
    if key.len() < 19 || key[2] != DENTRY {
        return None;
    }
    let parent = u64::from_be_bytes(key[3..11].try_into().ok()?);
    let cookie = u64::from_be_bytes(key[11..19].try_into().ok()?);
    Some((parent, cookie, &key[19..]))
}

/// Key of an xattr.
pub fn xattr(p: PartitionId, ino: InodeId, name: &[u8]) -> Vec<u8> {
    let mut k = xattr_prefix(p, ino);
    k.extend_from_slice(name);
    k
}

/// Prefix of all xattrs of an inode.
pub fn xattr_prefix(p: PartitionId, ino: InodeId) -> Vec<u8> {
    let mut k = head(p, XATTR, 8 + 32);
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

/// The xattr name inside an xattr key.
pub fn parse_xattr_name(key: &[u8]) -> Option<&[u8]> {
    (key.len() >= 11 && key[2] == XATTR).then(|| &key[11..])
}

/// Key of a partition's inode sequence high-water mark.
pub fn counter(p: PartitionId) -> Vec<u8> {
    head(p, COUNTER, 0)
}

/// Key of an intent record coordinated by partition `p`.
pub fn intent(p: PartitionId, id: u64) -> Vec<u8> {
    let mut k = head(p, INTENT, 8);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Prefix of the intents of a partition.
pub fn intent_prefix(p: PartitionId) -> Vec<u8> {
    head(p, INTENT, 0)
}

/// The intent id inside an intent key.
pub fn parse_intent(key: &[u8]) -> Option<u64> {
    (key.len() == 11 && key[2] == INTENT).then(|| u64::from_be_bytes(key[3..11].try_into().expect("8")))
}

/// Key of an applied-step marker, kept in the partition the step changed.
pub fn applied(p: PartitionId, intent: u64, step: u32) -> Vec<u8> {
    let mut k = applied_prefix(p, intent);
    k.extend_from_slice(&step.to_be_bytes());
    k
}

/// Prefix of the markers of one intent in one partition.
pub fn applied_prefix(p: PartitionId, intent: u64) -> Vec<u8> {
    let mut k = head(p, APPLIED, 12);
    k.extend_from_slice(&intent.to_be_bytes());
    k
}

/// Key of the chunk removal record of an inode.
pub fn gc(p: PartitionId, ino: InodeId) -> Vec<u8> {
    let mut k = gc_prefix(p);
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

/// Prefix of the chunk removal records of a partition.
pub fn gc_prefix(p: PartitionId) -> Vec<u8> {
    head(p, GC, 8)
}

/// The inode inside a chunk removal key.
pub fn parse_gc(key: &[u8]) -> Option<InodeId> {
    (key.len() == 11 && key[2] == GC).then(|| u64::from_be_bytes(key[3..11].try_into().expect("8")))
}

/// The key right after every key starting with `prefix` (for range ends).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: no key of this length order is larger, so append one.
    let mut end = prefix.to_vec();
    end.push(0xff);
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dentry_roundtrip_and_order() {
        let k = dentry(7, 42, b"hello");
        let (p, c, n) = parse_dentry(&k).unwrap();
        assert_eq!((p, n), (42, &b"hello"[..]));
        assert_eq!(c, name_cookie(b"hello"));
        assert!(c >= MIN_COOKIE);
        assert!(k.starts_with(&dentry_prefix(7, 42)));
        // Resuming after an entry's cookie skips it and keeps later ones.
        assert!(dentry_seek(7, 42, c).as_slice() > k.as_slice());
        assert!(dentry_seek(7, 42, c - 1).as_slice() <= k.as_slice());
        assert!(dentry_seek(7, 42, u64::MAX).as_slice() > dentry(7, 42, &[0xff; 255]).as_slice());
        // Entries of different parents do not interleave.
        assert!(dentry(7, 43, b"a") > dentry(7, 42, &[0xff; 255]));
        assert!(parse_dentry(b"\0\0Dshort").is_none());
        assert_eq!(key_partition(&k), Some(7));
    }

    #[test]
    fn partitions_are_contiguous_ranges() {
        let (start, end) = partition_range(5);
        for k in [
            inode(5, 1),
            dentry(5, 9, &[0xff; 255]),
            xattr(5, u64::MAX, b"user.x"),
            counter(5),
            intent(5, u64::MAX),
            applied(5, u64::MAX, u32::MAX),
            gc(5, u64::MAX),
        ] {
            assert!(k >= start && k < end, "{k:?}");
            assert_eq!(key_partition(&k), Some(5));
        }
        assert!(inode(6, 0) >= end);
        let (_, end) = partition_range(65535);
        assert!(gc(65535, u64::MAX) < end);
    }

    #[test]
    fn parse_helpers() {
        assert_eq!(parse_intent(&intent(3, 99)), Some(99));
        assert_eq!(parse_gc(&gc(3, 77)), Some(77));
        assert_eq!(parse_xattr_name(&xattr(3, 5, b"user.a")), Some(&b"user.a"[..]));
        assert_eq!(parse_intent(&gc(3, 77)), None);
    }

    #[test]
    fn prefix_end_bounds() {
        assert_eq!(prefix_end(b"A\x01"), b"A\x02".to_vec());
        assert_eq!(prefix_end(b"A\xff"), b"B".to_vec());
        assert!(applied(1, 7, u32::MAX).as_slice() < prefix_end(&applied_prefix(1, 7)).as_slice());
    }
}
