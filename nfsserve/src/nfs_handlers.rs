//! NFSv3 procedures (RFC 1813): decode the arguments, call the backend, encode the result. Every
//! one of the 22 procedures is answered; arguments that do not decode get GARBAGE_ARGS.

use std::io::{Cursor, Read, Write};

use byteorder::ReadBytesExt;
use num_traits::cast::FromPrimitive;
use tracing::debug;

use crate::nfs::*;
use crate::rpc::*;
use crate::vfs::*;
use crate::xdr::*;

/// Access bits of ACCESS3.
pub const ACCESS3_READ: u32 = 0x0001;
pub const ACCESS3_LOOKUP: u32 = 0x0002;
pub const ACCESS3_MODIFY: u32 = 0x0004;
pub const ACCESS3_EXTEND: u32 = 0x0008;
pub const ACCESS3_DELETE: u32 = 0x0010;
pub const ACCESS3_EXECUTE: u32 = 0x0020;

#[derive(Debug, Default)]
struct FhArgs {
    object: nfs_fh3,
}
xdr_struct!(FhArgs, object);

#[derive(Debug, Default)]
struct SetattrArgs {
    object: nfs_fh3,
    new_attributes: sattr3,
    guard: sattrguard3,
}
xdr_struct!(SetattrArgs, object, new_attributes, guard);

#[allow(non_camel_case_types)]
#[derive(Debug, Default, Clone, Copy)]
enum sattrguard3 {
    #[default]
    Void,
    obj_ctime(nfstime3),
}
xdr_bool_union!(sattrguard3, obj_ctime, nfstime3);

#[derive(Debug, Default)]
struct DiropArgs {
    what: diropargs3,
}
xdr_struct!(DiropArgs, what);

#[derive(Debug, Default)]
struct AccessArgs {
    object: nfs_fh3,
    access: u32,
}
xdr_struct!(AccessArgs, object, access);

#[derive(Debug, Default)]
struct ReadArgs {
    file: nfs_fh3,
    offset: u64,
    count: u32,
}
xdr_struct!(ReadArgs, file, offset, count);

#[derive(Debug, Default)]
struct WriteArgs {
    file: nfs_fh3,
    offset: u64,
    count: u32,
    stable: u32,
    data: Vec<u8>,
}
xdr_struct!(WriteArgs, file, offset, count, stable, data);

#[derive(Debug, Default)]
struct MkdirArgs {
    dir: diropargs3,
    attributes: sattr3,
}
xdr_struct!(MkdirArgs, dir, attributes);

#[derive(Debug, Default)]
struct SymlinkArgs {
    dir: diropargs3,
    symlink: symlinkdata3,
}
xdr_struct!(SymlinkArgs, dir, symlink);

#[derive(Debug, Default)]
struct RenameArgs {
    from: diropargs3,
    to: diropargs3,
}
xdr_struct!(RenameArgs, from, to);

#[derive(Debug, Default)]
struct LinkArgs {
    file: nfs_fh3,
    link: diropargs3,
}
xdr_struct!(LinkArgs, file, link);

#[derive(Debug, Default)]
struct ReaddirArgs {
    dir: nfs_fh3,
    cookie: u64,
    cookieverf: cookieverf3,
    count: u32,
}
xdr_struct!(ReaddirArgs, dir, cookie, cookieverf, count);

#[derive(Debug, Default)]
struct ReaddirplusArgs {
    dir: nfs_fh3,
    cookie: u64,
    cookieverf: cookieverf3,
    dircount: u32,
    maxcount: u32,
}
xdr_struct!(ReaddirplusArgs, dir, cookie, cookieverf, dircount, maxcount);

#[derive(Debug, Default)]
struct CommitArgs {
    file: nfs_fh3,
    offset: u64,
    count: u32,
}
xdr_struct!(CommitArgs, file, offset, count);

fn post(a: Option<fattr3>) -> post_op_attr {
    a.into()
}

/// wcc data with the attributes after only (the client revalidates).
fn wcc(after: Option<fattr3>) -> wcc_data {
    DirWcc { before: None, after }.into()
}

/// An NFS reply under construction: the RPC success header, then the status.
struct Reply<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Reply<'a> {
    fn new(xid: u32, out: &'a mut Vec<u8>) -> std::io::Result<Reply<'a>> {
        make_success_reply(xid).serialize(out)?;
        Ok(Reply { out })
    }

    fn put<T: XDR>(&mut self, v: &T) -> std::io::Result<&mut Self> {
        v.serialize(self.out)?;
        Ok(self)
    }

    fn status(&mut self, s: nfsstat3) -> std::io::Result<&mut Self> {
        if !matches!(s, nfsstat3::NFS3_OK) {
            debug!(status = ?s, "NFS error reply");
        }
        self.put(&s)
    }
}

fn decode<T: XDR + Default>(input: &mut Cursor<&[u8]>) -> Option<T> {
    let mut v = T::default();
    v.deserialize(input).ok()?;
    Some(v)
}

/// Refused for a read-only export.
pub fn is_mutating(proc_num: u32) -> bool {
    matches!(proc_num, 2 | 7..=15 | 21)
}

/// Answer one NFS call whose header is already read; `input` holds the arguments.
pub async fn handle(
    backend: &dyn NfsBackend,
    caller: &Caller,
    xid: u32,
    proc_num: u32,
    input: &mut Cursor<&[u8]>,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    // Where this reply starts: `out` may hold the record mark before it.
    let start = out.len();
    macro_rules! args {
        ($t:ty) => {
            match decode::<$t>(input) {
                Some(a) => a,
                None => {
                    debug!(xid, proc_num, "garbage arguments");
                    out.truncate(start);
                    return garbage_args_reply_message(xid).serialize(out);
                }
            }
        };
    }
    match proc_num {
        0 => {
            make_success_reply(xid).serialize(out)?;
        }
        1 => {
            let a = args!(FhArgs);
            let mut r = Reply::new(xid, out)?;
            match backend.getattr(caller, &a.object).await {
                Ok(attr) => r.status(nfsstat3::NFS3_OK)?.put(&attr)?,
                Err(e) => r.status(e)?,
            };
        }
        2 => {
            let a = args!(SetattrArgs);
            let guard = match a.guard {
                sattrguard3::Void => None,
                sattrguard3::obj_ctime(t) => Some(t),
            };
            let res = backend.setattr(caller, &a.object, a.new_attributes, guard).await;
            let mut r = Reply::new(xid, out)?;
            match res {
                Ok(attr) => r.status(nfsstat3::NFS3_OK)?.put(&wcc(Some(attr)))?,
                Err(e) => r.status(e)?.put(&wcc(None))?,
            };
        }
        3 => {
            let a = args!(DiropArgs);
            let res = backend.lookup(caller, &a.what.dir, &a.what.name).await;
            let mut r = Reply::new(xid, out)?;
            match res {
                Ok((fh, attr)) => r
                    .status(nfsstat3::NFS3_OK)?
                    .put(&fh)?
                    .put(&post(Some(attr)))?
                    .put(&post(None))?,
                Err(e) => r.status(e)?.put(&post(None))?,
            };
        }
        4 => {
            let a = args!(AccessArgs);
            let res = backend.access(caller, &a.object, a.access).await;
            let mut r = Reply::new(xid, out)?;
            match res {
                Ok((granted, attr)) => r.status(nfsstat3::NFS3_OK)?.put(&post(Some(attr)))?.put(&granted)?,
                Err(e) => r.status(e)?.put(&post(None))?,
            };
        }
        5 => {
            let a = args!(FhArgs);
            let res = backend.readlink(caller, &a.object).await;
            let mut r = Reply::new(xid, out)?;
            match res {
                Ok(target) => r.status(nfsstat3::NFS3_OK)?.put(&post(None))?.put(&target)?,
                Err(e) => r.status(e)?.put(&post(None))?,
            };
        }
        6 => {
            let a = args!(ReadArgs);
            let res = backend.read(caller, &a.file, a.offset, a.count).await;
            let mut r = Reply::new(xid, out)?;
            match res {
                Ok((data, eof, attr)) => {
                    r.status(nfsstat3::NFS3_OK)?
                        .put(&post(attr))?
                        .put(&(data.len() as u32))?
                        .put(&eof)?;
                    // The opaque data, written straight from the buffer we got.
                    (data.len() as u32).serialize(r.out)?;
                    r.out.write_all(&data)?;
                    let pad = (4 - data.len() % 4) % 4;
                    r.out.write_all(&[0u8; 4][..pad])?;
                }
                Err(e) => {
                    r.status(e)?.put(&post(None))?;
                }
            }
        }
        7 => {
            let a = args!(WriteArgs);
            if a.data.len() != a.count as usize {
                Reply::new(xid, out)?.status(nfsstat3::NFS3ERR_INVAL)?.put(&wcc(None))?;
                return Ok(());
            }
            let stable = stable_how::from_u32(a.stable).unwrap_or(stable_how::FILE_SYNC);
            let res = backend
                .write(caller, &a.file, a.offset, bytes::Bytes::from(a.data), stable)
                .await;
            let mut r = Reply::new(xid, out)?;
            match res {
                Ok(w) => r
                    .status(nfsstat3::NFS3_OK)?
                    .put(&wcc(w.attr))?
                    .put(&w.count)?
                    .put(&(w.committed as u32))?
                    .put(&w.verifier)?,
                Err(e) => r.status(e)?.put(&wcc(None))?,
            };
        }
        8 => {
            let mut a = args!(DiropArgs);
            let name = std::mem::take(&mut a.what.name);
            let how = match decode_createhow(input) {
                Some(h) => h,
                None => {
                    out.truncate(start);
                    return garbage_args_reply_message(xid).serialize(out);
                }
            };
            let res = backend.create(caller, &a.what.dir, &name, how).await;
            created_reply(xid, out, res)?;
        }
        9 => {
            let a = args!(MkdirArgs);
            let res = backend.mkdir(caller, &a.dir.dir, &a.dir.name, a.attributes).await;
            created_reply(xid, out, res)?;
        }
        10 => {
            let a = args!(SymlinkArgs);
            let res = backend
                .symlink(
                    caller,
                    &a.dir.dir,
                    &a.dir.name,
                    &a.symlink.symlink_data,
                    a.symlink.symlink_attributes,
                )
                .await;
            created_reply(xid, out, res)?;
        }
        11 => {
            let a = args!(DiropArgs);
            let what = match decode_mknod(input) {
                Some(w) => w,
                None => {
                    out.truncate(start);
                    return garbage_args_reply_message(xid).serialize(out);
                }
            };
            let res = match what {
                Some((kind, attr)) => backend.mknod(caller, &a.what.dir, &a.what.name, kind, attr).await,
                None => Err(nfsstat3::NFS3ERR_BADTYPE),
            };
            created_reply(xid, out, res)?;
        }
        12 | 13 => {
            let a = args!(DiropArgs);
            let res = if proc_num == 12 {
                backend.remove(caller, &a.what.dir, &a.what.name).await
            } else {
                backend.rmdir(caller, &a.what.dir, &a.what.name).await
            };
            let mut r = Reply::new(xid, out)?;
            match res {
                Ok(dir) => r.status(nfsstat3::NFS3_OK)?.put(&wcc_data::from(dir))?,
                Err(e) => r.status(e)?.put(&wcc(None))?,
            };
        }
        14 => {
            let a = args!(RenameArgs);
            let res = backend
                .rename(caller, &a.from.dir, &a.from.name, &a.to.dir, &a.to.name)
                .await;
            let mut r = Reply::new(xid, out)?;
            match res {
                Ok((from, to)) => r
                    .status(nfsstat3::NFS3_OK)?
                    .put(&wcc_data::from(from))?
                    .put(&wcc_data::from(to))?,
                Err(e) => r.status(e)?.put(&wcc(None))?.put(&wcc(None))?,
            };
        }
        15 => {
            let a = args!(LinkArgs);
            let res = backend.link(caller, &a.file, &a.link.dir, &a.link.name).await;
            let mut r = Reply::new(xid, out)?;
            match res {
                Ok((file, dir)) => r
                    .status(nfsstat3::NFS3_OK)?
                    .put(&post(file))?
                    .put(&wcc_data::from(dir))?,
                Err(e) => r.status(e)?.put(&post(None))?.put(&wcc(None))?,
            };
        }
        16 => {
            let a = args!(ReaddirArgs);
            readdir_reply(backend, caller, xid, out, &a.dir, a.cookie, a.count, a.count, false).await?;
        }
        17 => {
            let a = args!(ReaddirplusArgs);
            readdir_reply(
                backend, caller, xid, out, &a.dir, a.cookie, a.dircount, a.maxcount, true,
            )
            .await?;
        }
        18 => {
            let a = args!(FhArgs);
            let res = backend.fsstat(caller, &a.object).await;
            let mut r = Reply::new(xid, out)?;
            match res {
                Ok((s, attr)) => r
                    .status(nfsstat3::NFS3_OK)?
                    .put(&post(attr))?
                    .put(&s.total_bytes)?
                    .put(&s.free_bytes)?
                    .put(&s.avail_bytes)?
                    .put(&s.total_files)?
                    .put(&s.free_files)?
                    .put(&s.avail_files)?
                    .put(&0u32)?,
                Err(e) => r.status(e)?.put(&post(None))?,
            };
        }
        19 => {
            let a = args!(FhArgs);
            let attr = backend.getattr(caller, &a.object).await;
            let (rmax, wmax, maxfile) = backend.limits();
            let mut r = Reply::new(xid, out)?;
            match attr {
                Ok(attr) => {
                    let info = fsinfo3 {
                        obj_attributes: post_op_attr::attributes(attr),
                        rtmax: rmax,
                        rtpref: rmax,
                        rtmult: 4096,
                        wtmax: wmax,
                        wtpref: wmax,
                        wtmult: 4096,
                        dtpref: 64 << 10,
                        maxfilesize: maxfile,
                        time_delta: nfstime3 {
                            seconds: 0,
                            nseconds: 1,
                        },
                        properties: FSF_LINK | FSF_SYMLINK | FSF_HOMOGENEOUS | FSF_CANSETTIME,
                    };
                    r.status(nfsstat3::NFS3_OK)?.put(&info)?;
                }
                Err(e) => {
                    r.status(e)?.put(&post(None))?;
                }
            }
        }
        20 => {
            let a = args!(FhArgs);
            let attr = backend.getattr(caller, &a.object).await;
            let mut r = Reply::new(xid, out)?;
            match attr {
                // linkmax, name_max, no_trunc, chown_restricted, case_insensitive, case_preserving
                Ok(attr) => r
                    .status(nfsstat3::NFS3_OK)?
                    .put(&post(Some(attr)))?
                    .put(&65000u32)?
                    .put(&255u32)?
                    .put(&true)?
                    .put(&true)?
                    .put(&false)?
                    .put(&true)?,
                Err(e) => r.status(e)?.put(&post(None))?,
            };
        }
        21 => {
            let a = args!(CommitArgs);
            let res = backend.commit(caller, &a.file, a.offset, a.count).await;
            let mut r = Reply::new(xid, out)?;
            match res {
                Ok((verf, attr)) => r.status(nfsstat3::NFS3_OK)?.put(&wcc(attr))?.put(&verf)?,
                Err(e) => r.status(e)?.put(&wcc(None))?,
            };
        }
        _ => {
            proc_unavail_reply_message(xid).serialize(out)?;
        }
    }
    Ok(())
}

fn decode_createhow(input: &mut Cursor<&[u8]>) -> Option<CreateHow> {
    let mode = input.read_u32::<XDREndian>().ok()?;
    Some(match mode {
        0 => CreateHow::Unchecked(decode::<sattr3>(input)?),
        1 => CreateHow::Guarded(decode::<sattr3>(input)?),
        2 => CreateHow::Exclusive(decode::<createverf3>(input)?),
        _ => return None,
    })
}

/// MKNOD's mknoddata3: Some((kind, attributes)), or None for a type MKNOD cannot make.
fn decode_mknod(input: &mut Cursor<&[u8]>) -> Option<Option<(SpecialFile, sattr3)>> {
    let t = input.read_u32::<XDREndian>().ok()?;
    Some(match ftype3::from_u32(t)? {
        ftype3::NF3CHR | ftype3::NF3BLK => {
            let attr = decode::<sattr3>(input)?;
            let spec = decode::<specdata3>(input)?;
            let k = if t == ftype3::NF3CHR as u32 {
                SpecialFile::Char(spec)
            } else {
                SpecialFile::Block(spec)
            };
            Some((k, attr))
        }
        ftype3::NF3SOCK => Some((SpecialFile::Socket, decode::<sattr3>(input)?)),
        ftype3::NF3FIFO => Some((SpecialFile::Fifo, decode::<sattr3>(input)?)),
        _ => None,
    })
}

fn created_reply(xid: u32, out: &mut Vec<u8>, res: NfsResult<Created>) -> std::io::Result<()> {
    let mut r = Reply::new(xid, out)?;
    match res {
        Ok(c) => {
            r.status(nfsstat3::NFS3_OK)?
                .put(&post_op_fh3::handle(c.handle))?
                .put(&post(c.attr))?
                .put(&wcc_data::from(c.dir))?;
        }
        Err(e) => {
            r.status(e)?.put(&wcc(None))?;
        }
    }
    Ok(())
}

/// XDR size of a string or opaque with its length word and padding.
fn opaque_len(n: usize) -> usize {
    4 + n.div_ceil(4) * 4
}

#[allow(clippy::too_many_arguments)]
async fn readdir_reply(
    backend: &dyn NfsBackend,
    caller: &Caller,
    xid: u32,
    out: &mut Vec<u8>,
    dir: &nfs_fh3,
    cookie: u64,
    dircount: u32,
    maxcount: u32,
    plus: bool,
) -> std::io::Result<()> {
    // Ask for about as many entries as can fit; the backend may return fewer.
    let per_entry = if plus { 200 } else { 40 };
    let want = (maxcount as usize / per_entry).clamp(1, 1024) as u32;
    let res = backend.readdir(caller, dir, cookie, want, plus).await;
    let mut r = Reply::new(xid, out)?;
    let page = match res {
        Ok(p) => p,
        Err(e) => {
            r.status(e)?.put(&post(None))?;
            return Ok(());
        }
    };
    let header_len = r.out.len();
    r.status(nfsstat3::NFS3_OK)?.put(&post(page.dir_attr))?.put(&[0u8; 8])?;
    // Fixed part: status, attributes, verifier, then per entry, and the final eof and list end.
    let mut used = r.out.len() - header_len + 8;
    let mut dir_used = 0usize;
    let mut all = true;
    let mut entries = Vec::new();
    for e in &page.entries {
        let mut buf = Vec::with_capacity(64);
        true.serialize(&mut buf)?;
        e.fileid.serialize(&mut buf)?;
        e.name.serialize(&mut buf)?;
        e.cookie.serialize(&mut buf)?;
        let dir_part = 8 + opaque_len(e.name.len()) + 8;
        if plus {
            post(e.attr).serialize(&mut buf)?;
            match &e.handle {
                Some(h) => post_op_fh3::handle(h.clone()).serialize(&mut buf)?,
                None => post_op_fh3::Void.serialize(&mut buf)?,
            }
        }
        if used + buf.len() > maxcount as usize || (plus && dir_used + dir_part > dircount as usize) {
            all = false;
            break;
        }
        used += buf.len();
        dir_used += dir_part;
        entries.push(buf);
    }
    if entries.is_empty() && !page.entries.is_empty() {
        // Not even one entry fits in what the client allows.
        r.out.truncate(header_len);
        r.status(nfsstat3::NFS3ERR_TOOSMALL)?.put(&post(None))?;
        return Ok(());
    }
    for e in entries {
        r.out.write_all(&e)?;
    }
    false.serialize(r.out)?;
    (page.eof && all).serialize(r.out)?;
    Ok(())
}
