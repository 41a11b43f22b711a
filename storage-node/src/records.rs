//! Persisted record formats of the metadata store: inode and directory-entry records. Each starts
//! with a format version byte; a record of an unknown version is reported, never misread.

use sealfs_core::attr::{FileAttr, FileKind, TimeSpec};
use sealfs_core::{FsError, FsResult, InodeId};

const INODE_VERSION: u8 = 1;
const DENTRY_VERSION: u8 = 1;
const GC_VERSION: u8 = 1;

/// Inode flag: data is stored in the record.
pub const FLAG_INLINE: u32 = 1;
/// Inode flag: a directory being removed; refuses new entries.
pub const FLAG_DYING: u32 = 2;

/// An inode as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InodeRecord {
    pub attr: FileAttr,
    /// Directories: the parent directory.
    pub parent: InodeId,
    pub chunk_size: u32,
    pub flags: u32,
    /// Inline file data, or a symlink's target.
    pub data: Vec<u8>,
}

impl InodeRecord {
    /// Data lives in the record.
    pub fn is_inline(&self) -> bool {
        self.flags & FLAG_INLINE != 0
    }

    /// Recompute st_blocks from the size.
    pub fn update_blocks(&mut self) {
        self.attr.blocks = self.attr.size.div_ceil(512);
    }

    /// Encode for storage.
    pub fn encode(&self) -> Vec<u8> {
        let a = &self.attr;
        let mut b = Vec::with_capacity(96 + self.data.len());
        b.push(INODE_VERSION);
        b.push(a.kind as u8);
        for v in [a.perm, a.nlink, a.uid, a.gid, self.chunk_size, self.flags] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [a.size, a.blocks, a.rdev, a.generation, self.parent] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for t in [a.atime, a.mtime, a.ctime] {
            b.extend_from_slice(&t.sec.to_le_bytes());
            b.extend_from_slice(&t.nsec.to_le_bytes());
        }
        b.extend_from_slice(&(self.data.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.data);
        b
    }

    /// Decode a stored record of inode `ino`.
    pub fn decode(ino: InodeId, b: &[u8]) -> FsResult<InodeRecord> {
        let mut r = Reader { b, pos: 0, ino };
        let version = r.u8()?;
        if version != INODE_VERSION {
            return Err(FsError::Io(format!("inode {ino:#x}: unknown record version {version}")));
        }
        let kind = FileKind::from_u8(r.u8()?).ok_or_else(|| r.bad("kind"))?;
        let perm = r.u32()?;
        let nlink = r.u32()?;
        let uid = r.u32()?;
        let gid = r.u32()?;
        let chunk_size = r.u32()?;
        let flags = r.u32()?;
        let size = r.u64()?;
        let blocks = r.u64()?;
        let rdev = r.u64()?;
        let generation = r.u64()?;
        let parent = r.u64()?;
        let atime = r.time()?;
        let mtime = r.time()?;
        let ctime = r.time()?;
        let len = r.u32()? as usize;
        let data = r.take(len)?.to_vec();
        Ok(InodeRecord {
            attr: FileAttr {
                ino,
                kind,
                perm,
                nlink,
                uid,
                gid,
                size,
                blocks,
                atime,
                mtime,
                ctime,
                rdev,
                generation,
            },
            parent,
            chunk_size,
            flags,
            data,
        })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    ino: InodeId,
}

impl<'a> Reader<'a> {
    fn bad(&self, what: &str) -> FsError {
        FsError::Io(format!("inode {:#x}: corrupt record ({what})", self.ino))
    }
    fn take(&mut self, n: usize) -> FsResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| self.bad("short"))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> FsResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> FsResult<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> FsResult<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn time(&mut self) -> FsResult<TimeSpec> {
        let sec = self.u64()? as i64;
        let nsec = self.u32()?;
        Ok(TimeSpec { sec, nsec })
    }
}

/// Chunks of a file still to be removed: everything at or past `from` up to the old size `to`.
/// Written in the same batch as the change that frees them (unlink, truncate), so a crash
/// never leaks or resurrects data; the cleanup worker deletes the record when done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcRecord {
    pub from: u64,
    pub to: u64,
    pub chunk_size: u32,
}

impl GcRecord {
    /// Encode for storage.
    pub fn encode(&self) -> [u8; 21] {
        let mut b = [0u8; 21];
        b[0] = GC_VERSION;
        b[1..9].copy_from_slice(&self.from.to_le_bytes());
        b[9..17].copy_from_slice(&self.to.to_le_bytes());
        b[17..].copy_from_slice(&self.chunk_size.to_le_bytes());
        b
    }

    /// Decode a stored record.
    pub fn decode(b: &[u8]) -> FsResult<GcRecord> {
        if b.len() != 21 || b[0] != GC_VERSION {
            return Err(FsError::Io("corrupt or unknown-version chunk removal record".into()));
        }
        Ok(GcRecord {
            from: u64::from_le_bytes(b[1..9].try_into().expect("8")),
            to: u64::from_le_bytes(b[9..17].try_into().expect("8")),
            chunk_size: u32::from_le_bytes(b[17..21].try_into().expect("4")),
        })
    }

    /// Merge another pending removal of the same inode: the union of both ranges.
    pub fn merge(self, other: GcRecord) -> GcRecord {
        GcRecord {
            from: self.from.min(other.from),
            to: self.to.max(other.to),
            chunk_size: self.chunk_size,
        }
    }
}

/// A directory entry as stored: the target inode and its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DentryRecord {
    pub ino: InodeId,
    pub kind: FileKind,
}

impl DentryRecord {
    /// Encode for storage.
    pub fn encode(&self) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[0] = DENTRY_VERSION;
        b[1] = self.kind as u8;
        b[2..].copy_from_slice(&self.ino.to_le_bytes());
        b
    }

    /// Decode a stored entry.
    pub fn decode(b: &[u8]) -> FsResult<DentryRecord> {
        if b.len() != 10 || b[0] != DENTRY_VERSION {
            return Err(FsError::Io("corrupt or unknown-version directory entry".into()));
        }
        let kind = FileKind::from_u8(b[1]).ok_or_else(|| FsError::Io("bad entry kind".into()))?;
        Ok(DentryRecord {
            ino: u64::from_le_bytes(b[2..].try_into().expect("8")),
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_roundtrip() {
        let rec = InodeRecord {
            attr: FileAttr {
                ino: 77,
                kind: FileKind::Regular,
                perm: 0o4755,
                nlink: 2,
                uid: 1000,
                gid: 100,
                size: 12345,
                blocks: 25,
                atime: TimeSpec { sec: -1, nsec: 5 },
                mtime: TimeSpec {
                    sec: 1_700_000_000,
                    nsec: 999,
                },
                ctime: TimeSpec { sec: 3, nsec: 0 },
                rdev: 0x0801,
                generation: 9,
            },
            parent: 1,
            chunk_size: 4 << 20,
            flags: FLAG_INLINE,
            data: b"abc".to_vec(),
        };
        assert_eq!(InodeRecord::decode(77, &rec.encode()).unwrap(), rec);
        let enc = rec.encode();
        assert!(InodeRecord::decode(77, &enc[..enc.len() - 1]).is_err());
        let mut bad = enc.clone();
        bad[0] = 99;
        assert!(InodeRecord::decode(77, &bad).is_err());
    }

    #[test]
    fn gc_roundtrip() {
        let g = GcRecord {
            from: 5,
            to: 1 << 40,
            chunk_size: 4 << 20,
        };
        assert_eq!(GcRecord::decode(&g.encode()).unwrap(), g);
        assert!(GcRecord::decode(&g.encode()[..20]).is_err());
        let m = g.merge(GcRecord {
            from: 0,
            to: 10,
            chunk_size: 4 << 20,
        });
        assert_eq!((m.from, m.to), (0, 1 << 40));
    }

    #[test]
    fn dentry_roundtrip() {
        let d = DentryRecord {
            ino: 5,
            kind: FileKind::Directory,
        };
        assert_eq!(DentryRecord::decode(&d.encode()).unwrap(), d);
        assert!(DentryRecord::decode(&[1, 2]).is_err());
    }
}
