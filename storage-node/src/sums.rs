//! Chunk checksum files: the CRC32C of every 64 KiB block of a chunk (the last block covers
//! what the chunk holds of it), kept in `<chunk>.sum` beside the chunk.
//!
//! Format, version 1, all integers little-endian:
//!
//! | bytes | field                           |
//! |-------|---------------------------------|
//! | 4     | magic `SSUM`                    |
//! | 4     | version (1)                     |
//! | 4     | block size in bytes (65536)     |
//! | 4     | block count N                   |
//! | 4 × N | CRC32C of each block, in order  |

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sealfs_core::{FsError, FsResult};

/// Bytes per checksummed block.
pub const BLOCK: u64 = 64 << 10;
const MAGIC: &[u8; 4] = b"SSUM";
const VERSION: u32 = 1;
const HEADER: usize = 16;

/// Blocks of a chunk of `len` bytes.
pub fn blocks(len: u64) -> u64 {
    len.div_ceil(BLOCK)
}

/// The checksum file of the chunk at `chunk`.
pub fn sum_path(chunk: &Path) -> PathBuf {
    let mut s = chunk.as_os_str().to_owned();
    s.push(".sum");
    PathBuf::from(s)
}

/// An I/O error of the data disk as the caller sees it (a full disk is ENOSPC).
pub fn io_err(e: std::io::Error, what: &str) -> FsError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => FsError::NoSpace,
        _ => FsError::Io(format!("{what}: {e}")),
    }
}

/// The block checksums of one chunk.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sums {
    crcs: Vec<u32>,
}

impl Sums {
    /// Checksum every block of the open chunk `f`.
    pub fn compute(f: &File) -> FsResult<Sums> {
        let len = f.metadata().map_err(|e| io_err(e, "stat chunk"))?.len();
        let mut crcs = Vec::with_capacity(blocks(len) as usize);
        let mut buf = vec![0u8; BLOCK as usize];
        for b in 0..blocks(len) {
            let n = (BLOCK.min(len - b * BLOCK)) as usize;
            f.read_exact_at(&mut buf[..n], b * BLOCK)
                .map_err(|e| io_err(e, "read chunk"))?;
            crcs.push(crc32c::crc32c(&buf[..n]));
        }
        Ok(Sums { crcs })
    }

    /// Parse a checksum file's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Sums, String> {
        if bytes.len() < HEADER || &bytes[..4] != MAGIC {
            return Err("not a checksum file".into());
        }
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        if word(4) != VERSION {
            return Err(format!("checksum file version {} (this node knows {VERSION})", word(4)));
        }
        if u64::from(word(8)) != BLOCK {
            return Err(format!("checksum block size {}", word(8)));
        }
        let n = word(12) as usize;
        if bytes.len() != HEADER + 4 * n {
            return Err(format!("checksum file of {} bytes for {n} blocks", bytes.len()));
        }
        Ok(Sums {
            crcs: (0..n).map(|i| word(HEADER + 4 * i)).collect(),
        })
    }

    /// The checksum file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 4 * self.crcs.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(BLOCK as u32).to_le_bytes());
        out.extend_from_slice(&(self.crcs.len() as u32).to_le_bytes());
        for c in &self.crcs {
            out.extend_from_slice(&c.to_le_bytes());
        }
        out
    }

    /// Read a checksum file; None if there is none.
    pub fn load(path: &Path) -> FsResult<Option<Sums>> {
        match std::fs::read(path) {
            Ok(b) => Sums::decode(&b)
                .map(Some)
                .map_err(|why| FsError::Corrupt(format!("{}: {why}", path.display()))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(e, "read checksums")),
        }
    }

    /// Write the checksum file (durably with `sync`).
    pub fn store(&self, path: &Path, sync: bool) -> FsResult<()> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_err(e, "open checksums"))?;
        let bytes = self.encode();
        f.write_all_at(&bytes, 0).map_err(|e| io_err(e, "write checksums"))?;
        f.set_len(bytes.len() as u64)
            .map_err(|e| io_err(e, "write checksums"))?;
        if sync {
            f.sync_data().map_err(|e| io_err(e, "sync checksums"))?;
        }
        Ok(())
    }

    /// Whether `data` (all the chunk holds of block `b`) matches its checksum.
    pub fn check(&self, b: u64, data: &[u8]) -> bool {
        self.crcs.get(b as usize) == Some(&crc32c::crc32c(data))
    }

    /// Set block `b`'s checksum from its data.
    pub fn set(&mut self, b: u64, data: &[u8]) {
        let b = b as usize;
        if self.crcs.len() <= b {
            self.crcs.resize(b + 1, 0);
        }
        self.crcs[b] = crc32c::crc32c(data);
    }

    /// Keep the checksums of a chunk of `len` bytes.
    pub fn truncate(&mut self, len: u64) {
        self.crcs.truncate(blocks(len) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_and_refuse_garbage() {
        let mut s = Sums::default();
        s.set(0, b"hello");
        s.set(2, &[0u8; 10]);
        let d = Sums::decode(&s.encode()).unwrap();
        assert_eq!(d, s);
        assert!(d.check(0, b"hello"));
        assert!(!d.check(0, b"hellp"));
        assert!(!d.check(7, b"hello"));
        assert!(Sums::decode(b"SSUM").is_err());
        let mut bad = s.encode();
        bad[4] = 9;
        assert!(Sums::decode(&bad).unwrap_err().contains("version"));
        let mut short = s.encode();
        short.pop();
        assert!(Sums::decode(&short).is_err());
        s.truncate(BLOCK + 1);
        assert_eq!(s.crcs.len(), 2);
    }
}
