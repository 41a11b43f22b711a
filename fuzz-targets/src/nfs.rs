//! A backend for the NFS fuzz target: handles are parsed as the gateway parses them; each call
//! answers with a small fixed result, so replies of every shape get encoded.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use nfsserve::mount::mountstat3;
use nfsserve::nfs::*;
use nfsserve::server::RpcServer;
use nfsserve::vfs::*;

const CLUSTER: u64 = 0x5ea1;

struct Backend;

fn attr(ino: u64) -> fattr3 {
    fattr3 {
        ftype: if ino == 1 { ftype3::NF3DIR } else { ftype3::NF3REG },
        mode: 0o755,
        nlink: 1,
        size: 4096,
        fileid: ino,
        ..Default::default()
    }
}

fn ino(fh: &nfs_fh3) -> NfsResult<u64> {
    sealfs_gateway::handle::parse(CLUSTER, fh)
}

/// A directory change with both halves, so replies encode pre-op attributes too.
fn changed(dir: u64) -> DirWcc {
    let a = attr(dir);
    DirWcc {
        before: Some(wcc_attr {
            size: a.size,
            mtime: a.mtime,
            ctime: a.ctime,
        }),
        after: Some(a),
    }
}

fn created(n: u64) -> Created {
    Created {
        handle: sealfs_gateway::handle::make(CLUSTER, n, 1),
        attr: Some(attr(n)),
        dir: changed(1),
    }
}

#[async_trait]
impl NfsBackend for Backend {
    fn client_allowed(&self, addr: &SocketAddr) -> bool {
        !addr.ip().is_unspecified()
    }
    fn exports(&self) -> Vec<Vec<u8>> {
        vec![b"/".to_vec()]
    }
    async fn mount(&self, _c: &Caller, path: &[u8]) -> Result<nfs_fh3, mountstat3> {
        if path == b"/" {
            Ok(sealfs_gateway::handle::make(CLUSTER, 1, 1))
        } else {
            Err(mountstat3::MNT3ERR_NOENT)
        }
    }
    async fn getattr(&self, _c: &Caller, fh: &nfs_fh3) -> NfsResult<fattr3> {
        Ok(attr(ino(fh)?))
    }
    async fn setattr(&self, _c: &Caller, fh: &nfs_fh3, _a: sattr3, _g: Option<nfstime3>) -> NfsResult<fattr3> {
        Ok(attr(ino(fh)?))
    }
    async fn lookup(&self, _c: &Caller, dir: &nfs_fh3, name: &[u8]) -> NfsResult<(nfs_fh3, fattr3)> {
        ino(dir)?;
        if name.len() > 255 {
            return Err(nfsstat3::NFS3ERR_NAMETOOLONG);
        }
        Ok((sealfs_gateway::handle::make(CLUSTER, 2, 1), attr(2)))
    }
    async fn access(&self, _c: &Caller, fh: &nfs_fh3, mask: u32) -> NfsResult<(u32, fattr3)> {
        Ok((mask, attr(ino(fh)?)))
    }
    async fn readlink(&self, _c: &Caller, fh: &nfs_fh3) -> NfsResult<Vec<u8>> {
        ino(fh)?;
        Ok(b"target".to_vec())
    }
    async fn read(
        &self,
        _c: &Caller,
        fh: &nfs_fh3,
        offset: u64,
        count: u32,
    ) -> NfsResult<(bytes::Bytes, bool, Option<fattr3>)> {
        let n = ino(fh)?;
        let len = (count as u64).min(4096u64.saturating_sub(offset)) as usize;
        Ok((
            bytes::Bytes::from(vec![7u8; len]),
            offset + len as u64 >= 4096,
            Some(attr(n)),
        ))
    }
    async fn write(
        &self,
        _c: &Caller,
        fh: &nfs_fh3,
        _offset: u64,
        data: bytes::Bytes,
        stable: stable_how,
    ) -> NfsResult<Written> {
        let n = ino(fh)?;
        Ok(Written {
            count: data.len() as u32,
            committed: stable,
            verifier: [1; 8],
            attr: Some(attr(n)),
        })
    }
    async fn create(&self, _c: &Caller, dir: &nfs_fh3, _name: &[u8], _how: CreateHow) -> NfsResult<Created> {
        ino(dir)?;
        Ok(created(3))
    }
    async fn mkdir(&self, _c: &Caller, dir: &nfs_fh3, _name: &[u8], _a: sattr3) -> NfsResult<Created> {
        ino(dir)?;
        Ok(created(4))
    }
    async fn symlink(&self, _c: &Caller, dir: &nfs_fh3, _n: &[u8], _t: &[u8], _a: sattr3) -> NfsResult<Created> {
        ino(dir)?;
        Ok(created(5))
    }
    async fn mknod(&self, _c: &Caller, dir: &nfs_fh3, _n: &[u8], _w: SpecialFile, _a: sattr3) -> NfsResult<Created> {
        ino(dir)?;
        Ok(created(6))
    }
    async fn remove(&self, _c: &Caller, dir: &nfs_fh3, _n: &[u8]) -> NfsResult<DirWcc> {
        Ok(changed(ino(dir)?))
    }
    async fn rmdir(&self, _c: &Caller, dir: &nfs_fh3, _n: &[u8]) -> NfsResult<DirWcc> {
        ino(dir)?;
        Err(nfsstat3::NFS3ERR_NOTEMPTY)
    }
    async fn rename(
        &self,
        _c: &Caller,
        from: &nfs_fh3,
        _fname: &[u8],
        to: &nfs_fh3,
        _tname: &[u8],
    ) -> NfsResult<(DirWcc, DirWcc)> {
        Ok((
            changed(ino(from)?),
            DirWcc {
                before: None,
                after: Some(attr(ino(to)?)),
            },
        ))
    }
    async fn link(&self, _c: &Caller, fh: &nfs_fh3, dir: &nfs_fh3, _n: &[u8]) -> NfsResult<(Option<fattr3>, DirWcc)> {
        Ok((Some(attr(ino(fh)?)), changed(ino(dir)?)))
    }
    async fn readdir(
        &self,
        _c: &Caller,
        dir: &nfs_fh3,
        cookie: cookie3,
        max_entries: u32,
        plus: bool,
    ) -> NfsResult<DirPage> {
        ino(dir)?;
        // Cookies come from the client, up to u64::MAX: the made-up inode numbers wrap.
        let entries = (cookie..cookie.saturating_add(u64::from(max_entries.min(3))))
            .map(|c| DirEntry {
                fileid: c.wrapping_add(10),
                name: format!("e{c}").into_bytes(),
                cookie: c + 1,
                attr: plus.then(|| attr(c.wrapping_add(10))),
                handle: plus.then(|| sealfs_gateway::handle::make(CLUSTER, c.wrapping_add(10), 1)),
            })
            .collect();
        Ok(DirPage {
            entries,
            eof: cookie > 5,
            dir_attr: Some(attr(1)),
        })
    }
    async fn fsstat(&self, _c: &Caller, fh: &nfs_fh3) -> NfsResult<(FsStat, Option<fattr3>)> {
        Ok((FsStat::default(), Some(attr(ino(fh)?))))
    }
    fn limits(&self) -> (u32, u32, u64) {
        (1 << 20, 1 << 20, 16 << 40)
    }
    async fn commit(
        &self,
        _c: &Caller,
        fh: &nfs_fh3,
        _offset: u64,
        _count: u32,
    ) -> NfsResult<(writeverf3, Option<fattr3>)> {
        Ok(([1; 8], Some(attr(ino(fh)?))))
    }
}

/// The RPC server over the fuzzing backend, with the portmapper the gateway also answers.
pub fn server() -> &'static RpcServer {
    static S: OnceLock<RpcServer> = OnceLock::new();
    S.get_or_init(|| RpcServer {
        nfs: Some(Arc::new(Backend)),
        portmap: Some(nfsserve::portmap_handlers::PortMap::nfs_on(2049)),
    })
}
