//! The interface a file system implements to be served over NFSv3: every call carries the
//! caller (AUTH_SYS credentials and address) and works on opaque file handles the backend mints
//! itself, so handles can outlive the server process (a stateless gateway).

use std::net::SocketAddr;

use async_trait::async_trait;

use crate::mount::mountstat3;
use crate::nfs::*;

/// Who sends a call.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Effective uid (AUTH_SYS), or 65534 for AUTH_NULL.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Supplementary groups.
    pub gids: Vec<u32>,
    /// The client's address.
    pub addr: SocketAddr,
}

/// A directory's attributes around a change (wcc_data). `before` only when it was read
/// atomically with the change: a client whose cache matches it keeps its cached entries.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirWcc {
    /// Size and times just before the change.
    pub before: Option<wcc_attr>,
    /// Attributes after the change.
    pub after: Option<fattr3>,
}

impl From<DirWcc> for wcc_data {
    fn from(d: DirWcc) -> wcc_data {
        wcc_data {
            before: d.before.into(),
            after: d.after.into(),
        }
    }
}

/// Attributes of an object after an operation, and of its directory around it.
#[derive(Debug, Clone, Default)]
pub struct Created {
    pub handle: nfs_fh3,
    pub attr: Option<fattr3>,
    pub dir: DirWcc,
}

/// How a new regular file is created (CREATE's createhow3).
#[derive(Debug, Clone, Copy)]
pub enum CreateHow {
    /// Create or open an existing file, applying the attributes.
    Unchecked(sattr3),
    /// Fail with EXIST if the name exists.
    Guarded(sattr3),
    /// Exclusive create with a verifier that makes a retransmission succeed.
    Exclusive(createverf3),
}

/// A special file for MKNOD.
#[derive(Debug, Clone, Copy)]
pub enum SpecialFile {
    Char(specdata3),
    Block(specdata3),
    Socket,
    Fifo,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, Default)]
pub struct DirEntry {
    pub fileid: fileid3,
    pub name: Vec<u8>,
    pub cookie: cookie3,
    /// READDIRPLUS only.
    pub attr: Option<fattr3>,
    /// READDIRPLUS only.
    pub handle: Option<nfs_fh3>,
}

/// A page of a directory listing.
#[derive(Debug, Clone, Default)]
pub struct DirPage {
    pub entries: Vec<DirEntry>,
    pub eof: bool,
    pub dir_attr: Option<fattr3>,
}

/// Capacity (FSSTAT).
#[derive(Debug, Clone, Copy, Default)]
pub struct FsStat {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub avail_bytes: u64,
    pub total_files: u64,
    pub free_files: u64,
    pub avail_files: u64,
}

/// Result of a WRITE: bytes written, how durable, and the attributes after.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub count: u32,
    pub committed: stable_how,
    pub verifier: writeverf3,
    pub attr: Option<fattr3>,
}

/// stable_how of WRITE.
#[allow(non_camel_case_types)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, num_derive::FromPrimitive, num_derive::ToPrimitive)]
#[repr(u32)]
pub enum stable_how {
    UNSTABLE = 0,
    DATA_SYNC = 1,
    FILE_SYNC = 2,
}

/// An error with the attributes the reply may still carry.
pub type NfsResult<T> = Result<T, nfsstat3>;

/// A file system served over NFSv3 and MOUNT v3.
#[async_trait]
pub trait NfsBackend: Send + Sync + 'static {
    /// Whether `addr` may use the server at all; checked at MOUNT and on every NFS call.
    fn client_allowed(&self, addr: &SocketAddr) -> bool;

    /// The export paths (MOUNT EXPORT).
    fn exports(&self) -> Vec<Vec<u8>>;

    /// MOUNT MNT: the root handle of export `path`.
    async fn mount(&self, caller: &Caller, path: &[u8]) -> Result<nfs_fh3, mountstat3>;

    async fn getattr(&self, c: &Caller, fh: &nfs_fh3) -> NfsResult<fattr3>;

    /// SETATTR; `guard` is the ctime the client expects (NOT_SYNC if it differs).
    async fn setattr(&self, c: &Caller, fh: &nfs_fh3, attr: sattr3, guard: Option<nfstime3>) -> NfsResult<fattr3>;

    /// LOOKUP: the handle and attributes of `name` in `dir`.
    async fn lookup(&self, c: &Caller, dir: &nfs_fh3, name: &[u8]) -> NfsResult<(nfs_fh3, fattr3)>;

    /// ACCESS: which of the asked ACCESS3_* bits the caller has.
    async fn access(&self, c: &Caller, fh: &nfs_fh3, mask: u32) -> NfsResult<(u32, fattr3)>;

    async fn readlink(&self, c: &Caller, fh: &nfs_fh3) -> NfsResult<Vec<u8>>;

    /// READ: data and whether it reaches the end of the file.
    async fn read(
        &self,
        c: &Caller,
        fh: &nfs_fh3,
        offset: u64,
        count: u32,
    ) -> NfsResult<(bytes::Bytes, bool, Option<fattr3>)>;

    async fn write(
        &self,
        c: &Caller,
        fh: &nfs_fh3,
        offset: u64,
        data: bytes::Bytes,
        stable: stable_how,
    ) -> NfsResult<Written>;

    async fn create(&self, c: &Caller, dir: &nfs_fh3, name: &[u8], how: CreateHow) -> NfsResult<Created>;

    async fn mkdir(&self, c: &Caller, dir: &nfs_fh3, name: &[u8], attr: sattr3) -> NfsResult<Created>;

    async fn symlink(&self, c: &Caller, dir: &nfs_fh3, name: &[u8], target: &[u8], attr: sattr3) -> NfsResult<Created>;

    async fn mknod(
        &self,
        c: &Caller,
        dir: &nfs_fh3,
        name: &[u8],
        what: SpecialFile,
        attr: sattr3,
    ) -> NfsResult<Created>;

    /// REMOVE (non-directories); returns the directory's change.
    async fn remove(&self, c: &Caller, dir: &nfs_fh3, name: &[u8]) -> NfsResult<DirWcc>;

    /// RMDIR; returns the directory's change.
    async fn rmdir(&self, c: &Caller, dir: &nfs_fh3, name: &[u8]) -> NfsResult<DirWcc>;

    /// RENAME; returns both directories' changes.
    async fn rename(
        &self,
        c: &Caller,
        from_dir: &nfs_fh3,
        from_name: &[u8],
        to_dir: &nfs_fh3,
        to_name: &[u8],
    ) -> NfsResult<(DirWcc, DirWcc)>;

    /// LINK; returns the file's attributes and the directory's change.
    async fn link(&self, c: &Caller, fh: &nfs_fh3, dir: &nfs_fh3, name: &[u8]) -> NfsResult<(Option<fattr3>, DirWcc)>;

    /// READDIR / READDIRPLUS: up to `max_entries` entries after `cookie`.
    async fn readdir(
        &self,
        c: &Caller,
        dir: &nfs_fh3,
        cookie: cookie3,
        max_entries: u32,
        plus: bool,
    ) -> NfsResult<DirPage>;

    async fn fsstat(&self, c: &Caller, fh: &nfs_fh3) -> NfsResult<(FsStat, Option<fattr3>)>;

    /// Largest READ and WRITE the backend takes, and the largest file.
    fn limits(&self) -> (u32, u32, u64);

    /// COMMIT: make earlier unstable writes durable; returns the write verifier.
    async fn commit(
        &self,
        c: &Caller,
        fh: &nfs_fh3,
        offset: u64,
        count: u32,
    ) -> NfsResult<(writeverf3, Option<fattr3>)>;
}
