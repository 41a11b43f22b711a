//! File attributes as every frontend sees them, and the set of changes a setattr may carry.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::ids::InodeId;

/// The kind of an inode. The numeric values are persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FileKind {
    Regular = 1,
    Directory = 2,
    Symlink = 3,
    Fifo = 4,
    Socket = 5,
    CharDevice = 6,
    BlockDevice = 7,
}

impl FileKind {
    /// Decode a persisted or wire value.
    pub fn from_u8(v: u8) -> Option<FileKind> {
        Some(match v {
            1 => FileKind::Regular,
            2 => FileKind::Directory,
            3 => FileKind::Symlink,
            4 => FileKind::Fifo,
            5 => FileKind::Socket,
            6 => FileKind::CharDevice,
            7 => FileKind::BlockDevice,
            _ => return None,
        })
    }

    /// The kind encoded in the S_IFMT bits of a mode.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::Regular,
            libc::S_IFDIR => FileKind::Directory,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => return None,
        })
    }

    /// The S_IFMT bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::Regular => libc::S_IFREG,
            FileKind::Directory => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
            FileKind::CharDevice => libc::S_IFCHR,
            FileKind::BlockDevice => libc::S_IFBLK,
        }
    }
}

/// A point in time with nanoseconds, as stored in inode records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct TimeSpec {
    pub sec: i64,
    pub nsec: u32,
}

impl TimeSpec {
    /// The current wall-clock time.
    pub fn now() -> TimeSpec {
        TimeSpec::from_system(SystemTime::now())
    }

    /// Convert from SystemTime (times before 1970 are kept as negative seconds).
    pub fn from_system(t: SystemTime) -> TimeSpec {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => TimeSpec {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let mut sec = -(d.as_secs() as i64);
                let mut nsec = d.subsec_nanos();
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                TimeSpec { sec, nsec }
            }
        }
    }

    /// Convert to SystemTime.
    pub fn to_system(self) -> SystemTime {
        if self.sec >= 0 {
            UNIX_EPOCH + std::time::Duration::new(self.sec as u64, self.nsec)
        } else {
            UNIX_EPOCH - std::time::Duration::from_secs(self.sec.unsigned_abs())
                + std::time::Duration::from_nanos(u64::from(self.nsec))
        }
    }
}

/// The attributes of an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileAttr {
    pub ino: InodeId,
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (no S_IFMT bits).
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Bytes allocated, in 512-byte blocks.
    pub blocks: u64,
    pub atime: TimeSpec,
    pub mtime: TimeSpec,
    pub ctime: TimeSpec,
    pub rdev: u64,
    /// Changes only when an inode id could be reused; sealfs never reuses ids, so it is fixed
    /// per inode. Part of NFS file handles.
    pub generation: u64,
}

impl FileAttr {
    /// The full st_mode: kind bits and permission bits.
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | (self.perm & 0o7777)
    }
}

/// How a setattr changes a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUpdate {
    /// Set to the server's current time (utimensat UTIME_NOW).
    Now,
    /// Set to this value.
    Set(TimeSpec),
}

/// The changes one setattr call asks for; `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeUpdate>,
    pub mtime: Option<TimeUpdate>,
    /// Set when the caller holds the file open for writing (ftruncate): the truncate then needs
    /// no write permission check, as POSIX says.
    pub via_open_handle: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_roundtrip() {
        for v in 1..=7u8 {
            let k = FileKind::from_u8(v).unwrap();
            assert_eq!(FileKind::from_mode(k.mode_bits() | 0o644), Some(k));
        }
        assert_eq!(FileKind::from_u8(0), None);
    }

    #[test]
    fn time_roundtrip() {
        let t = TimeSpec { sec: -5, nsec: 250 };
        assert_eq!(TimeSpec::from_system(t.to_system()), t);
        let t = TimeSpec {
            sec: 1_700_000_000,
            nsec: 999_999_999,
        };
        assert_eq!(TimeSpec::from_system(t.to_system()), t);
    }
}
