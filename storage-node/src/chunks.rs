//! The chunk store: file data under --data-dir, one file per chunk, grouped by partition
//! (`<data-dir>/p<partition>/<ino>.<index>`), so a partition's data can move as a folder.
//! Every chunk has a checksum file beside it (`<ino>.<index>.sum`, see [`crate::sums`]): each
//! read is checked against it, and data that fails is reported (EIO, a log line naming the
//! chunk), never served.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sealfs_core::{FsError, FsResult, InodeId, PartitionId};
use tracing::{error, info, warn};

use crate::direct::{self, read_buffered};
use crate::openfiles::{read_cached, ChunkKey, OpenChunk, OpenChunks};
use crate::sums::{self, io_err, Sums};

/// Chunk files of one node.
#[derive(Clone)]
pub struct ChunkStore {
    root: PathBuf,
    /// Changes on every start after a crash: unstable writes acknowledged before it may be lost,
    /// and a commit reports the new value so the writer knows. A clean stop syncs every chunk
    /// first, so the next start keeps the value and commits of those writes still succeed.
    pub verifier: u64,
    /// The verifier is new with this start: no clean stop came before it (a crash, or the first
    /// start), so whatever an earlier run took unsynced may be lost.
    pub fresh: bool,
    /// Writers of a chunk and its checksums, striped by chunk: a partial block is read, checked
    /// and rewritten as one step.
    stripes: Arc<Vec<Mutex<()>>>,
    /// Chunks kept open for reads and writes (removals forget them).
    open: Arc<OpenChunks>,
}

const STRIPES: usize = 256;
/// Chunks kept open for reading: two descriptors each.
const OPEN_CHUNKS: usize = 256;
/// Present while a node runs; left behind by a crash. Holds the start time: chunks written
/// since then may hold torn writes, whose checksums are recomputed at the next start.
const RUNNING: &str = "RUNNING";
/// Written by a clean stop once every chunk is synced: `v1 <verifier in hex>`. The next start
/// takes the verifier over and removes the file.
const CLEAN: &str = "CLEAN";
const CLEAN_VERSION: &str = "v1";

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> FsResult<T> + Send + 'static) -> FsResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FsError::Io(format!("chunk task failed: {e}")))?
}

/// Seconds since 1970 by this host's clock (0 if it is set before).
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ChunkStore {
    /// Use `root` (which must exist) for chunk data. After a crash, the checksums of chunks
    /// written during the last run are recomputed (a write cut short may have left data and
    /// checksum out of step; it was never acknowledged).
    pub fn open(root: &Path) -> ChunkStore {
        let marker = root.join(RUNNING);
        let clean = root.join(CLEAN);
        let kept = match std::fs::read_to_string(&clean) {
            Ok(text) if !marker.exists() => parse_clean(&text),
            _ => None,
        };
        let _ = std::fs::remove_file(&clean);
        let store = ChunkStore {
            root: root.to_path_buf(),
            verifier: kept.unwrap_or_else(|| rand::random::<u64>() | 1),
            fresh: kept.is_none(),
            stripes: Arc::new((0..STRIPES).map(|_| Mutex::new(())).collect()),
            open: Arc::new(OpenChunks::new(OPEN_CHUNKS)),
        };
        if let Ok(text) = std::fs::read_to_string(&marker) {
            let since = text.trim().parse::<u64>().unwrap_or(0);
            match store.resum_since(since.saturating_sub(2)) {
                Ok(n) => info!(
                    chunks = n,
                    "after an unclean stop: checksums of recently written chunks recomputed"
                ),
                Err(e) => warn!("cannot recompute checksums after an unclean stop: {e}"),
            }
        }
        if let Err(e) = std::fs::write(&marker, format!("{}\n", now_secs())) {
            warn!("cannot write {}: {e}", marker.display());
        }
        store
    }

    /// Mark a clean stop: sync every chunk (so unstable writes acknowledged by this run are
    /// durable), then leave the verifier for the next start to keep. Blocks until synced.
    pub fn close(&self) {
        let synced = File::open(&self.root)
            .map_err(|e| e.to_string())
            .and_then(|d| nix::unistd::syncfs(&d).map_err(|e| e.to_string()));
        match synced {
            Ok(()) => {
                let text = format!("{CLEAN_VERSION} {:x}\n", self.verifier);
                let written = File::create(self.root.join(CLEAN))
                    .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()).and_then(|()| f.sync_all()));
                if let Err(e) = written {
                    warn!("cannot record the clean stop: {e}");
                }
            }
            // Without the sync the next start must not vouch for this run's unstable writes.
            Err(e) => warn!("cannot sync the chunks at stop: {e}"),
        }
        let _ = std::fs::remove_file(self.root.join(RUNNING));
        let _ = sync_dir(&self.root);
    }

    fn resum_since(&self, since: u64) -> FsResult<usize> {
        let mut n = 0;
        let since = UNIX_EPOCH + Duration::from_secs(since);
        let Ok(parts) = std::fs::read_dir(&self.root) else {
            return Ok(0);
        };
        for part in parts.flatten() {
            if !part.file_name().to_string_lossy().starts_with('p') || !part.path().is_dir() {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(part.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                if name.to_str().and_then(parse_chunk_name).is_none() {
                    continue;
                }
                let recent = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= since);
                if recent {
                    let path = e.path();
                    let f = File::open(&path).map_err(|e| io_err(e, "open chunk"))?;
                    let sums = Sums::compute(&f)?;
                    sums.store(&sums::sum_path(&path), true)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    fn dir(&self, p: PartitionId) -> PathBuf {
        self.root.join(format!("p{p:05}"))
    }

    fn path(&self, p: PartitionId, ino: InodeId, index: u64) -> PathBuf {
        self.dir(p).join(format!("{ino:016x}.{index}"))
    }

    fn stripe(&self, ino: InodeId, index: u64) -> (Arc<Vec<Mutex<()>>>, usize) {
        let i = (sealfs_core::hash::hash_u64_pair(ino, index) % STRIPES as u64) as usize;
        (self.stripes.clone(), i)
    }

    /// Read up to `len` bytes at `off`; shorter (or empty) where the chunk has a hole at its end.
    /// Every block read is checked against its checksum: a mismatch is `FsError::Corrupt`.
    pub async fn read(&self, p: PartitionId, ino: InodeId, index: u64, off: u64, len: usize) -> FsResult<Bytes> {
        let key = (p, ino, index);
        if let Some(o) = self.open.get(key) {
            // Open already and all in memory: answered here, on the runtime's thread. A
            // mismatch goes the slow way, which looks again while no writer can be.
            if let Ok(Some(b)) = read_open(&o.data, Some(&o.sums), off, len, true) {
                return Ok(b);
            }
        }
        let path = self.path(p, ino, index);
        let (stripes, i) = self.stripe(ino, index);
        let open = self.open.clone();
        blocking(move || {
            match read_checked(&open, key, &path, off, len) {
                Err(FsError::Corrupt(_)) => {
                    // A writer may have been between data and checksum: look again while no
                    // writer can be.
                    let _g = stripes[i].lock().unwrap_or_else(|e| e.into_inner());
                    let r = read_checked(&open, key, &path, off, len);
                    if let Err(FsError::Corrupt(why)) = &r {
                        error!(partition = p, ino, index, chunk = %path.display(), "checksum mismatch: {why}");
                    }
                    r
                }
                r => r,
            }
        })
        .await
    }

    /// Replace the blocks of a chunk that fail their checksum with the same blocks of `good`
    /// (the whole chunk, read from another replica); returns how many were replaced.
    pub async fn repair(&self, p: PartitionId, ino: InodeId, index: u64, good: Bytes) -> FsResult<usize> {
        let path = self.path(p, ino, index);
        let (stripes, i) = self.stripe(ino, index);
        blocking(move || {
            let _g = stripes[i].lock().unwrap_or_else(|e| e.into_inner());
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_err(e, "open chunk"))?;
            let len = f.metadata().map_err(|e| io_err(e, "stat chunk"))?.len();
            let sum_path = sums::sum_path(&path);
            // A damaged checksum file counts as no checksums: every block is taken from `good`.
            let mut s = Sums::load(&sum_path).ok().flatten().unwrap_or_default();
            let mut fixed = 0;
            for b in 0..s.blocks(len) {
                let (start, end) = s.span(b, len);
                let data = read_buffered(&f, start, (end - start) as usize)?;
                if s.check(b, &data) {
                    continue;
                }
                if (good.len() as u64) < end {
                    return Err(FsError::Corrupt(format!(
                        "{}: the replica's copy is shorter ({} bytes, need {end})",
                        path.display(),
                        good.len()
                    )));
                }
                let piece = &good[start as usize..end as usize];
                f.write_all_at(piece, start).map_err(|e| io_err(e, "write chunk"))?;
                s.set(b, piece);
                fixed += 1;
            }
            if fixed > 0 {
                f.sync_data().map_err(|e| io_err(e, "sync chunk"))?;
                s.store(&sum_path, true)?;
            }
            Ok(fixed)
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
        self.write_pieces(p, ino, index, vec![(off, data)], stable).await
    }

    /// Write each `(off, data)` of `pieces` in turn (a later one wins where they overlap), under
    /// one hold of the chunk's lock and one update of its checksum file; with `stable` all of
    /// it is on disk when this returns. An empty single piece only creates the chunk.
    pub async fn write_pieces(
        &self,
        p: PartitionId,
        ino: InodeId,
        index: u64,
        pieces: Vec<(u64, Bytes)>,
        stable: bool,
    ) -> FsResult<()> {
        let dir = self.dir(p);
        let path = self.path(p, ino, index);
        let (stripes, i) = self.stripe(ino, index);
        let table = self.open.clone();
        let key = (p, ino, index);
        blocking(move || {
            let _g = stripes[i].lock().unwrap_or_else(|e| e.into_inner());
            // Through the files kept open (opened here if they are not): a 4 KiB write used to
            // open, stat and close the chunk and its checksums (three path walks) and truncate
            // the checksum file, ~30% of a node's CPU in 4 KiB random writes.
            let (o, created) = match table.get(key) {
                Some(o) => (o, false),
                None => {
                    let seen = table.removals();
                    let (data, created) = match open_rw(&path, false) {
                        Ok(f) => (f, false),
                        Err(e) if e.kind() == ErrorKind::NotFound => match open_rw(&path, true) {
                            Ok(f) => (f, true),
                            Err(e) if e.kind() == ErrorKind::NotFound => {
                                std::fs::create_dir_all(&dir).map_err(|e| io_err(e, "create partition folder"))?;
                                (open_rw(&path, true).map_err(|e| io_err(e, "create chunk"))?, true)
                            }
                            Err(e) => return Err(io_err(e, "create chunk")),
                        },
                        Err(e) => return Err(io_err(e, "open chunk")),
                    };
                    let sums = open_rw(&sums::sum_path(&path), true).map_err(|e| io_err(e, "open checksums"))?;
                    let o = Arc::new(OpenChunk { data, sums });
                    table.put(key, o.clone(), seen);
                    (o, created)
                }
            };
            let f = &o.data;
            let mut old_len = f.metadata().map_err(|e| io_err(e, "stat chunk"))?.len();
            let on_disk = Sums::read_from(&o.sums)?;
            let mut s = match &on_disk {
                Some(s) => s.clone(),
                None if old_len == 0 => Sums::default(),
                // A chunk without its checksums (a crash between creating the two): adopt
                // what is there.
                None => Sums::compute(f)?,
            };
            if pieces.iter().all(|(_, d)| d.is_empty()) {
                // Only creates the chunk (a fill copying an empty one).
                if on_disk.is_none() {
                    s.store_changes(&o.sums, None, 0, 0, stable)?;
                }
                if stable && created {
                    sync_dir(&dir)?;
                }
                return Ok(());
            }
            // The checksums from `changed.0` to `changed.1` are rewritten once, after all pieces.
            let mut changed = (u64::MAX, 0);
            for (off, data) in pieces.iter().filter(|(_, d)| !d.is_empty()) {
                let (from, to) = write_piece(f, &mut s, old_len, *off, data, &path, (p, ino, index))?;
                changed = (changed.0.min(from), changed.1.max(to));
                old_len = old_len.max(off + data.len() as u64);
            }
            if stable {
                f.sync_data().map_err(|e| io_err(e, "sync chunk"))?;
            }
            s.store_changes(&o.sums, on_disk.as_ref(), changed.0, changed.1, stable)?;
            if stable && created {
                sync_dir(&dir)?;
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
                match File::open(sums::sum_path(path)) {
                    Ok(f) => f.sync_data().map_err(|e| io_err(e, "sync checksums"))?,
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(e, "open checksums")),
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
        let (stripes, i) = self.stripe(ino, index);
        let open = self.open.clone();
        blocking(move || {
            let _g = stripes[i].lock().unwrap_or_else(|e| e.into_inner());
            let sum_path = sums::sum_path(&path);
            if len == 0 {
                let _ = std::fs::remove_file(&sum_path);
                let removed = std::fs::remove_file(&path);
                // After the removal: a reader that opened the files before it keeps them out.
                open.forget((p, ino, index));
                match removed {
                    Ok(()) => sync_dir(&dir),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io_err(e, "remove chunk")),
                }
            } else {
                match OpenOptions::new().read(true).write(true).open(&path) {
                    Ok(f) => {
                        let old_len = f.metadata().map_err(|e| io_err(e, "stat chunk"))?.len();
                        if old_len > len {
                            let mut s = match Sums::load(&sum_path)? {
                                Some(s) => s,
                                None => Sums::compute(&f)?,
                            };
                            let bs = s.block();
                            let b = len / bs;
                            if !len.is_multiple_of(bs) {
                                // The cut block keeps a prefix: check the old block, then sum
                                // what stays.
                                let (start, stop) = s.span(b, old_len);
                                let old = read_buffered(&f, start, (stop - start) as usize)?;
                                if !s.check(b, &old) {
                                    error!(partition = p, ino, index, chunk = %path.display(), block = b, "checksum mismatch under a truncate");
                                    return Err(FsError::Corrupt(format!("{} block {b}", path.display())));
                                }
                                s.set(b, &old[..(len - start) as usize]);
                            }
                            s.truncate(len);
                            f.set_len(len).map_err(|e| io_err(e, "truncate chunk"))?;
                            f.sync_all().map_err(|e| io_err(e, "sync chunk"))?;
                            s.store(&sum_path, true)?;
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

    /// Check `[off, off+len)` of a chunk against its checksums for the scrubber, with the bytes
    /// read from the disk: a chunk not in use (not kept open) is dropped from the page cache
    /// before and after, so the check sees what the disk holds and a pass does not push the
    /// node's working set out of memory. Returns the chunk's length; 0 when it is gone or has no
    /// checksums to check against (cut short by a crash before its first). A block that does not
    /// match, looked at again while no writer can be, is `FsError::Corrupt`.
    pub async fn scrub(&self, p: PartitionId, ino: InodeId, index: u64, off: u64, len: u64) -> FsResult<u64> {
        let path = self.path(p, ino, index);
        let (stripes, i) = self.stripe(ino, index);
        let in_use = self.open.get((p, ino, index)).is_some();
        blocking(move || match scrub_range(&path, off, len, !in_use) {
            Err(FsError::Corrupt(_)) => {
                // A writer may have been between data and checksum: look again while no writer
                // can be.
                let _g = stripes[i].lock().unwrap_or_else(|e| e.into_inner());
                let r = scrub_range(&path, off, len, !in_use);
                if let Err(FsError::Corrupt(why)) = &r {
                    error!(partition = p, ino, index, chunk = %path.display(), "scrub: checksum mismatch: {why}");
                }
                r
            }
            r => r,
        })
        .await
    }

    /// Remove every chunk of partition `p` (a replica that no longer holds it, or one being
    /// filled from scratch).
    pub async fn delete_partition(&self, p: PartitionId) -> FsResult<()> {
        let dir = self.dir(p);
        let root = self.root.clone();
        let open = self.open.clone();
        blocking(move || {
            let removed = std::fs::remove_dir_all(&dir);
            open.forget_partition(p);
            match removed {
                Ok(()) => sync_dir(&root),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err(e, "remove partition folder")),
            }
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

/// Write one non-empty piece, `data` at `off`, to the chunk file `f` of `old_len` bytes (at
/// `path`, for `id`'s messages), and update its checksums `s` to match. Returns the first and
/// last block whose checksum changed.
fn write_piece(
    f: &File,
    s: &mut Sums,
    old_len: u64,
    off: u64,
    data: &[u8],
    path: &Path,
    id: ChunkKey,
) -> FsResult<(u64, u64)> {
    let end = off + data.len() as u64;
    // Blocks this write only partly covers keep some old bytes: check those first, so a new
    // checksum never blesses bad data.
    let bs = s.block();
    let first = off / bs;
    let last_block = (end - 1) / bs;
    let touched_from = first.min(old_len / bs);
    for b in [touched_from, first, last_block] {
        let (start, stop) = s.span(b, old_len);
        if start >= old_len || (off <= start && end >= stop) {
            continue;
        }
        let old = read_buffered(f, start, (stop - start) as usize)?;
        if !s.check(b, &old) {
            let (p, ino, index) = id;
            error!(partition = p, ino, index, chunk = %path.display(), block = b, "checksum mismatch under a write");
            return Err(FsError::Corrupt(format!("{} block {b}", path.display())));
        }
    }
    direct::write_at(path, f, data, off)?;
    let new_len = old_len.max(end);
    for b in touched_from..=last_block {
        let (start, stop) = s.span(b, new_len);
        if start >= new_len {
            break;
        }
        if off <= start && end >= stop {
            // Wholly new: checksum the caller's bytes, no read back.
            s.set(b, &data[(start - off) as usize..(stop - off) as usize]);
        } else if start >= old_len && stop <= off {
            // In the hole between the old end and this write: zeros, no read back
            // (write-behind sends a file's pieces out of order, so a chunk's later megabytes
            // often land first; reading the hole back block by block was ~10% of a node's CPU
            // in sequential writes).
            s.set_zeros(b, stop - start);
        } else {
            let now = read_buffered(f, start, (stop - start) as usize)?;
            s.set(b, &now);
        }
    }
    s.truncate(new_len);
    Ok((touched_from, last_block))
}

/// Read `[off, off+len)` of the chunk at `path`, checking every block it touches; the files
/// opened for it are kept in `open` for the next read.
fn read_checked(open: &OpenChunks, key: ChunkKey, path: &Path, off: u64, len: usize) -> FsResult<Bytes> {
    let o = match open.get(key) {
        Some(o) => o,
        None => {
            let seen = open.removals();
            // Opened for writing too: writers use the files kept here.
            let data = match open_rw(path, false) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Bytes::new()),
                Err(e) => return Err(io_err(e, "open chunk")),
            };
            let sums = match open_rw(&sums::sum_path(path), false) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    // No checksum file: a chunk cut short by a crash before its first
                    // checksum; its bytes were never acknowledged. Not kept: one may come.
                    return read_open(&data, None, off, len, false).map(|b| b.unwrap_or_default());
                }
                Err(e) => return Err(io_err(e, "open checksums")),
            };
            let o = Arc::new(OpenChunk { data, sums });
            open.put(key, o.clone(), seen);
            o
        }
    };
    read_open(&o.data, Some(&o.sums), off, len, false).map(|b| b.unwrap_or_default())
}

/// Read `[off, off+len)` of an open chunk, checking every block it touches against `sums` (a
/// chunk without a checksum file is read as it is). With `cached_only` nothing waits for the
/// disk: `None` if some byte is not in memory.
fn read_open(data: &File, sums: Option<&File>, off: u64, len: usize, cached_only: bool) -> FsResult<Option<Bytes>> {
    let read = |f: &File, at: u64, n: usize| -> FsResult<Option<Vec<u8>>> {
        if !cached_only {
            return read_buffered(f, at, n).map(Some);
        }
        read_cached(f, at, n).map_err(|e| io_err(e, "read chunk"))
    };
    let file_len = data.metadata().map_err(|e| io_err(e, "stat chunk"))?.len();
    let end = off.saturating_add(len as u64).min(file_len);
    if off >= end {
        return Ok(Some(Bytes::new()));
    }
    let Some(sums) = sums else {
        return Ok(read(data, off, (end - off) as usize)?.map(Bytes::from));
    };
    let sums_len = sums.metadata().map_err(|e| io_err(e, "stat checksums"))?.len();
    if sums_len == 0 {
        // Made, but a crash came before its first checksums: as if it were not there.
        return Ok(read(data, off, (end - off) as usize)?.map(Bytes::from));
    }
    let Some(raw) = read(sums, 0, sums_len as usize)? else {
        return Ok(None);
    };
    let sums = Sums::decode(&raw).map_err(|why| FsError::Corrupt(format!("checksums: {why}")))?;
    let (first, start, stop) = sums.covering(off, end, file_len);
    let Some(buf) = read(data, start, (stop - start) as usize)? else {
        return Ok(None);
    };
    sums.check_blocks(first, &buf)?;
    let from = (off - start) as usize;
    let to = (from + (end - off) as usize).min(buf.len());
    Ok(Some(Bytes::from(buf).slice(from.min(to)..to)))
}

/// The scrubber's check of `[off, off+len)` of the chunk at `path` (see [`ChunkStore::scrub`]);
/// with `uncache` its pages are dropped from the page cache before the read and after.
fn scrub_range(path: &Path, off: u64, len: u64, uncache: bool) -> FsResult<u64> {
    let data = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(e, "open chunk")),
    };
    let Some(sums) = Sums::load(&sums::sum_path(path))? else {
        return Ok(0);
    };
    let file_len = data.metadata().map_err(|e| io_err(e, "stat chunk"))?.len();
    let end = off.saturating_add(len).min(file_len);
    if off >= end {
        return Ok(file_len);
    }
    let (first, start, stop) = sums.covering(off, end, file_len);
    let drop_cached = || {
        if uncache {
            // Advice only: where it is not taken, the check reads the cached bytes.
            let _ = nix::fcntl::posix_fadvise(
                &data,
                start as libc::off_t,
                (stop - start) as libc::off_t,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
    };
    drop_cached();
    let buf = read_buffered(&data, start, (stop - start) as usize)?;
    drop_cached();
    sums.check_blocks(first, &buf)?;
    Ok(file_len)
}

/// `<ino as 16 hex digits>.<index>` back into its parts.
fn parse_chunk_name(name: &str) -> Option<(InodeId, u64)> {
    let (ino, index) = name.split_once('.')?;
    Some((u64::from_str_radix(ino, 16).ok()?, index.parse().ok()?))
}

/// The verifier a clean stop left (None for an unknown version or a damaged file).
fn parse_clean(text: &str) -> Option<u64> {
    let (version, hex) = text.trim().split_once(' ')?;
    if version != CLEAN_VERSION {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().filter(|v| *v != 0)
}

/// A chunk or checksum file opened for reading and writing (`create`: made if missing), without
/// access-time updates where the kernel allows them (the node owns its files): a read of a
/// checksum file written since its last read would otherwise dirty its inode every time.
fn open_rw(path: &Path, create: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(create).truncate(false);
    match o.clone().custom_flags(libc::O_NOATIME).open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => o.open(path),
        r => r,
    }
}

fn sync_dir(dir: &Path) -> FsResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(e, "sync folder"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(seed: u8, n: usize) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[tokio::test]
    async fn a_removed_chunk_is_never_read_through_files_kept_open() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkStore::open(d.path());
        c.write(3, 7, 0, 0, Bytes::from(pattern(1, 8192)), true).await.unwrap();
        // Twice: the first read opens and keeps the files, the second is served through them.
        for _ in 0..2 {
            assert_eq!(&c.read(3, 7, 0, 0, 8192).await.unwrap()[..], &pattern(1, 8192)[..]);
        }
        assert_eq!(c.open.len(), 1);
        // Removed and written afresh (a new file at the same path).
        c.truncate(3, 7, 0, 0).await.unwrap();
        assert!(c.read(3, 7, 0, 0, 8192).await.unwrap().is_empty());
        c.write(3, 7, 0, 0, Bytes::from(pattern(2, 4096)), true).await.unwrap();
        assert_eq!(&c.read(3, 7, 0, 0, 8192).await.unwrap()[..], &pattern(2, 4096)[..]);
        // The same for the whole partition.
        c.delete_partition(3).await.unwrap();
        assert!(c.read(3, 7, 0, 0, 8192).await.unwrap().is_empty());
        c.write(3, 7, 0, 0, Bytes::from(pattern(3, 100)), true).await.unwrap();
        assert_eq!(&c.read(3, 7, 0, 0, 8192).await.unwrap()[..], &pattern(3, 100)[..]);
        // An overwrite in place is seen through the kept files.
        c.write(3, 7, 0, 10, Bytes::from(pattern(4, 10)), false).await.unwrap();
        let mut want = pattern(3, 100);
        want[10..20].copy_from_slice(&pattern(4, 10));
        assert_eq!(&c.read(3, 7, 0, 0, 8192).await.unwrap()[..], &want[..]);
    }

    #[tokio::test]
    async fn a_chunk_without_checksums_reads_as_it_is_and_is_not_kept_open() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkStore::open(d.path());
        c.write(1, 9, 0, 0, Bytes::from(pattern(5, 5000)), true).await.unwrap();
        // As a crash before the first checksum leaves it (and the files the writer kept open
        // went with the process).
        std::fs::remove_file(sums::sum_path(&c.path(1, 9, 0))).unwrap();
        c.open.forget((1, 9, 0));
        assert_eq!(
            &c.read(1, 9, 0, 100, 200).await.unwrap()[..],
            &pattern(5, 5000)[100..300]
        );
        assert!(c.read(1, 9, 0, 5000, 10).await.unwrap().is_empty());
        assert!(
            c.open.is_empty(),
            "a chunk without checksums is not kept: they may come"
        );
    }

    #[tokio::test]
    async fn writes_reads_and_catches_a_flipped_byte() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkStore::open(d.path());
        let mut model = vec![0u8; 0];
        // Unaligned writes, a hole, overwrites across block edges.
        for (off, len, seed) in [
            (0u64, 1000usize, 1u8),
            (70_000, 200_000, 2),
            (500, 140_000, 3),
            (400_000, 10, 4),
        ] {
            let data = pattern(seed, len);
            c.write(0, 7, 0, off, Bytes::from(data.clone()), false).await.unwrap();
            let end = off as usize + len;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[off as usize..end].copy_from_slice(&data);
        }
        let all = c.read(0, 7, 0, 0, 1 << 20).await.unwrap();
        assert_eq!(&all[..], &model[..]);
        let mid = c.read(0, 7, 0, 65_530, 100).await.unwrap();
        assert_eq!(&mid[..], &model[65_530..65_630]);
        // Truncate inside a block, then grow again.
        c.truncate(0, 7, 0, 100_000).await.unwrap();
        model.truncate(100_000);
        assert_eq!(&c.read(0, 7, 0, 0, 1 << 20).await.unwrap()[..], &model[..]);

        // Flip one byte on disk: the block is refused, others still read.
        let path = c.path(0, 7, 0);
        let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 70_001).unwrap();
        f.write_all_at(&[b[0] ^ 0x10], 70_001).unwrap();
        let e = c.read(0, 7, 0, 70_000, 10).await.unwrap_err();
        assert!(matches!(e, FsError::Corrupt(_)), "{e:?}");
        assert_eq!(e.to_errno(), libc::EIO);
        assert_eq!(&c.read(0, 7, 0, 0, 1000).await.unwrap()[..], &model[..1000]);
        // A write that keeps part of the bad block is refused too (it would bless it).
        let e = c
            .write(0, 7, 0, 70_010, Bytes::from_static(b"x"), false)
            .await
            .unwrap_err();
        assert!(matches!(e, FsError::Corrupt(_)), "{e:?}");
        // Repair from a good copy puts it right.
        let fixed = c.repair(0, 7, 0, Bytes::from(model.clone())).await.unwrap();
        assert_eq!(fixed, 1);
        assert_eq!(&c.read(0, 7, 0, 0, 1 << 20).await.unwrap()[..], &model[..]);
        // A whole-block overwrite of a bad block is fine as well.
        f.write_all_at(&[0xff], 1).unwrap();
        assert!(c.read(0, 7, 0, 0, 10).await.is_err());
        let block = pattern(9, sums::BLOCK as usize);
        c.write(0, 7, 0, 0, Bytes::from(block.clone()), true).await.unwrap();
        assert_eq!(&c.read(0, 7, 0, 0, 10).await.unwrap()[..], &block[..10]);
    }

    #[tokio::test]
    async fn writes_past_the_end_checksum_the_hole_as_zeros() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkStore::open(d.path());
        // Later pieces first, as write-behind sends them; an unaligned old end (5000) too.
        for (off, len, seed) in [
            (3u64 << 20, 1usize << 20, 1u8),
            (0, 5000, 2),
            (1 << 20, 4096, 3),
            (70_000, 10, 4),
        ] {
            c.write(2, 5, 0, off, Bytes::from(pattern(seed, len)), false)
                .await
                .unwrap();
            let path = c.path(2, 5, 0);
            let kept = Sums::load(&sums::sum_path(&path)).unwrap().unwrap();
            assert_eq!(
                kept,
                Sums::compute(&File::open(&path).unwrap()).unwrap(),
                "after the write at {off}"
            );
        }
        let mut hole = c.read(2, 5, 0, 5000, 100_000).await.unwrap().to_vec();
        hole.retain(|&b| b != 0);
        assert_eq!(hole, pattern(4, 10));
    }

    #[tokio::test]
    async fn checksums_written_piecemeal_match_the_data_after_every_change() {
        use rand::{Rng, SeedableRng};
        let d = tempfile::tempdir().unwrap();
        let c = ChunkStore::open(d.path());
        let path = c.path(4, 11, 0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut model: Vec<u8> = Vec::new();
        for step in 0..300 {
            if step % 50 == 49 {
                // A cut (through the kept files' inodes, by path) between runs of writes.
                let len = rng.random_range(0..=model.len() as u64);
                c.truncate(4, 11, 0, len).await.unwrap();
                model.truncate(len as usize);
            } else {
                let off = rng.random_range(0..300_000u64);
                let len = if rng.random_bool(0.5) {
                    4096
                } else {
                    rng.random_range(1..20_000usize)
                };
                let data = pattern(step as u8, len);
                c.write(4, 11, 0, off, Bytes::from(data.clone()), step % 7 == 0)
                    .await
                    .unwrap();
                let end = off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&data);
            }
            if model.is_empty() {
                continue;
            }
            let raw = std::fs::read(sums::sum_path(&path)).unwrap();
            let want = Sums::compute(&File::open(&path).unwrap()).unwrap();
            assert_eq!(raw, want.encode(), "checksum file after step {step}");
        }
        assert_eq!(&c.read(4, 11, 0, 0, 1 << 20).await.unwrap()[..], &model[..]);
    }

    #[tokio::test]
    async fn pieces_of_one_write_land_in_order_with_their_checksums() {
        use rand::{Rng, SeedableRng};
        let d = tempfile::tempdir().unwrap();
        let c = ChunkStore::open(d.path());
        let path = c.path(2, 12, 0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut model: Vec<u8> = Vec::new();
        for step in 0..120u32 {
            // Pieces may overlap (a later one wins), leave holes and grow the chunk.
            let n = rng.random_range(1..12);
            let mut pieces = Vec::new();
            for i in 0..n {
                let off = if i > 0 && rng.random_bool(0.3) {
                    pieces.last().map(|(o, _): &(u64, Bytes)| o + 100).unwrap()
                } else {
                    rng.random_range(0..400_000u64)
                };
                let len = if rng.random_bool(0.5) {
                    4096
                } else {
                    rng.random_range(1..9_000usize)
                };
                let data = pattern((step * 16 + i) as u8, len);
                let end = off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&data);
                pieces.push((off, Bytes::from(data)));
            }
            c.write_pieces(2, 12, 0, pieces, step % 5 == 0).await.unwrap();
            let raw = std::fs::read(sums::sum_path(&path)).unwrap();
            let want = Sums::compute(&File::open(&path).unwrap()).unwrap();
            assert_eq!(raw, want.encode(), "checksum file after step {step}");
        }
        assert_eq!(&c.read(2, 12, 0, 0, 1 << 20).await.unwrap()[..], &model[..]);
    }

    #[tokio::test]
    async fn chunks_with_64_kib_checksum_blocks_keep_working() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkStore::open(d.path());
        let mut model = pattern(5, 200_000);
        c.write(0, 8, 0, 0, Bytes::from(model.clone()), true).await.unwrap();
        // As an older node left it: version 1 checksums of 64 KiB blocks.
        let path = c.path(0, 8, 0);
        let old = Sums::compute_with(&File::open(&path).unwrap(), 64 << 10).unwrap();
        old.store(&sums::sum_path(&path), true).unwrap();
        for (off, len, seed) in [(70_000u64, 4096usize, 6u8), (131_072, 65_536, 7), (199_990, 30, 8)] {
            let data = pattern(seed, len);
            c.write(0, 8, 0, off, Bytes::from(data.clone()), false).await.unwrap();
            let end = off as usize + len;
            model.resize(model.len().max(end), 0);
            model[off as usize..end].copy_from_slice(&data);
        }
        c.truncate(0, 8, 0, 150_000).await.unwrap();
        model.truncate(150_000);
        assert_eq!(&c.read(0, 8, 0, 0, 1 << 20).await.unwrap()[..], &model[..]);
        assert_eq!(&c.read(0, 8, 0, 69_990, 50).await.unwrap()[..], &model[69_990..70_040]);
        let kept = Sums::load(&sums::sum_path(&path)).unwrap().unwrap();
        assert_eq!(kept.block(), 64 << 10);
        // And a flipped byte is still found.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[model[100_000] ^ 1], 100_000).unwrap();
        assert!(c.read(0, 8, 0, 99_000, 10).await.is_err());
    }

    #[tokio::test]
    async fn torn_checksums_are_recomputed_after_a_crash() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkStore::open(d.path());
        c.write(3, 9, 1, 0, Bytes::from(pattern(1, 5000)), true).await.unwrap();
        // A crash between data and checksum: the data changed, the checksum did not.
        let path = c.path(3, 9, 1);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(b"torn", 10)
            .unwrap();
        assert!(c.read(3, 9, 1, 0, 100).await.is_err());
        drop(c); // no close(): the RUNNING marker stays, as after kill -9
        let c = ChunkStore::open(d.path());
        let r = c.read(3, 9, 1, 0, 100).await.unwrap();
        assert_eq!(&r[10..14], b"torn");
        c.close();
        assert!(!d.path().join(RUNNING).exists());
    }

    #[tokio::test]
    async fn a_clean_stop_keeps_the_verifier_and_a_crash_changes_it() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkStore::open(d.path());
        let first = c.verifier;
        c.write(3, 9, 0, 0, Bytes::from(pattern(2, 5000)), false).await.unwrap();
        c.close();
        let c = ChunkStore::open(d.path());
        assert_eq!(c.verifier, first, "a clean stop keeps the verifier");
        assert!(!d.path().join(CLEAN).exists(), "taken over once");
        drop(c); // a crash: no close()
        let c = ChunkStore::open(d.path());
        assert_ne!(c.verifier, first, "after a crash the verifier changes");
        // A clean record left beside a crash marker is not trusted.
        std::fs::write(d.path().join(CLEAN), format!("v1 {:x}\n", c.verifier)).unwrap();
        let again = ChunkStore::open(d.path());
        assert_ne!(again.verifier, c.verifier);
        assert_eq!(parse_clean("v2 ff"), None);
        assert_eq!(parse_clean("v1 zz"), None);
        assert_eq!(parse_clean("v1 0"), None);
        assert_eq!(parse_clean("v1 1f\n"), Some(0x1f));
    }
}
