//! The NFSv3 backend over SealClient: translates handles, credentials and attributes, applies the
//! export options (read-only, squashing, allowed networks), and maps FsError to nfsstat3. No file
//! system logic lives here: names, permissions and POSIX rules are the storage nodes' job.
//!
//! GETATTR, ACCESS and the attributes of other replies come from the shared attribute cache
//! (`sealfs_client::cache`) while every node's change stream is live: NFS clients revalidate with
//! a GETATTR at every open and whenever their own cache times out, and each would otherwise be a
//! round trip to a node. The gateway's own changes update the cache as they end; other processes'
//! changes (other gateways, FUSE mounts) drop entries as their nodes commit them.
//!
//! UNSTABLE writes are answered once the chunks' replicas hold them, unsynced; the gateway keeps
//! what they touched (soft state, per file) until a COMMIT syncs it on every replica. Its write
//! verifier is drawn at start and changes whenever a COMMIT finds that a node can no longer vouch
//! for such writes (it crashed since), so clients resend what they had not seen committed: after
//! a gateway restart, a move to another gateway, or a node's crash. Writes no COMMIT covered for
//! `UNSTABLE_IDLE` are committed by the gateway itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use nfsserve::mount::mountstat3;
use nfsserve::nfs::*;
use nfsserve::vfs::*;
use sealfs_client::{
    AttrCache, CacheTtl, ChangeSink, Changed, DirChange, DirtyChunks, Entry, EntryCache, KnownDirs, SealClient, Ticket,
    WriteMode,
};
use sealfs_core::attr::{FileAttr, FileKind, SetAttr, TimeSpec, TimeUpdate};
use sealfs_core::config::{GatewayConfig, MAX_FILE_SIZE};
use sealfs_core::perm::{self, Credentials};
use sealfs_core::{FsError, FsResult, InodeId, ROOT_INO};
use tracing::{debug, trace, warn};

use crate::handle;

/// How FsError reaches an NFS client.
pub fn nfs_status(e: &FsError) -> nfsstat3 {
    use nfsstat3::*;
    match e {
        FsError::NotFound => NFS3ERR_NOENT,
        FsError::Exists => NFS3ERR_EXIST,
        FsError::NotDir => NFS3ERR_NOTDIR,
        FsError::IsDir => NFS3ERR_ISDIR,
        FsError::NotEmpty => NFS3ERR_NOTEMPTY,
        FsError::Access => NFS3ERR_ACCES,
        FsError::Perm => NFS3ERR_PERM,
        FsError::NameTooLong => NFS3ERR_NAMETOOLONG,
        FsError::Invalid(_) | FsError::Range | FsError::TooBig | FsError::Loop => NFS3ERR_INVAL,
        FsError::FileTooBig => NFS3ERR_FBIG,
        FsError::NoSpace => NFS3ERR_NOSPC,
        FsError::ReadOnly => NFS3ERR_ROFS,
        FsError::TooManyLinks => NFS3ERR_MLINK,
        FsError::NotSupported | FsError::NoData => NFS3ERR_NOTSUPP,
        FsError::Stale => NFS3ERR_STALE,
        FsError::BadFd => NFS3ERR_BADHANDLE,
        FsError::CrossDevice => NFS3ERR_XDEV,
        // Transient: the client waits and retries (hard mounts never fail on these).
        FsError::WrongEpoch { .. } | FsError::Unavailable(_) | FsError::TimedOut(_) | FsError::Busy => NFS3ERR_JUKEBOX,
        FsError::Io(_) | FsError::Corrupt(_) => NFS3ERR_IO,
    }
}

fn err(e: FsError) -> nfsstat3 {
    if matches!(e, FsError::Io(_)) {
        warn!("NFS call failed: {e}");
    }
    nfs_status(&e)
}

fn nfs_time(t: TimeSpec) -> nfstime3 {
    nfstime3 {
        seconds: t.sec.clamp(0, i64::from(u32::MAX)) as u32,
        nseconds: t.nsec,
    }
}

fn time_from(t: nfstime3) -> TimeSpec {
    TimeSpec {
        sec: i64::from(t.seconds),
        nsec: t.nseconds.min(999_999_999),
    }
}

fn ftype(k: FileKind) -> ftype3 {
    match k {
        FileKind::Regular => ftype3::NF3REG,
        FileKind::Directory => ftype3::NF3DIR,
        FileKind::Symlink => ftype3::NF3LNK,
        FileKind::Fifo => ftype3::NF3FIFO,
        FileKind::Socket => ftype3::NF3SOCK,
        FileKind::CharDevice => ftype3::NF3CHR,
        FileKind::BlockDevice => ftype3::NF3BLK,
    }
}

fn set_attr(s: &sattr3) -> SetAttr {
    SetAttr {
        perm: match s.mode {
            set_mode3::mode(m) => Some(m & 0o7777),
            set_mode3::Void => None,
        },
        uid: match s.uid {
            set_uid3::uid(u) => Some(u),
            set_uid3::Void => None,
        },
        gid: match s.gid {
            set_gid3::gid(g) => Some(g),
            set_gid3::Void => None,
        },
        size: match s.size {
            set_size3::size(z) => Some(z),
            set_size3::Void => None,
        },
        atime: match s.atime {
            set_atime::DONT_CHANGE => None,
            set_atime::SET_TO_SERVER_TIME => Some(TimeUpdate::Now),
            set_atime::SET_TO_CLIENT_TIME(t) => Some(TimeUpdate::Set(time_from(t))),
        },
        mtime: match s.mtime {
            set_mtime::DONT_CHANGE => None,
            set_mtime::SET_TO_SERVER_TIME => Some(TimeUpdate::Now),
            set_mtime::SET_TO_CLIENT_TIME(t) => Some(TimeUpdate::Set(time_from(t))),
        },
        via_open_handle: false,
    }
}

fn is_empty(s: &SetAttr) -> bool {
    s.perm.is_none() && s.uid.is_none() && s.gid.is_none() && s.size.is_none() && s.atime.is_none() && s.mtime.is_none()
}

fn mode_of(s: &sattr3, default: u32) -> u32 {
    match s.mode {
        set_mode3::mode(m) => m & 0o7777,
        set_mode3::Void => default,
    }
}

/// The gateway's NFS backend.
pub struct Gateway {
    client: SealClient,
    config: GatewayConfig,
    networks: Vec<ipnet::IpNet>,
    cluster_id: u64,
    ttl: Arc<CacheTtl>,
    attrs: Arc<AttrCache>,
    /// The directories this gateway made, with every name that may exist in them: a LOOKUP of
    /// any other name is answered ENOENT here (the one before each create, mostly).
    names: Arc<KnownDirs>,
    /// The names LOOKUPs found and this gateway made, with the inode each names: a LOOKUP of
    /// one whose folder and inode attributes are cached too costs no round trip.
    entries: Arc<EntryCache>,
    /// Chunks of UNSTABLE writes answered and not yet covered by a COMMIT, per file, with the
    /// time of the last one.
    unstable: DashMap<InodeId, (DirtyChunks, Instant)>,
    /// How many chunks `unstable` holds (about: updated after each change of it).
    unstable_chunks: AtomicUsize,
    /// Held, striped by inode, while a file's unstable writes are being committed: a second
    /// COMMIT (or the idle sweep) waits for the first instead of answering before it is done.
    committing: Vec<tokio::sync::Mutex<()>>,
    /// Drawn at start: the base of the write verifier.
    boot: u64,
    /// COMMITs that found unstable writes a node could no longer vouch for.
    losses: AtomicU64,
}

/// Most chunks (and most files: small files' unstable writes are inline, in no chunk) of
/// unstable writes a gateway keeps for COMMITs; past that, writes are made durable before their
/// reply (FILE_SYNC), so clients that never commit cannot grow it.
const MAX_UNSTABLE_CHUNKS: usize = 65_536;
/// Unstable writes no COMMIT covered for this long are committed by the gateway itself (a client
/// that wrote and then removed the file, or went away, never sends one).
pub const UNSTABLE_IDLE: Duration = Duration::from_secs(30);
/// Stripes of the per-file commit lock.
const COMMIT_STRIPES: usize = 64;

/// The gateway's caches, as the change streams' sink.
struct CacheSink {
    attrs: Arc<AttrCache>,
    names: Arc<KnownDirs>,
    entries: Arc<EntryCache>,
}

impl ChangeSink for CacheSink {
    fn inode(&self, ino: InodeId) {
        self.attrs.invalidate(ino);
    }

    fn entry(&self, parent: InodeId, name: Bytes) {
        self.entries.invalidate(parent, &name);
        self.names.entry_changed(&self.attrs, parent, &name);
    }

    fn clear(&self) {
        self.attrs.clear();
        self.entries.clear();
        self.names.clear();
    }
}

impl Gateway {
    /// A backend for `client` with the export options of `config` (already validated). Its
    /// attribute cache serves nothing until [`Gateway::watch`] has every node's stream live.
    pub fn new(client: SealClient, config: GatewayConfig) -> anyhow::Result<Gateway> {
        let networks = config.networks()?;
        let cluster_id = client.cluster_id();
        let ttl = CacheTtl::new(Duration::ZERO, Duration::from_millis(config.attr_cache_ms));
        let attrs = AttrCache::new(ttl.clone());
        Ok(Gateway {
            client,
            config,
            networks,
            cluster_id,
            entries: EntryCache::new(attrs.clone()),
            attrs,
            names: KnownDirs::new(ttl.clone()),
            ttl,
            unstable: DashMap::new(),
            unstable_chunks: AtomicUsize::new(0),
            committing: (0..COMMIT_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            boot: rand::random(),
            losses: AtomicU64::new(0),
        })
    }

    /// Follow every node's changes, so that the attribute cache can serve, until `cancel` fires
    /// (nothing when `attr_cache_ms` is 0).
    pub fn watch(&self, cancel: tokio_util::sync::CancellationToken) {
        let sink = Arc::new(CacheSink {
            attrs: self.attrs.clone(),
            names: self.names.clone(),
            entries: self.entries.clone(),
        });
        sealfs_client::watch::start(self.client.clone(), self.ttl.clone(), sink, cancel);
    }

    /// Whether the attribute cache serves: every node that is up has a live change stream.
    pub fn caching(&self) -> bool {
        self.ttl.watched_ttl().is_some()
    }

    /// Whether the attribute cache would answer for `ino` now.
    pub fn cached(&self, ino: InodeId) -> bool {
        self.attrs.get(ino).is_some()
    }

    /// A LOOKUP of `name` in `dir` answered from the caches: what the name names, that inode's
    /// attributes and the folder's (which must let `cred` search it) are all current.
    fn cached_lookup(&self, cred: &Credentials, dir: InodeId, name: &[u8]) -> Option<(nfs_fh3, fattr3)> {
        let ino = self.entries.get(dir, name)?;
        let (d, _) = self.attrs.get(dir)?;
        perm::check_access(cred, &d, perm::X_OK).ok()?;
        let (a, _) = self.attrs.get(ino)?;
        Some((self.fh(a.ino, a.generation), self.fattr(&a)))
    }

    /// Whether the gateway knows, without asking a node, which inode `name` in the folder `dir`
    /// names (a LOOKUP of it costs no round trip while both inodes' attributes are cached).
    pub fn known_name(&self, dir: &nfs_fh3, name: &[u8]) -> bool {
        self.ino(dir).is_ok_and(|d| self.entries.get(d, name).is_some())
    }

    /// Whether a LOOKUP of `name` in the folder `dir` would be answered "no such file" without
    /// asking a node (permissions aside).
    pub fn known_absent(&self, dir: &nfs_fh3, name: &[u8]) -> bool {
        self.ino(dir).is_ok_and(|d| self.names.absent(d, name))
    }

    /// Attributes of `ino`: from the cache while it holds them, else from its node (and kept).
    async fn attr(&self, cred: &Credentials, ino: InodeId) -> FsResult<FileAttr> {
        if let Some((a, _)) = self.attrs.get(ino) {
            return Ok(a);
        }
        let t = self.attrs.ticket();
        let e = self.client.getattr(cred, ino).await?;
        self.attrs.offer(t, &e.attr);
        Ok(e.attr)
    }

    /// A change of `ino` sent at `t` ended with `r`: its result is what the inode is now.
    fn changed(&self, t: Ticket, ino: InodeId, r: &FsResult<Entry>) {
        self.attrs.changed(t, ino, r.as_ref().ok().map(|e| &e.attr));
    }

    /// A create-like change of `name` in `dir` sent at `t` ended with `r`: the directory, the
    /// name and the new (or linked) inode are what the reply says, or unknown.
    fn note_created(&self, t: Ticket, dir: InodeId, name: &[u8], r: &FsResult<Entry>) {
        let e = r.as_ref().ok();
        self.entries.changed(t, dir, name, e.map(|e| e.attr.ino));
        self.attrs
            .changed(t, dir, e.and_then(|e| e.dir.as_ref()).map(|d| &d.after));
        if let Some(e) = e {
            self.attrs.changed(t, e.attr.ino, Some(&e.attr));
        }
    }

    /// `name` in `dir` is about to be made: from now on it may exist. Before the request, not
    /// after its reply, as another client's LOOKUP of it may come in between (nothing here
    /// orders the two, as the kernel's directory lock does for a FUSE mount).
    fn naming(&self, dir: InodeId, name: &[u8]) {
        self.names.touched(dir, name);
    }

    /// A change of names in `dir` and `new_dir` sent at `t` ended with `r`: the directories as
    /// the node left them, and every inode it says it touched; when that is not known, nothing
    /// cached is trusted.
    fn names_changed(&self, t: Ticket, dir: InodeId, new_dir: InodeId, r: &FsResult<Changed>) {
        self.attrs.names_changed(t, dir, new_dir, r);
    }

    /// setattr through the cache's bookkeeping.
    async fn set(&self, cred: &Credentials, ino: InodeId, s: &SetAttr) -> NfsResult<Entry> {
        let t = self.attrs.ticket();
        let r = self.client.setattr(cred, ino, s).await;
        self.changed(t, ino, &r);
        r.map_err(err)
    }

    fn fh(&self, ino: InodeId, generation: u64) -> nfs_fh3 {
        handle::make(self.cluster_id, ino, generation)
    }

    fn ino(&self, fh: &nfs_fh3) -> NfsResult<InodeId> {
        handle::parse(self.cluster_id, fh)
    }

    /// The credentials a caller acts with, after squashing.
    fn creds(&self, c: &Caller) -> Credentials {
        if self.config.all_squash || (self.config.root_squash && c.uid == 0) {
            return Credentials {
                uid: self.config.anon_uid,
                gid: self.config.anon_gid,
                groups: Vec::new(),
            };
        }
        Credentials {
            uid: c.uid,
            gid: c.gid,
            groups: c.gids.clone(),
        }
    }

    fn writable(&self) -> NfsResult<()> {
        if self.config.read_only {
            Err(nfsstat3::NFS3ERR_ROFS)
        } else {
            Ok(())
        }
    }

    /// NFS attributes of an object.
    pub fn fattr(&self, a: &FileAttr) -> fattr3 {
        let rdev = a.rdev;
        fattr3 {
            ftype: ftype(a.kind),
            mode: a.perm & 0o7777,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            used: a.blocks * 512,
            rdev: specdata3 {
                specdata1: libc::major(rdev as libc::dev_t),
                specdata2: libc::minor(rdev as libc::dev_t),
            },
            fsid: self.cluster_id,
            fileid: a.ino,
            atime: nfs_time(a.atime),
            mtime: nfs_time(a.mtime),
            ctime: nfs_time(a.ctime),
        }
    }

    async fn attr_of(&self, cred: &Credentials, ino: InodeId) -> Option<fattr3> {
        self.attr(cred, ino).await.ok().map(|a| self.fattr(&a))
    }

    /// Apply the attributes a create asked for beyond the mode (owner, size, times); the entry
    /// keeps the create's directory change.
    async fn apply_rest(&self, cred: &Credentials, e: Entry, s: &sattr3) -> NfsResult<Entry> {
        let mut rest = set_attr(s);
        rest.perm = None;
        if rest.uid == Some(e.attr.uid) {
            rest.uid = None;
        }
        if rest.gid == Some(e.attr.gid) {
            rest.gid = None;
        }
        if is_empty(&rest) {
            return Ok(e);
        }
        let mut done = self.set(cred, e.attr.ino, &rest).await?;
        done.dir = e.dir;
        Ok(done)
    }

    /// The reply of a create-like call: the new object and its directory's change.
    async fn created(&self, cred: &Credentials, e: Entry, dir_ino: InodeId) -> Created {
        Created {
            handle: self.fh(e.attr.ino, e.attr.generation),
            attr: Some(self.fattr(&e.attr)),
            dir: self.dir_wcc(cred, dir_ino, e.dir).await,
        }
    }

    /// A directory's wcc data: before and after from the node when it read them atomically with
    /// the change (the client then keeps its cached entries), else the attributes after alone.
    async fn dir_wcc(&self, cred: &Credentials, dir_ino: InodeId, change: Option<DirChange>) -> DirWcc {
        match change {
            Some(c) => DirWcc {
                before: Some(wcc_attr {
                    size: c.before.size,
                    mtime: nfs_time(c.before.mtime),
                    ctime: nfs_time(c.before.ctime),
                }),
                after: Some(self.fattr(&c.after)),
            },
            None => DirWcc {
                before: None,
                after: self.attr_of(cred, dir_ino).await,
            },
        }
    }

    fn allowed(&self, addr: &SocketAddr) -> bool {
        let ip = match addr.ip() {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(std::net::IpAddr::V4)
                .unwrap_or(std::net::IpAddr::V6(v6)),
            v4 => v4,
        };
        self.networks.iter().any(|n| n.contains(&ip))
    }

    /// The root of the export, resolved as `cred`.
    async fn export_root(&self, cred: &Credentials, path: &[u8]) -> Result<InodeId, FsError> {
        let mut ino = ROOT_INO;
        for part in path.split(|b| *b == b'/').filter(|p| !p.is_empty()) {
            let e = self.client.lookup(cred, ino, part).await?;
            if e.attr.kind != FileKind::Directory {
                return Err(FsError::NotDir);
            }
            ino = e.attr.ino;
        }
        Ok(ino)
    }

    /// The write verifier: it changes whenever unstable writes it was answered with may be lost.
    fn verifier(&self) -> writeverf3 {
        self.boot.wrapping_add(self.losses.load(Ordering::SeqCst)).to_be_bytes()
    }

    /// A READ of a chunked file whose attributes are cached: the permission is checked here, on
    /// the same rule the node applies, and only the chunks are read (the inode's round trip is
    /// saved: it is the busier of the two for small reads). None when either is not known.
    async fn read_with_cached_attr(
        &self,
        cred: &Credentials,
        ino: InodeId,
        offset: u64,
        count: u32,
    ) -> Option<FsResult<(Bytes, FileAttr)>> {
        let cs = self.client.known_chunk_size(ino)?;
        let (a, _) = self.attrs.get(ino)?;
        if a.kind != FileKind::Regular {
            return None;
        }
        Some(
            async {
                perm::check_io(cred, &a, false)?;
                let end = offset.saturating_add(u64::from(count)).min(a.size);
                if offset >= end {
                    return Ok((Bytes::new(), a));
                }
                let data = self.client.read_chunks(ino, offset, end, cs).await?;
                Ok((data, a))
            }
            .await,
        )
    }

    /// Keep the chunks of an answered unstable write of `ino` for its COMMIT.
    fn keep_unstable(&self, ino: InodeId, dirty: DirtyChunks) {
        let mut e = self
            .unstable
            .entry(ino)
            .or_insert_with(|| (DirtyChunks::default(), Instant::now()));
        let before = e.0.chunks();
        e.0.merge(dirty);
        e.1 = Instant::now();
        let added = e.0.chunks() - before;
        drop(e);
        self.unstable_chunks.fetch_add(added, Ordering::SeqCst);
    }

    /// Take what unstable writes of `ino` left to commit.
    fn take_unstable(&self, ino: InodeId) -> Option<DirtyChunks> {
        let (_, (d, _)) = self.unstable.remove(&ino)?;
        self.unstable_chunks.fetch_sub(d.chunks(), Ordering::SeqCst);
        Some(d)
    }

    /// Make the unstable writes of `ino` durable. When a node cannot vouch for them (it crashed
    /// since) or cannot sync them, the write verifier moves and this still succeeds: the client
    /// sends again every write it has not seen committed. Other failures keep them for a retry.
    async fn commit_unstable(&self, ino: InodeId) -> FsResult<()> {
        let _one_at_a_time = self.committing[(ino % COMMIT_STRIPES as u64) as usize].lock().await;
        let Some(dirty) = self.take_unstable(ino) else {
            return Ok(());
        };
        match self.client.commit(ino, dirty.clone()).await {
            Ok(()) => Ok(()),
            Err(FsError::Io(e)) => {
                warn!(ino, "unstable writes may be lost; the write verifier changes: {e}");
                self.losses.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                self.keep_unstable(ino, dirty);
                Err(e)
            }
        }
    }

    /// Commit the unstable writes of every file last written more than `idle` ago; returns how
    /// many files were committed.
    pub async fn commit_idle(&self, idle: Duration) -> usize {
        let old: Vec<InodeId> = self
            .unstable
            .iter()
            .filter(|e| e.value().1.elapsed() >= idle)
            .map(|e| *e.key())
            .collect();
        let mut done = 0;
        for ino in old {
            match self.commit_unstable(ino).await {
                Ok(()) => done += 1,
                Err(e) => debug!(ino, "idle unstable writes not committed yet: {e}"),
            }
        }
        done
    }

    /// Run [`Gateway::commit_idle`] every so often until `cancel` fires.
    pub async fn commit_idle_loop(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(UNSTABLE_IDLE / 2) => {}
            }
            self.commit_idle(UNSTABLE_IDLE).await;
        }
    }

    /// Files with unstable writes no COMMIT has covered yet.
    pub fn unstable_files(&self) -> usize {
        self.unstable.len()
    }
}

#[async_trait]
impl NfsBackend for Gateway {
    fn client_allowed(&self, addr: &SocketAddr) -> bool {
        self.allowed(addr)
    }

    fn exports(&self) -> Vec<Vec<u8>> {
        vec![self.config.export.as_bytes().to_vec()]
    }

    async fn mount(&self, caller: &Caller, path: &[u8]) -> Result<nfs_fh3, mountstat3> {
        let export = self.config.export.trim_end_matches('/').as_bytes();
        let norm: Vec<u8> = if path.len() > 1 && path.ends_with(b"/") {
            path[..path.len() - 1].to_vec()
        } else {
            path.to_vec()
        };
        // The export itself, or a folder below it.
        let below = if export.is_empty() {
            norm.starts_with(b"/")
        } else {
            norm == export || norm.starts_with(&[export, b"/"].concat())
        };
        if !below {
            return Err(mountstat3::MNT3ERR_NOENT);
        }
        let cred = self.creds(caller);
        match self.export_root(&cred, &norm).await {
            Ok(ino) => {
                let e = self
                    .client
                    .getattr(&cred, ino)
                    .await
                    .map_err(|_| mountstat3::MNT3ERR_IO)?;
                Ok(self.fh(ino, e.attr.generation))
            }
            Err(FsError::NotFound) => Err(mountstat3::MNT3ERR_NOENT),
            Err(FsError::NotDir) => Err(mountstat3::MNT3ERR_NOTDIR),
            Err(FsError::Access) | Err(FsError::Perm) => Err(mountstat3::MNT3ERR_ACCES),
            Err(e) => {
                warn!("MNT failed: {e}");
                Err(mountstat3::MNT3ERR_SERVERFAULT)
            }
        }
    }

    async fn getattr(&self, c: &Caller, fh: &nfs_fh3) -> NfsResult<fattr3> {
        let ino = self.ino(fh)?;
        let a = self.attr(&self.creds(c), ino).await.map_err(err)?;
        Ok(self.fattr(&a))
    }

    async fn setattr(&self, c: &Caller, fh: &nfs_fh3, attr: sattr3, guard: Option<nfstime3>) -> NfsResult<fattr3> {
        self.writable()?;
        let ino = self.ino(fh)?;
        let cred = self.creds(c);
        if let Some(ctime) = guard {
            let cur = self.client.getattr(&cred, ino).await.map_err(err)?;
            let t = nfs_time(cur.attr.ctime);
            if (t.seconds, t.nseconds) != (ctime.seconds, ctime.nseconds) {
                return Err(nfsstat3::NFS3ERR_NOT_SYNC);
            }
        }
        let s = set_attr(&attr);
        if is_empty(&s) {
            return self.getattr(c, fh).await;
        }
        let e = self.set(&cred, ino, &s).await?;
        Ok(self.fattr(&e.attr))
    }

    async fn lookup(&self, c: &Caller, dir: &nfs_fh3, name: &[u8]) -> NfsResult<(nfs_fh3, fattr3)> {
        let dir = self.ino(dir)?;
        let cred = self.creds(c);
        if self.names.answers_absent(&self.attrs, &cred, dir, name) {
            // A directory this gateway made, the caller may search it, and nobody made this
            // name in it.
            return Err(nfsstat3::NFS3ERR_NOENT);
        }
        if let Some(found) = self.cached_lookup(&cred, dir, name) {
            trace!(dir, "LOOKUP answered from the cache");
            return Ok(found);
        }
        let t = self.attrs.ticket();
        let r = self.client.lookup(&cred, dir, name).await;
        if matches!(r, Err(FsError::NotFound)) {
            // Gone: what the name named is forgotten now, not when the stream says so (its
            // inode's change may come first and send lookups here before that).
            self.entries.invalidate(dir, name);
        }
        let e = r.map_err(err)?;
        self.attrs.offer(t, &e.attr);
        self.entries.offer(t, dir, name, e.attr.ino);
        Ok((self.fh(e.attr.ino, e.attr.generation), self.fattr(&e.attr)))
    }

    async fn access(&self, c: &Caller, fh: &nfs_fh3, mask: u32) -> NfsResult<(u32, fattr3)> {
        use nfsserve::nfs_handlers::*;
        let ino = self.ino(fh)?;
        let cred = self.creds(c);
        let a = &self.attr(&cred, ino).await.map_err(err)?;
        let can = |bits: u32| perm::check_access(&cred, a, bits).is_ok();
        let dir = a.kind == FileKind::Directory;
        let mut granted = 0;
        if mask & ACCESS3_READ != 0 && can(perm::R_OK) {
            granted |= ACCESS3_READ;
        }
        if mask & ACCESS3_LOOKUP != 0 && dir && can(perm::X_OK) {
            granted |= ACCESS3_LOOKUP;
        }
        if !self.config.read_only {
            for bit in [ACCESS3_MODIFY, ACCESS3_EXTEND] {
                if mask & bit != 0 && can(perm::W_OK) {
                    granted |= bit;
                }
            }
            if mask & ACCESS3_DELETE != 0 && dir && can(perm::W_OK | perm::X_OK) {
                granted |= ACCESS3_DELETE;
            }
        }
        if mask & ACCESS3_EXECUTE != 0 && !dir && can(perm::X_OK) {
            granted |= ACCESS3_EXECUTE;
        }
        Ok((granted, self.fattr(a)))
    }

    async fn readlink(&self, c: &Caller, fh: &nfs_fh3) -> NfsResult<Vec<u8>> {
        let ino = self.ino(fh)?;
        self.client.readlink(&self.creds(c), ino).await.map_err(err)
    }

    async fn read(
        &self,
        c: &Caller,
        fh: &nfs_fh3,
        offset: u64,
        count: u32,
    ) -> NfsResult<(Bytes, bool, Option<fattr3>)> {
        let ino = self.ino(fh)?;
        let count = count.min(self.config.max_io);
        let cred = self.creds(c);
        let (data, attr) = match self.read_with_cached_attr(&cred, ino, offset, count).await {
            Some(r) => r.map_err(err)?,
            None => {
                let t = self.attrs.ticket();
                let r = self
                    .client
                    .read_checked(&cred, ino, offset, count, true)
                    .await
                    .map_err(err)?;
                self.attrs.offer(t, &r.1);
                r
            }
        };
        let eof = offset.saturating_add(data.len() as u64) >= attr.size;
        Ok((data, eof, Some(self.fattr(&attr))))
    }

    async fn write(
        &self,
        c: &Caller,
        fh: &nfs_fh3,
        offset: u64,
        data: Bytes,
        stable: stable_how,
    ) -> NfsResult<Written> {
        self.writable()?;
        let ino = self.ino(fh)?;
        if data.len() > self.config.max_io as usize {
            return Err(nfsstat3::NFS3ERR_INVAL);
        }
        let count = data.len() as u32;
        let mut dirty = DirtyChunks::default();
        let unstable = stable == stable_how::UNSTABLE
            && self.unstable_chunks.load(Ordering::SeqCst) < MAX_UNSTABLE_CHUNKS
            && self.unstable.len() < MAX_UNSTABLE_CHUNKS;
        let mode = WriteMode {
            stable: !unstable,
            check_perm: true,
            known: None,
        };
        let t = self.attrs.ticket();
        let r = self
            .client
            .write(&self.creds(c), ino, offset, data, mode, &mut dirty)
            .await;
        self.changed(t, ino, &r);
        let e = r.map_err(err)?;
        // Nothing left to commit: written FILE_SYNC, as asked or past the limits of what is kept.
        let committed = if dirty.is_empty() {
            stable_how::FILE_SYNC
        } else {
            self.keep_unstable(ino, dirty);
            stable_how::UNSTABLE
        };
        Ok(Written {
            count,
            committed,
            verifier: self.verifier(),
            attr: Some(self.fattr(&e.attr)),
        })
    }

    async fn create(&self, c: &Caller, dir: &nfs_fh3, name: &[u8], how: CreateHow) -> NfsResult<Created> {
        self.writable()?;
        let dir_ino = self.ino(dir)?;
        let cred = self.creds(c);
        self.naming(dir_ino, name);
        let e = match how {
            CreateHow::Unchecked(s) | CreateHow::Guarded(s) => {
                let exclusive = matches!(how, CreateHow::Guarded(_));
                let t = self.attrs.ticket();
                let r = self
                    .client
                    .create(
                        &cred,
                        dir_ino,
                        name,
                        FileKind::Regular,
                        mode_of(&s, 0o644),
                        0,
                        exclusive,
                        libc::O_WRONLY,
                    )
                    .await;
                self.note_created(t, dir_ino, name, &r);
                self.apply_rest(&cred, r.map_err(err)?, &s).await?
            }
            CreateHow::Exclusive(verf) => {
                // The verifier lives in the times until the client sets real ones, so that a
                // retransmitted exclusive create finds its own file.
                let (a, m) = (
                    u32::from_be_bytes(verf[..4].try_into().expect("4")),
                    u32::from_be_bytes(verf[4..].try_into().expect("4")),
                );
                let stamp = |e: &Entry| nfs_time(e.attr.atime).seconds == a && nfs_time(e.attr.mtime).seconds == m;
                let t = self.attrs.ticket();
                let r = self
                    .client
                    .create(&cred, dir_ino, name, FileKind::Regular, 0o600, 0, true, 0)
                    .await;
                self.note_created(t, dir_ino, name, &r);
                match r {
                    Ok(e) => {
                        let s = SetAttr {
                            atime: Some(TimeUpdate::Set(TimeSpec {
                                sec: i64::from(a),
                                nsec: 0,
                            })),
                            mtime: Some(TimeUpdate::Set(TimeSpec {
                                sec: i64::from(m),
                                nsec: 0,
                            })),
                            ..Default::default()
                        };
                        let mut stamped = self.set(&cred, e.attr.ino, &s).await?;
                        stamped.dir = e.dir;
                        stamped
                    }
                    Err(FsError::Exists) => {
                        let t = self.attrs.ticket();
                        let e = self.client.lookup(&cred, dir_ino, name).await.map_err(err)?;
                        self.attrs.offer(t, &e.attr);
                        self.entries.offer(t, dir_ino, name, e.attr.ino);
                        if !stamp(&e) {
                            return Err(nfsstat3::NFS3ERR_EXIST);
                        }
                        e
                    }
                    Err(e) => return Err(err(e)),
                }
            }
        };
        Ok(self.created(&cred, e, dir_ino).await)
    }

    async fn mkdir(&self, c: &Caller, dir: &nfs_fh3, name: &[u8], attr: sattr3) -> NfsResult<Created> {
        self.writable()?;
        let dir_ino = self.ino(dir)?;
        let cred = self.creds(c);
        self.naming(dir_ino, name);
        let t = self.attrs.ticket();
        let r = self.client.mkdir(&cred, dir_ino, name, mode_of(&attr, 0o755)).await;
        if let Ok(e) = &r {
            self.names.made_at(&self.attrs, t, e.attr.ino);
        }
        self.note_created(t, dir_ino, name, &r);
        let e = self.apply_rest(&cred, r.map_err(err)?, &attr).await?;
        Ok(self.created(&cred, e, dir_ino).await)
    }

    async fn symlink(&self, c: &Caller, dir: &nfs_fh3, name: &[u8], target: &[u8], attr: sattr3) -> NfsResult<Created> {
        self.writable()?;
        let dir_ino = self.ino(dir)?;
        let cred = self.creds(c);
        self.naming(dir_ino, name);
        let t = self.attrs.ticket();
        let r = self.client.symlink(&cred, dir_ino, name, target).await;
        self.note_created(t, dir_ino, name, &r);
        let mut rest = attr;
        rest.mode = set_mode3::Void;
        let e = self.apply_rest(&cred, r.map_err(err)?, &rest).await?;
        Ok(self.created(&cred, e, dir_ino).await)
    }

    async fn mknod(
        &self,
        c: &Caller,
        dir: &nfs_fh3,
        name: &[u8],
        what: SpecialFile,
        attr: sattr3,
    ) -> NfsResult<Created> {
        self.writable()?;
        let dir_ino = self.ino(dir)?;
        let cred = self.creds(c);
        let (kind, rdev) = match what {
            SpecialFile::Char(s) => (FileKind::CharDevice, libc::makedev(s.specdata1, s.specdata2)),
            SpecialFile::Block(s) => (FileKind::BlockDevice, libc::makedev(s.specdata1, s.specdata2)),
            SpecialFile::Socket => (FileKind::Socket, 0),
            SpecialFile::Fifo => (FileKind::Fifo, 0),
        };
        self.naming(dir_ino, name);
        let t = self.attrs.ticket();
        let r = self
            .client
            .create(&cred, dir_ino, name, kind, mode_of(&attr, 0o644), rdev, true, 0)
            .await;
        self.note_created(t, dir_ino, name, &r);
        let e = self.apply_rest(&cred, r.map_err(err)?, &attr).await?;
        Ok(self.created(&cred, e, dir_ino).await)
    }

    async fn remove(&self, c: &Caller, dir: &nfs_fh3, name: &[u8]) -> NfsResult<DirWcc> {
        self.writable()?;
        let dir_ino = self.ino(dir)?;
        let cred = self.creds(c);
        let t = self.attrs.ticket();
        let r = self.client.unlink(&cred, dir_ino, name).await;
        self.entries.changed(t, dir_ino, name, None);
        self.names_changed(t, dir_ino, dir_ino, &r);
        let ch = r.map_err(err)?;
        Ok(self.dir_wcc(&cred, dir_ino, ch.dir).await)
    }

    async fn rmdir(&self, c: &Caller, dir: &nfs_fh3, name: &[u8]) -> NfsResult<DirWcc> {
        self.writable()?;
        let dir_ino = self.ino(dir)?;
        let cred = self.creds(c);
        let t = self.attrs.ticket();
        let r = self.client.rmdir(&cred, dir_ino, name).await;
        self.entries.changed(t, dir_ino, name, None);
        self.names_changed(t, dir_ino, dir_ino, &r);
        if let Ok(c) = &r {
            c.touched.iter().for_each(|d| self.names.forget(*d));
        }
        let ch = r.map_err(err)?;
        Ok(self.dir_wcc(&cred, dir_ino, ch.dir).await)
    }

    async fn rename(
        &self,
        c: &Caller,
        from_dir: &nfs_fh3,
        from_name: &[u8],
        to_dir: &nfs_fh3,
        to_name: &[u8],
    ) -> NfsResult<(DirWcc, DirWcc)> {
        self.writable()?;
        let (from, to) = (self.ino(from_dir)?, self.ino(to_dir)?);
        let cred = self.creds(c);
        self.naming(to, to_name);
        let t = self.attrs.ticket();
        let r = self.client.rename(&cred, from, from_name, to, to_name, 0).await;
        self.entries.changed(t, from, from_name, None);
        self.entries.changed(t, to, to_name, None);
        self.names_changed(t, from, to, &r);
        let ch = r.map_err(err)?;
        let from_wcc = self.dir_wcc(&cred, from, ch.dir).await;
        let to_wcc = if from == to {
            from_wcc
        } else {
            self.dir_wcc(&cred, to, ch.new_dir).await
        };
        Ok((from_wcc, to_wcc))
    }

    async fn link(&self, c: &Caller, fh: &nfs_fh3, dir: &nfs_fh3, name: &[u8]) -> NfsResult<(Option<fattr3>, DirWcc)> {
        self.writable()?;
        let (ino, dir_ino) = (self.ino(fh)?, self.ino(dir)?);
        let cred = self.creds(c);
        self.naming(dir_ino, name);
        let t = self.attrs.ticket();
        let r = self.client.link(&cred, ino, dir_ino, name).await;
        self.note_created(t, dir_ino, name, &r);
        let e = r.map_err(err)?;
        Ok((Some(self.fattr(&e.attr)), self.dir_wcc(&cred, dir_ino, e.dir).await))
    }

    async fn readdir(
        &self,
        c: &Caller,
        dir: &nfs_fh3,
        cookie: cookie3,
        max_entries: u32,
        plus: bool,
    ) -> NfsResult<DirPage> {
        let dir_ino = self.ino(dir)?;
        let cred = self.creds(c);
        let t = self.attrs.ticket();
        let d = self.client.getattr(&cred, dir_ino).await.map_err(err)?;
        self.attrs.offer(t, &d.attr);
        if d.attr.kind != FileKind::Directory {
            return Err(nfsstat3::NFS3ERR_NOTDIR);
        }
        let mut entries = Vec::new();
        // "." and ".." first, at cookies 1 and 2 (the cluster's cookies start at 3).
        if cookie < 2 {
            let up = if d.parent != 0 { d.parent } else { dir_ino };
            let dots: [(&[u8], InodeId, u64); 2] = [(b".", dir_ino, 1), (b"..", up, 2)];
            for (name, ino, ck) in dots {
                if ck <= cookie {
                    continue;
                }
                let (attr, handle) = if plus && ino == dir_ino {
                    (Some(self.fattr(&d.attr)), Some(self.fh(ino, d.attr.generation)))
                } else {
                    (None, None)
                };
                entries.push(DirEntry {
                    fileid: ino,
                    name: name.to_vec(),
                    cookie: ck,
                    attr,
                    handle,
                });
            }
        }
        let from = if cookie < 3 { 0 } else { cookie };
        let want = max_entries.saturating_sub(entries.len() as u32).max(1);
        let (list, eof) = self
            .client
            .readdir(&cred, dir_ino, from, want, plus)
            .await
            .map_err(err)?;
        for e in list {
            let (attr, handle) = match &e.attr {
                Some(a) if plus => {
                    self.attrs.offer(t, a);
                    self.entries.offer(t, dir_ino, &e.name, e.ino);
                    (Some(self.fattr(a)), Some(self.fh(e.ino, a.generation)))
                }
                _ => (None, None),
            };
            entries.push(DirEntry {
                fileid: e.ino,
                name: e.name,
                cookie: e.cookie,
                attr,
                handle,
            });
        }
        Ok(DirPage {
            entries,
            eof,
            dir_attr: Some(self.fattr(&d.attr)),
        })
    }

    async fn fsstat(&self, c: &Caller, fh: &nfs_fh3) -> NfsResult<(FsStat, Option<fattr3>)> {
        let ino = self.ino(fh)?;
        let s = self.client.statfs().await.map_err(err)?;
        // Inodes are not preallocated: count what the free space could hold at one block each.
        let free_files = s.free_bytes / 4096;
        let st = FsStat {
            total_bytes: s.total_bytes,
            free_bytes: s.free_bytes,
            avail_bytes: s.free_bytes,
            total_files: s.inodes + free_files,
            free_files,
            avail_files: free_files,
        };
        Ok((st, self.attr_of(&self.creds(c), ino).await))
    }

    fn limits(&self) -> (u32, u32, u64) {
        (self.config.max_io, self.config.max_io, MAX_FILE_SIZE)
    }

    async fn commit(
        &self,
        c: &Caller,
        fh: &nfs_fh3,
        _offset: u64,
        _count: u32,
    ) -> NfsResult<(writeverf3, Option<fattr3>)> {
        // The whole file's unstable writes are committed, whatever the range: a superset.
        let ino = self.ino(fh)?;
        self.commit_unstable(ino).await.map_err(err)?;
        Ok((self.verifier(), self.attr_of(&self.creds(c), ino).await))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_nfs_statuses() {
        assert_eq!(nfs_status(&FsError::NotFound) as u32, 2);
        assert_eq!(nfs_status(&FsError::NameTooLong) as u32, 63);
        assert_eq!(nfs_status(&FsError::Unavailable("x".into())) as u32, 10008);
        assert_eq!(nfs_status(&FsError::Stale) as u32, 70);
    }

    #[test]
    fn sattr_becomes_setattr() {
        let s = sattr3 {
            mode: set_mode3::mode(0o104755),
            size: set_size3::size(7),
            ..Default::default()
        };
        let r = set_attr(&s);
        assert_eq!(r.perm, Some(0o4755));
        assert_eq!(r.size, Some(7));
        assert!(r.uid.is_none() && r.atime.is_none());
    }
}
