//! Identifiers. An inode id carries its partition in the high 16 bits and a per-partition
//! sequence number in the low 48 bits, so any component can route a file handle with no state.

/// A 64-bit inode id: `partition << 48 | sequence`.
pub type InodeId = u64;
/// A partition number, below the cluster's partition count.
pub type PartitionId = u32;
/// A storage node's persistent id (assigned by the manager at first registration).
pub type NodeId = u64;

/// Bits of the inode id that hold the sequence.
pub const SEQ_BITS: u32 = 48;
/// The largest sequence number a partition can hand out.
pub const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;
/// The root directory: partition 0, sequence 1 (also FUSE's root inode number).
pub const ROOT_INO: InodeId = 1;

/// The partition an inode record lives in.
pub fn ino_partition(ino: InodeId) -> PartitionId {
    (ino >> SEQ_BITS) as PartitionId
}

/// The sequence part of an inode id.
pub fn ino_seq(ino: InodeId) -> u64 {
    ino & MAX_SEQ
}

/// Build an inode id from its parts.
pub fn make_ino(partition: PartitionId, seq: u64) -> InodeId {
    debug_assert!(seq <= MAX_SEQ && seq > 0);
    (u64::from(partition) << SEQ_BITS) | seq
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let ino = make_ino(255, 42);
        assert_eq!(ino_partition(ino), 255);
        assert_eq!(ino_seq(ino), 42);
        assert_eq!(ino_partition(ROOT_INO), 0);
        assert_eq!(make_ino(0, 1), ROOT_INO);
    }
}
