//! The one POSIX-shaped error type. Every layer speaks `FsError`; the edges map it to an errno
//! (FUSE), an nfsstat3 (NFS gateway) or a tonic::Status (the wire, in sealfs-proto).

use thiserror::Error;

/// Result alias used across sealfs.
pub type FsResult<T> = Result<T, FsError>;

/// A file-system error with a POSIX meaning.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("permission denied")]
    Access,
    #[error("operation not permitted")]
    Perm,
    #[error("file name too long")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("file too large")]
    FileTooBig,
    #[error("no space left on device")]
    NoSpace,
    #[error("read-only file system")]
    ReadOnly,
    #[error("too many links")]
    TooManyLinks,
    #[error("no such attribute")]
    NoData,
    #[error("result too large for the buffer")]
    Range,
    #[error("argument list too long")]
    TooBig,
    #[error("operation not supported")]
    NotSupported,
    #[error("too many levels of symbolic links")]
    Loop,
    #[error("resource busy")]
    Busy,
    #[error("stale file handle")]
    Stale,
    #[error("bad file descriptor")]
    BadFd,
    #[error("cross-device link")]
    CrossDevice,
    #[error("wrong cluster epoch (caller {caller}, node {node})")]
    WrongEpoch { caller: u64, node: u64 },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("timed out: {0}")]
    TimedOut(String),
    #[error("I/O error: {0}")]
    Io(String),
    /// Stored data failed its checksum (EIO to the caller; never served as good data).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl FsError {
    /// The errno a POSIX caller sees.
    pub fn to_errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Access => libc::EACCES,
            FsError::Perm => libc::EPERM,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::FileTooBig => libc::EFBIG,
            FsError::NoSpace => libc::ENOSPC,
            FsError::ReadOnly => libc::EROFS,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::NoData => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::TooBig => libc::E2BIG,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::Loop => libc::ELOOP,
            FsError::Busy => libc::EBUSY,
            FsError::Stale => libc::ESTALE,
            FsError::BadFd => libc::EBADF,
            FsError::CrossDevice => libc::EXDEV,
            FsError::WrongEpoch { .. } => libc::EAGAIN,
            FsError::Unavailable(_) => libc::EIO,
            FsError::TimedOut(_) => libc::ETIMEDOUT,
            FsError::Io(_) | FsError::Corrupt(_) => libc::EIO,
        }
    }

    /// The error for an errno received from the OS or the wire.
    pub fn from_errno(errno: i32, msg: &str) -> FsError {
        match errno {
            libc::ENOENT => FsError::NotFound,
            libc::EEXIST => FsError::Exists,
            libc::ENOTDIR => FsError::NotDir,
            libc::EISDIR => FsError::IsDir,
            libc::ENOTEMPTY => FsError::NotEmpty,
            libc::EACCES => FsError::Access,
            libc::EPERM => FsError::Perm,
            libc::ENAMETOOLONG => FsError::NameTooLong,
            libc::EINVAL => FsError::Invalid(msg.to_string()),
            libc::EFBIG => FsError::FileTooBig,
            libc::ENOSPC | libc::EDQUOT => FsError::NoSpace,
            libc::EROFS => FsError::ReadOnly,
            libc::EMLINK => FsError::TooManyLinks,
            libc::ENODATA => FsError::NoData,
            libc::ERANGE => FsError::Range,
            libc::E2BIG => FsError::TooBig,
            libc::EOPNOTSUPP => FsError::NotSupported,
            libc::ELOOP => FsError::Loop,
            libc::EBUSY => FsError::Busy,
            libc::ESTALE => FsError::Stale,
            libc::EBADF => FsError::BadFd,
            libc::EXDEV => FsError::CrossDevice,
            libc::ETIMEDOUT => FsError::TimedOut(msg.to_string()),
            _ => FsError::Io(format!("errno {errno}: {msg}")),
        }
    }

    /// Whether a caller may retry the same request (after refreshing its map).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            FsError::WrongEpoch { .. } | FsError::Unavailable(_) | FsError::TimedOut(_)
        )
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(errno) => FsError::from_errno(errno, &e.to_string()),
            None => FsError::Io(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_roundtrip() {
        for e in [
            FsError::NotFound,
            FsError::Exists,
            FsError::NotEmpty,
            FsError::NameTooLong,
            FsError::FileTooBig,
            FsError::NoSpace,
            FsError::NoData,
        ] {
            assert_eq!(FsError::from_errno(e.to_errno(), ""), e);
        }
        assert_eq!(FsError::Io("x".into()).to_errno(), libc::EIO);
    }
}
