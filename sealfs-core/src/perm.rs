//! POSIX permission rules, written once for every frontend and enforced on the storage node that
//! owns the inode: mode-bit access checks, the sticky bit, and who may chmod, chown or set times.

use crate::attr::{FileAttr, FileKind, SetAttr, TimeUpdate};
use crate::error::{FsError, FsResult};

/// Read permission bit of an access mask.
pub const R_OK: u32 = 4;
/// Write permission bit of an access mask.
pub const W_OK: u32 = 2;
/// Execute/search permission bit of an access mask.
pub const X_OK: u32 = 1;

/// Who is asking: the caller's effective uid, gid and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Credentials {
    /// The superuser.
    pub fn root() -> Credentials {
        Credentials::default()
    }

    /// Whether this caller is the superuser.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether `gid` is the caller's group or one of its supplementary groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// Check `mask` (R_OK | W_OK | X_OK) against an inode's mode bits, as generic_permission does.
pub fn check_access(cred: &Credentials, attr: &FileAttr, mask: u32) -> FsResult<()> {
    let mask = mask & 7;
    if cred.is_root() {
        // Root may read and write anything; execute needs one x bit unless it is a directory.
        if mask & X_OK != 0 && attr.kind != FileKind::Directory && attr.perm & 0o111 == 0 {
            return Err(FsError::Access);
        }
        return Ok(());
    }
    let bits = if cred.uid == attr.uid {
        (attr.perm >> 6) & 7
    } else if cred.in_group(attr.gid) {
        (attr.perm >> 3) & 7
    } else {
        attr.perm & 7
    };
    if bits & mask == mask {
        Ok(())
    } else {
        Err(FsError::Access)
    }
}

/// Permission for one READ or WRITE of a stateless protocol (NFS), which checks on every call
/// rather than at open. As the Linux NFS server does, the owner may read and write their own file
/// whatever its mode (they may have opened it before a chmod), and reading is allowed with
/// execute permission (the client reads a program it executes).
pub fn check_io(cred: &Credentials, attr: &FileAttr, write: bool) -> FsResult<()> {
    if cred.is_root() || cred.uid == attr.uid {
        return Ok(());
    }
    if write {
        check_access(cred, attr, W_OK)
    } else {
        check_access(cred, attr, R_OK).or_else(|_| check_access(cred, attr, X_OK))
    }
}

/// The sticky-directory rule for removing or renaming `victim` out of `dir`.
pub fn check_sticky(cred: &Credentials, dir: &FileAttr, victim: &FileAttr) -> FsResult<()> {
    if dir.perm & libc::S_ISVTX == 0 || cred.is_root() {
        return Ok(());
    }
    if cred.uid == dir.uid || cred.uid == victim.uid {
        Ok(())
    } else {
        Err(FsError::Perm)
    }
}

/// Check that the caller may create or remove entries in `dir` (write and search permission).
pub fn check_dir_write(cred: &Credentials, dir: &FileAttr) -> FsResult<()> {
    if dir.kind != FileKind::Directory {
        return Err(FsError::NotDir);
    }
    check_access(cred, dir, W_OK | X_OK)
}

/// The access mask an open with these flags needs (O_TRUNC needs write).
pub fn open_mask(flags: i32) -> u32 {
    let mut mask = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => R_OK,
        libc::O_WRONLY => W_OK,
        _ => R_OK | W_OK,
    };
    if flags & libc::O_TRUNC != 0 {
        mask |= W_OK;
    }
    mask
}

/// Owner, gid and permission bits of a new inode created by `cred` in `parent`: BSD group
/// semantics when the parent is setgid, and the setgid bit dropped where the creator may not keep it.
pub fn new_inode_owner(cred: &Credentials, parent: &FileAttr, kind: FileKind, perm: u32) -> (u32, u32, u32) {
    let mut perm = perm & 0o7777;
    let gid = if parent.perm & libc::S_ISGID != 0 {
        if kind == FileKind::Directory {
            perm |= libc::S_ISGID;
        }
        parent.gid
    } else {
        cred.gid
    };
    if kind != FileKind::Directory && perm & libc::S_ISGID != 0 && !cred.is_root() && !cred.in_group(gid) {
        perm &= !libc::S_ISGID;
    }
    (cred.uid, gid, perm)
}

/// Validate a setattr against the POSIX ownership rules and apply its mode, owner and time parts
/// to `attr` (size is applied by the caller, which also owns the data). `now` stamps ctime and
/// any time set to "now". Returns whether anything changed.
pub fn apply_setattr(
    cred: &Credentials,
    attr: &mut FileAttr,
    req: &SetAttr,
    now: crate::attr::TimeSpec,
) -> FsResult<()> {
    let is_owner = cred.is_root() || cred.uid == attr.uid;
    // Ownership first: chown is root-only; chgrp is for the owner, to a group it is in.
    if let Some(uid) = req.uid {
        if uid != attr.uid && !cred.is_root() {
            return Err(FsError::Perm);
        }
        if uid == attr.uid && !is_owner {
            return Err(FsError::Perm);
        }
    }
    if let Some(gid) = req.gid {
        if !cred.is_root() && (cred.uid != attr.uid || (gid != attr.gid && !cred.in_group(gid))) {
            return Err(FsError::Perm);
        }
    }
    if req.perm.is_some() && !is_owner {
        return Err(FsError::Perm);
    }
    if req.size.is_some() {
        if attr.kind == FileKind::Directory {
            return Err(FsError::IsDir);
        }
        if attr.kind != FileKind::Regular {
            return Err(FsError::Invalid("truncate of a special file".into()));
        }
        if !req.via_open_handle {
            check_access(cred, attr, W_OK)?;
        }
    }
    let explicit_time = matches!(req.atime, Some(TimeUpdate::Set(_))) || matches!(req.mtime, Some(TimeUpdate::Set(_)));
    let now_time = matches!(req.atime, Some(TimeUpdate::Now)) || matches!(req.mtime, Some(TimeUpdate::Now));
    if explicit_time && !is_owner {
        return Err(FsError::Perm);
    }
    if now_time && !explicit_time && !is_owner {
        check_access(cred, attr, W_OK)?;
    }

    let new_gid = req.gid.unwrap_or(attr.gid);
    if let Some(uid) = req.uid {
        attr.uid = uid;
    }
    if let Some(gid) = req.gid {
        attr.gid = gid;
    }
    if (req.uid.is_some() || req.gid.is_some()) && attr.kind != FileKind::Directory {
        // chown clears setuid, and setgid when it means group execute (not mandatory locking).
        attr.perm &= !libc::S_ISUID;
        if attr.perm & libc::S_IXGRP != 0 {
            attr.perm &= !libc::S_ISGID;
        }
    }
    if let Some(perm) = req.perm {
        let mut perm = perm & 0o7777;
        if !cred.is_root() && !cred.in_group(new_gid) {
            perm &= !libc::S_ISGID;
        }
        attr.perm = perm;
    }
    match req.atime {
        Some(TimeUpdate::Now) => attr.atime = now,
        Some(TimeUpdate::Set(t)) => attr.atime = t,
        None => {}
    }
    match req.mtime {
        Some(TimeUpdate::Now) => attr.mtime = now,
        Some(TimeUpdate::Set(t)) => attr.mtime = t,
        None => {}
    }
    attr.ctime = now;
    Ok(())
}

/// Xattr namespaces sealfs stores, and who may touch them.
pub fn check_xattr(cred: &Credentials, attr: &FileAttr, name: &[u8], write: bool) -> FsResult<()> {
    if name.is_empty() || name.len() > 255 {
        return Err(if name.is_empty() {
            FsError::Invalid("empty xattr name".into())
        } else {
            FsError::Range
        });
    }
    if name.starts_with(b"user.") {
        if !matches!(attr.kind, FileKind::Regular | FileKind::Directory) {
            return Err(if write { FsError::Perm } else { FsError::NoData });
        }
        if write
            && attr.kind == FileKind::Directory
            && attr.perm & libc::S_ISVTX != 0
            && !cred.is_root()
            && cred.uid != attr.uid
        {
            return Err(FsError::Perm);
        }
        check_access(cred, attr, if write { W_OK } else { R_OK })
    } else if name.starts_with(b"trusted.") {
        if cred.is_root() {
            Ok(())
        } else if write {
            Err(FsError::Perm)
        } else {
            Err(FsError::NoData)
        }
    } else if name.starts_with(b"security.") {
        if write && !cred.is_root() {
            Err(FsError::Perm)
        } else {
            Ok(())
        }
    } else {
        Err(FsError::NotSupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::TimeSpec;

    fn file(uid: u32, gid: u32, perm: u32) -> FileAttr {
        FileAttr {
            ino: 5,
            kind: FileKind::Regular,
            perm,
            nlink: 1,
            uid,
            gid,
            size: 0,
            blocks: 0,
            atime: TimeSpec::default(),
            mtime: TimeSpec::default(),
            ctime: TimeSpec::default(),
            rdev: 0,
            generation: 1,
        }
    }

    fn user(uid: u32, gid: u32, groups: &[u32]) -> Credentials {
        Credentials {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn access_classes() {
        let f = file(10, 20, 0o640);
        assert!(check_access(&user(10, 1, &[]), &f, R_OK | W_OK).is_ok());
        assert!(check_access(&user(11, 20, &[]), &f, R_OK).is_ok());
        assert_eq!(check_access(&user(11, 20, &[]), &f, W_OK), Err(FsError::Access));
        assert!(check_access(&user(11, 1, &[20]), &f, R_OK).is_ok());
        assert_eq!(check_access(&user(12, 1, &[]), &f, R_OK), Err(FsError::Access));
        // Owner class wins even when it grants less than the group class.
        let f = file(10, 20, 0o070);
        assert_eq!(check_access(&user(10, 20, &[]), &f, R_OK), Err(FsError::Access));
        assert!(check_access(&Credentials::root(), &f, R_OK | W_OK).is_ok());
        assert_eq!(
            check_access(&Credentials::root(), &file(1, 1, 0o600), X_OK),
            Err(FsError::Access)
        );
    }

    #[test]
    fn stateless_io_rules() {
        let f = file(10, 20, 0o000);
        assert!(check_io(&user(10, 1, &[]), &f, true).is_ok(), "the owner may write");
        assert_eq!(check_io(&user(11, 1, &[]), &f, false), Err(FsError::Access));
        let f = file(10, 20, 0o711);
        assert!(
            check_io(&user(11, 1, &[]), &f, false).is_ok(),
            "execute permission allows reads"
        );
        assert_eq!(check_io(&user(11, 1, &[]), &f, true), Err(FsError::Access));
    }

    #[test]
    fn sticky() {
        let mut dir = file(1, 1, 0o1777);
        dir.kind = FileKind::Directory;
        let victim = file(10, 10, 0o644);
        assert!(check_sticky(&user(10, 10, &[]), &dir, &victim).is_ok());
        assert!(check_sticky(&user(1, 10, &[]), &dir, &victim).is_ok());
        assert_eq!(check_sticky(&user(11, 10, &[]), &dir, &victim), Err(FsError::Perm));
    }

    #[test]
    fn chown_rules() {
        let now = TimeSpec { sec: 100, nsec: 0 };
        let mut f = file(10, 20, 0o6755);
        let req = SetAttr {
            uid: Some(11),
            ..Default::default()
        };
        assert_eq!(apply_setattr(&user(10, 20, &[]), &mut f, &req, now), Err(FsError::Perm));
        let req = SetAttr {
            gid: Some(30),
            ..Default::default()
        };
        assert_eq!(apply_setattr(&user(10, 20, &[]), &mut f, &req, now), Err(FsError::Perm));
        assert!(apply_setattr(&user(10, 20, &[30]), &mut f, &req, now).is_ok());
        assert_eq!(f.gid, 30);
        assert_eq!(f.perm & (libc::S_ISUID | libc::S_ISGID), 0);
        assert_eq!(f.ctime, now);
    }

    #[test]
    fn chmod_drops_sgid_outside_group() {
        let now = TimeSpec { sec: 1, nsec: 0 };
        let mut f = file(10, 20, 0o644);
        let req = SetAttr {
            perm: Some(0o2755),
            ..Default::default()
        };
        apply_setattr(&user(10, 1, &[]), &mut f, &req, now).unwrap();
        assert_eq!(f.perm, 0o755);
        let mut f = file(10, 20, 0o644);
        apply_setattr(&user(10, 20, &[]), &mut f, &req, now).unwrap();
        assert_eq!(f.perm, 0o2755);
        assert_eq!(apply_setattr(&user(11, 20, &[]), &mut f, &req, now), Err(FsError::Perm));
    }

    #[test]
    fn utimes_rules() {
        let now = TimeSpec { sec: 1, nsec: 0 };
        let mut f = file(10, 20, 0o666);
        let set = SetAttr {
            mtime: Some(TimeUpdate::Set(TimeSpec { sec: 5, nsec: 0 })),
            ..Default::default()
        };
        assert_eq!(apply_setattr(&user(11, 1, &[]), &mut f, &set, now), Err(FsError::Perm));
        let touch = SetAttr {
            mtime: Some(TimeUpdate::Now),
            atime: Some(TimeUpdate::Now),
            ..Default::default()
        };
        assert!(apply_setattr(&user(11, 1, &[]), &mut f, &touch, now).is_ok());
        let mut f = file(10, 20, 0o644);
        assert_eq!(
            apply_setattr(&user(11, 1, &[]), &mut f, &touch, now),
            Err(FsError::Access)
        );
    }

    #[test]
    fn new_inode_sgid_dir() {
        let mut dir = file(0, 50, 0o2775);
        dir.kind = FileKind::Directory;
        let c = user(10, 20, &[]);
        assert_eq!(new_inode_owner(&c, &dir, FileKind::Directory, 0o755), (10, 50, 0o2755));
        assert_eq!(new_inode_owner(&c, &dir, FileKind::Regular, 0o2644), (10, 50, 0o644));
        dir.perm = 0o775;
        assert_eq!(new_inode_owner(&c, &dir, FileKind::Regular, 0o644), (10, 20, 0o644));
    }
}
