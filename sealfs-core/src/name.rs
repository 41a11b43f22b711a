//! Name rules for directory entries, checked once (on the node) for every frontend.

use crate::error::{FsError, FsResult};

/// The longest name a directory entry may have, in bytes (NAME_MAX).
pub const NAME_MAX: usize = 255;
/// The longest symlink target, in bytes (PATH_MAX - 1).
pub const SYMLINK_MAX: usize = 4095;

/// Check that `name` can be a directory entry: not empty, not `.` or `..`, no `/` or NUL, at most
/// NAME_MAX bytes.
pub fn validate_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." {
        return Err(FsError::Invalid("reserved or empty name".into()));
    }
    if name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(FsError::Invalid("name contains '/' or NUL".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name(b"ok").is_ok());
        assert_eq!(validate_name(&[b'a'; 256]), Err(FsError::NameTooLong));
        assert!(validate_name(&[b'a'; 255]).is_ok());
        assert!(validate_name(b".").is_err());
        assert!(validate_name(b"..").is_err());
        assert!(validate_name(b"a/b").is_err());
        assert!(validate_name(b"").is_err());
        assert!(validate_name("ünïcödé".as_bytes()).is_ok());
    }
}
