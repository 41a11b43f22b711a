//! Chunk checksum files: the CRC32C of every block of a chunk (the last block covers what the
//! chunk holds of it), kept in `<chunk>.sum` beside the chunk.
//!
//! Format, all integers little-endian:
//!
//! | bytes | field                                                    |
//! |-------|----------------------------------------------------------|
//! | 4     | magic `SSUM`                                             |
//! | 4     | version: 1 (block size 65536) or 2 (any other size)      |
//! | 4     | block size in bytes: a power of two, 4 KiB to 1 MiB      |
//! | 4     | block count N                                            |
//! | 4 × N | CRC32C of each block, in order                           |
//!
//! New chunks get 4 KiB blocks (version 2), so a 4 KiB write replaces whole blocks and reads
//! nothing back (with 64 KiB blocks, reading back and summing the rest of the block was a fifth
//! of the CPU of 4 KiB random writes); chunks made with 64 KiB blocks (version 1) keep them.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sealfs_core::{FsError, FsResult};

/// Bytes per checksummed block of a chunk made now.
pub const BLOCK: u64 = 4 << 10;
/// The block size of version 1 files.
const V1_BLOCK: u64 = 64 << 10;
/// The largest block size a checksum file may have.
const MAX_BLOCK: u64 = 1 << 20;
const MAGIC: &[u8; 4] = b"SSUM";
const VERSION: u32 = 2;
const HEADER: usize = 16;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sums {
    block: u64,
    crcs: Vec<u32>,
}

/// A new chunk's: no blocks yet, of the current size.
impl Default for Sums {
    fn default() -> Sums {
        Sums {
            block: BLOCK,
            crcs: Vec::new(),
        }
    }
}

impl Sums {
    /// Bytes per block of this chunk.
    pub fn block(&self) -> u64 {
        self.block
    }

    /// Blocks of a chunk of `len` bytes.
    pub fn blocks(&self, len: u64) -> u64 {
        len.div_ceil(self.block)
    }

    /// Where block `b` lies in a chunk of `len` bytes: `[start, stop)`, the last block cut short
    /// at the end (and empty past it, `start >= len`).
    pub fn span(&self, b: u64, len: u64) -> (u64, u64) {
        (b * self.block, ((b + 1) * self.block).min(len))
    }

    /// The whole blocks that cover `[off, end)` of a chunk of `len` bytes (`end <= len`): the
    /// first block's number, and the byte range `[start, stop)` they span (the last cut short at
    /// the chunk's end).
    pub fn covering(&self, off: u64, end: u64, len: u64) -> (u64, u64, u64) {
        let first = off / self.block;
        (
            first,
            first * self.block,
            (end.div_ceil(self.block) * self.block).min(len),
        )
    }

    /// Check `data`, the bytes of consecutive blocks from block `first` on (as
    /// [`Sums::covering`] gives them), against their checksums; a block that fails is
    /// `FsError::Corrupt` naming it.
    pub fn check_blocks(&self, first: u64, data: &[u8]) -> FsResult<()> {
        for (k, block) in data.chunks(self.block as usize).enumerate() {
            let b = first + k as u64;
            if !self.check(b, block) {
                return Err(FsError::Corrupt(format!("block {b}")));
            }
        }
        Ok(())
    }

    /// Checksum every block of the open chunk `f` (with blocks of the current size).
    pub fn compute(f: &File) -> FsResult<Sums> {
        Sums::compute_with(f, BLOCK)
    }

    /// Checksum every block of the open chunk `f`, in blocks of `block` bytes (a power of two,
    /// 4 KiB to 64 KiB).
    pub fn compute_with(f: &File, block: u64) -> FsResult<Sums> {
        let len = f.metadata().map_err(|e| io_err(e, "stat chunk"))?.len();
        let mut s = Sums {
            block,
            crcs: Vec::new(),
        };
        let mut buf = vec![0u8; (64u64 << 10) as usize];
        let mut at = 0;
        while at < len {
            let n = (buf.len() as u64).min(len - at) as usize;
            f.read_exact_at(&mut buf[..n], at)
                .map_err(|e| io_err(e, "read chunk"))?;
            for (k, piece) in buf[..n].chunks(s.block as usize).enumerate() {
                s.set(at / s.block + k as u64, piece);
            }
            at += n as u64;
        }
        Ok(s)
    }

    /// Parse a checksum file's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Sums, String> {
        if bytes.len() < HEADER || &bytes[..4] != MAGIC {
            return Err("not a checksum file".into());
        }
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let block = u64::from(word(8));
        match word(4) {
            1 if block == V1_BLOCK => {}
            // 64 KiB blocks are written as version 1, so each file has one encoding.
            2 if block != V1_BLOCK && block.is_power_of_two() && (4 << 10..=MAX_BLOCK).contains(&block) => {}
            1 | 2 => return Err(format!("checksum block size {block}")),
            v => return Err(format!("checksum file version {v} (this node knows 1 to {VERSION})")),
        }
        let n = word(12) as usize;
        if bytes.len() != HEADER + 4 * n {
            return Err(format!("checksum file of {} bytes for {n} blocks", bytes.len()));
        }
        Ok(Sums {
            block,
            crcs: (0..n).map(|i| word(HEADER + 4 * i)).collect(),
        })
    }

    /// The checksum file's first bytes: magic, version, block size and count.
    fn encode_header(&self) -> [u8; HEADER] {
        let mut out = [0u8; HEADER];
        out[..4].copy_from_slice(MAGIC);
        let version: u32 = if self.block == V1_BLOCK { 1 } else { VERSION };
        out[4..8].copy_from_slice(&version.to_le_bytes());
        out[8..12].copy_from_slice(&(self.block as u32).to_le_bytes());
        out[12..16].copy_from_slice(&(self.crcs.len() as u32).to_le_bytes());
        out
    }

    /// The checksum file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 4 * self.crcs.len());
        out.extend_from_slice(&self.encode_header());
        for c in &self.crcs {
            out.extend_from_slice(&c.to_le_bytes());
        }
        out
    }

    /// Read a checksum file; None if there is none (or it is empty, see [`Sums::read_from`]).
    pub fn load(path: &Path) -> FsResult<Option<Sums>> {
        match std::fs::read(path) {
            Ok(b) if b.is_empty() => Ok(None),
            Ok(b) => Sums::decode(&b)
                .map(Some)
                .map_err(|why| FsError::Corrupt(format!("{}: {why}", path.display()))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(e, "read checksums")),
        }
    }

    /// Read the open checksum file `f`; None if it is empty (made, but a crash came before its
    /// first checksums: the chunk's bytes since were never acknowledged).
    pub fn read_from(f: &File) -> FsResult<Option<Sums>> {
        let len = f.metadata().map_err(|e| io_err(e, "stat checksums"))?.len();
        if len == 0 {
            return Ok(None);
        }
        let mut raw = vec![0u8; len as usize];
        f.read_exact_at(&mut raw, 0).map_err(|e| io_err(e, "read checksums"))?;
        Sums::decode(&raw)
            .map(Some)
            .map_err(|why| FsError::Corrupt(format!("checksums: {why}")))
    }

    /// Write to the open checksum file `f` what changed since it held `on_disk` (its blocks
    /// from `from` on may differ): the header if the count moved, and the checksums of blocks
    /// `from..=to`. Everything is written afresh when the file held nothing or other sums.
    /// A 4 KiB write thus rewrites four bytes of its chunk's 4 KiB of checksums, not all of
    /// them, and never truncates the file.
    pub fn store_changes(&self, f: &File, on_disk: Option<&Sums>, from: u64, to: u64, sync: bool) -> FsResult<()> {
        let w = |bytes: &[u8], at: usize| {
            f.write_all_at(bytes, at as u64)
                .map_err(|e| io_err(e, "write checksums"))
        };
        match on_disk {
            Some(old) if old.block == self.block && old.crcs.len() <= self.crcs.len() => {
                let grew = old.crcs.len() != self.crcs.len();
                if grew {
                    w(&self.encode_header(), 0)?;
                }
                // New blocks are all past the old count; `from` reaches back to it if needed.
                let from = (from as usize).min(old.crcs.len());
                let to = if grew {
                    self.crcs.len()
                } else {
                    (to as usize + 1).min(self.crcs.len())
                }
                .max(from);
                let mut bytes = Vec::with_capacity(4 * (to - from));
                for c in &self.crcs[from..to] {
                    bytes.extend_from_slice(&c.to_le_bytes());
                }
                w(&bytes, HEADER + 4 * from)?;
            }
            _ => {
                let bytes = self.encode();
                w(&bytes, 0)?;
                f.set_len(bytes.len() as u64)
                    .map_err(|e| io_err(e, "write checksums"))?;
            }
        }
        if sync {
            f.sync_data().map_err(|e| io_err(e, "sync checksums"))?;
        }
        Ok(())
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

    /// Set block `b`'s checksum to that of `len` zero bytes (a hole), without reading them.
    pub fn set_zeros(&mut self, b: u64, len: u64) {
        static ZEROS: [u8; MAX_BLOCK as usize] = [0; MAX_BLOCK as usize];
        self.set(b, &ZEROS[..len.min(MAX_BLOCK) as usize]);
    }

    /// Keep the checksums of a chunk of `len` bytes.
    pub fn truncate(&mut self, len: u64) {
        self.crcs.truncate(self.blocks(len) as usize);
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
        let mut odd = s.encode();
        odd[8..12].copy_from_slice(&3000u32.to_le_bytes());
        assert!(Sums::decode(&odd).unwrap_err().contains("block size"));
    }

    #[test]
    fn version_1_files_keep_their_64_kib_blocks() {
        let mut v1 = Vec::new();
        v1.extend_from_slice(MAGIC);
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&(64u32 << 10).to_le_bytes());
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&crc32c::crc32c(b"old").to_le_bytes());
        let mut s = Sums::decode(&v1).unwrap();
        assert_eq!(s.block(), 64 << 10);
        assert!(s.check(0, b"old"));
        assert_eq!(s.blocks(70_000), 2);
        // Stored again, it stays a version 1 file; a version 1 header with another size is
        // refused.
        assert_eq!(s.encode(), v1);
        s.set(1, b"more");
        assert_eq!(Sums::decode(&s.encode()).unwrap(), s);
        let mut v2 = v1.clone();
        v1[8..12].copy_from_slice(&(4u32 << 10).to_le_bytes());
        assert!(Sums::decode(&v1).is_err());
        // 64 KiB blocks are always version 1: one encoding per file, so a round trip is exact.
        v2[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert!(Sums::decode(&v2).is_err());
        assert_eq!(Sums::default().block(), 4096);
    }
}
