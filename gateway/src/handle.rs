//! NFS file handles: `version (1) | cluster id (8) | inode id (8) | generation (8)`, all
//! big-endian. Nothing in a handle belongs to one gateway process, so any gateway of the cluster
//! resolves any handle, before or after a restart.

use nfsserve::nfs::{nfs_fh3, nfsstat3};
use sealfs_core::InodeId;

const VERSION: u8 = 1;
const LEN: usize = 25;

/// Mint the handle of `ino`.
pub fn make(cluster_id: u64, ino: InodeId, generation: u64) -> nfs_fh3 {
    let mut data = Vec::with_capacity(LEN);
    data.push(VERSION);
    data.extend_from_slice(&cluster_id.to_be_bytes());
    data.extend_from_slice(&ino.to_be_bytes());
    data.extend_from_slice(&generation.to_be_bytes());
    nfs_fh3 { data }
}

/// The inode a handle names. A handle of another format is BADHANDLE; one of another cluster is
/// STALE (the client must look the path up again).
pub fn parse(cluster_id: u64, fh: &nfs_fh3) -> Result<InodeId, nfsstat3> {
    let d = &fh.data;
    if d.len() != LEN || d[0] != VERSION {
        return Err(nfsstat3::NFS3ERR_BADHANDLE);
    }
    let cluster = u64::from_be_bytes(d[1..9].try_into().expect("8 bytes"));
    if cluster != cluster_id {
        return Err(nfsstat3::NFS3ERR_STALE);
    }
    let ino = u64::from_be_bytes(d[9..17].try_into().expect("8 bytes"));
    if ino == 0 {
        return Err(nfsstat3::NFS3ERR_BADHANDLE);
    }
    Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejections() {
        let fh = make(7, 42, 1);
        assert_eq!(parse(7, &fh), Ok(42));
        assert_eq!(parse(8, &fh), Err(nfsstat3::NFS3ERR_STALE));
        let mut bad = fh.clone();
        bad.data[0] = 9;
        assert_eq!(parse(7, &bad), Err(nfsstat3::NFS3ERR_BADHANDLE));
        assert_eq!(
            parse(7, &nfs_fh3 { data: vec![1, 2, 3] }),
            Err(nfsstat3::NFS3ERR_BADHANDLE)
        );
        assert_eq!(parse(7, &make(7, 0, 1)), Err(nfsstat3::NFS3ERR_BADHANDLE));
    }
}
