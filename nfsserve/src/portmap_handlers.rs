//! A portmapper (RFC 1833, version 2) that knows one server's programs: GETPORT answers the port
//! of NFS and MOUNT over TCP, and "not registered" (0) for anything else, UDP included, which
//! makes mount.nfs use TCP. rpcbind versions 3 and 4 get PROG_MISMATCH, so clients fall back to 2.

use std::io::Cursor;

use crate::portmap::*;
use crate::rpc::*;
use crate::xdr::*;

/// The mappings a portmapper serves.
#[derive(Debug, Clone, Default)]
pub struct PortMap {
    pub mappings: Vec<mapping>,
}

impl PortMap {
    /// NFS v3 and MOUNT v3 (and v1, which some clients ask for first) over TCP on `port`.
    pub fn nfs_on(port: u16) -> PortMap {
        let m = |prog, vers| mapping {
            prog,
            vers,
            prot: IPPROTO_TCP,
            port: u32::from(port),
        };
        PortMap {
            mappings: vec![
                m(PROGRAM, VERSION),
                m(crate::nfs::PROGRAM, crate::nfs::VERSION),
                m(crate::mount::PROGRAM, crate::mount::VERSION),
                m(crate::mount::PROGRAM, 1),
            ],
        }
    }

    fn port_of(&self, q: &mapping) -> u32 {
        self.mappings
            .iter()
            .find(|m| m.prog == q.prog && m.vers == q.vers && m.prot == q.prot)
            .map(|m| m.port)
            .unwrap_or(0)
    }
}

/// Answer one portmapper call whose header is already read.
pub fn handle(
    map: &PortMap,
    xid: u32,
    vers: u32,
    proc_num: u32,
    input: &mut Cursor<&[u8]>,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    if vers != VERSION {
        return prog_mismatch_reply_message(xid, VERSION).serialize(out);
    }
    match proc_num {
        0 => make_success_reply(xid).serialize(out)?,
        // SET, UNSET: this portmapper's table is fixed.
        1 | 2 => {
            let mut q = mapping::default();
            if q.deserialize(input).is_err() {
                return garbage_args_reply_message(xid).serialize(out);
            }
            make_success_reply(xid).serialize(out)?;
            false.serialize(out)?;
        }
        3 => {
            let mut q = mapping::default();
            if q.deserialize(input).is_err() {
                return garbage_args_reply_message(xid).serialize(out);
            }
            make_success_reply(xid).serialize(out)?;
            map.port_of(&q).serialize(out)?;
        }
        4 => {
            make_success_reply(xid).serialize(out)?;
            for m in &map.mappings {
                true.serialize(out)?;
                m.serialize(out)?;
            }
            false.serialize(out)?;
        }
        _ => proc_unavail_reply_message(xid).serialize(out)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getport_answers_tcp_only() {
        let map = PortMap::nfs_on(2049);
        let q = |prot| mapping {
            prog: crate::nfs::PROGRAM,
            vers: 3,
            prot,
            port: 0,
        };
        assert_eq!(map.port_of(&q(IPPROTO_TCP)), 2049);
        assert_eq!(map.port_of(&q(IPPROTO_UDP)), 0);
    }
}
