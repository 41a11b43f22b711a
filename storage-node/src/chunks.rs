//! The chunk store: file data under --data-dir, one file per chunk, grouped by partition
//! (`<data-dir>/p<partition>/<ino>.<index>`), so a partition's data can move as a folder.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sealfs_core::{FsError, FsResult, InodeId, PartitionId};

/// Chunk files of one node.
#[derive(Clone)]
pub struct ChunkStore {
    root: PathBuf,
    /// Changes on every start: unstable writes acknowledged before a restart may be lost, and a
    /// commit reports the new value so the writer knows.
    pub verifier: u64,
}

fn io_err(e: std::io::Error, what: &str) -> FsError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => FsError::NoSpace,
        _ => FsError::Io(format!("{what}: {e}")),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> FsResult<T> + Send + 'static) -> FsResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FsError::Io(format!("chunk task failed: {e}")))?
}

impl ChunkStore {
    /// Use `root` (which must exist) for chunk data.
    pub fn open(root: &Path) -> ChunkStore {
        ChunkStore {
            root: root.to_path_buf(),
            verifier: rand::random::<u64>() | 1,
        }
    }

    fn dir(&self, p: PartitionId) -> PathBuf {
        self.root.join(format!("p{p:05}"))
    }

    fn path(&self, p: PartitionId, ino: InodeId, index: u64) -> PathBuf {
        self.dir(p).join(format!("{ino:016x}.{index}"))
    }

    /// Read up to `len` bytes at `off`; shorter (or empty) where the chunk has a hole at its end.
    pub async fn read(&self, p: PartitionId, ino: InodeId, index: u64, off: u64, len: usize) -> FsResult<Bytes> {
        let path = self.path(p, ino, index);
        blocking(move || {
            let f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Bytes::new()),
                Err(e) => return Err(io_err(e, "open chunk")),
            };
            let mut buf = vec![0u8; len];
            let mut done = 0;
            while done < len {
                match f.read_at(&mut buf[done..], off + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err(e, "read chunk")),
                }
            }
            buf.truncate(done);
            Ok(Bytes::from(buf))
        })
        .await
    }

    /// Write `data` at `off`; with `stable` the data is on disk when this returns.
    pub async fn write(
        &self,
        p: PartitionId,
        ino: InodeId,
        index: u64,
        off: u64,
        data: Bytes,
        stable: bool,
    ) -> FsResult<()> {
        let dir = self.dir(p);
        let path = self.path(p, ino, index);
        blocking(move || {
            let open = || OpenOptions::new().write(true).create(true).truncate(false).open(&path);
            let (f, created) = match OpenOptions::new().write(true).open(&path) {
                Ok(f) => (f, false),
                Err(e) if e.kind() == ErrorKind::NotFound => match open() {
                    Ok(f) => (f, true),
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        std::fs::create_dir_all(&dir).map_err(|e| io_err(e, "create partition folder"))?;
                        (open().map_err(|e| io_err(e, "create chunk"))?, true)
                    }
                    Err(e) => return Err(io_err(e, "create chunk")),
                },
                Err(e) => return Err(io_err(e, "open chunk")),
            };
            f.write_all_at(&data, off).map_err(|e| io_err(e, "write chunk"))?;
            if stable {
                f.sync_data().map_err(|e| io_err(e, "sync chunk"))?;
                if created {
                    sync_dir(&dir)?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Make chunks durable (data and their folder entries).
    pub async fn commit(&self, chunks: Vec<(PartitionId, InodeId, u64)>) -> FsResult<()> {
        let paths: Vec<(PathBuf, PathBuf)> = chunks
            .into_iter()
            .map(|(p, ino, idx)| (self.dir(p), self.path(p, ino, idx)))
            .collect();
        blocking(move || {
            let mut dirs: Vec<&PathBuf> = Vec::new();
            for (dir, path) in &paths {
                match File::open(path) {
                    Ok(f) => f.sync_data().map_err(|e| io_err(e, "sync chunk"))?,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(e, "open chunk")),
                }
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
            for d in dirs {
                sync_dir(d)?;
            }
            Ok(())
        })
        .await
    }

    /// Cut a chunk to `len` bytes (0 removes it), durably.
    pub async fn truncate(&self, p: PartitionId, ino: InodeId, index: u64, len: u64) -> FsResult<()> {
        let dir = self.dir(p);
        let path = self.path(p, ino, index);
        blocking(move || {
            if len == 0 {
                match std::fs::remove_file(&path) {
                    Ok(()) => sync_dir(&dir),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io_err(e, "remove chunk")),
                }
            } else {
                match OpenOptions::new().write(true).open(&path) {
                    Ok(f) => {
                        if f.metadata().map_err(|e| io_err(e, "stat chunk"))?.len() > len {
                            f.set_len(len).map_err(|e| io_err(e, "truncate chunk"))?;
                            f.sync_all().map_err(|e| io_err(e, "sync chunk"))?;
                        }
                        Ok(())
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io_err(e, "open chunk")),
                }
            }
        })
        .await
    }

    /// Remove every chunk of partition `p` (a replica that no longer holds it, or one being
    /// filled from scratch).
    pub async fn delete_partition(&self, p: PartitionId) -> FsResult<()> {
        let dir = self.dir(p);
        let root = self.root.clone();
        blocking(move || match std::fs::remove_dir_all(&dir) {
            Ok(()) => sync_dir(&root),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(e, "remove partition folder")),
        })
        .await
    }

    /// Every chunk of partition `p`: (inode, index, length).
    pub async fn list(&self, p: PartitionId) -> FsResult<Vec<(InodeId, u64, u64)>> {
        let dir = self.dir(p);
        blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(io_err(e, "list partition folder")),
            };
            let mut out = Vec::new();
            for e in entries.flatten() {
                let name = e.file_name();
                let Some((ino, index)) = name.to_str().and_then(parse_chunk_name) else {
                    continue;
                };
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((ino, index, len));
            }
            out.sort_unstable();
            Ok(out)
        })
        .await
    }

    /// Make every chunk of partition `p` and the folder durable (the end of a fill).
    pub async fn sync_partition(&self, p: PartitionId) -> FsResult<()> {
        let list = self.list(p).await?;
        self.commit(list.into_iter().map(|(ino, index, _)| (p, ino, index)).collect())
            .await
    }

    /// Total and free bytes of the data disk.
    pub fn space(&self) -> (u64, u64) {
        match nix::sys::statvfs::statvfs(&self.root) {
            Ok(s) => {
                let frag = s.fragment_size();
                (s.blocks() * frag, s.blocks_available() * frag)
            }
            Err(_) => (0, 0),
        }
    }
}

/// `<ino as 16 hex digits>.<index>` back into its parts.
fn parse_chunk_name(name: &str) -> Option<(InodeId, u64)> {
    let (ino, index) = name.split_once('.')?;
    Some((u64::from_str_radix(ino, 16).ok()?, index.parse().ok()?))
}

fn sync_dir(dir: &Path) -> FsResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(e, "sync folder"))
}
