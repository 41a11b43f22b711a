//! MOUNT v3 (RFC 1813 appendix I): MNT hands out the root handle of an export, EXPORT lists the
//! exports; the server keeps no mount list (DUMP is empty, UMNT a no-op), as befits a stateless
//! gateway.

use std::io::Cursor;

use tracing::debug;

use crate::mount::*;
use crate::rpc::*;
use crate::vfs::{Caller, NfsBackend};
use crate::xdr::*;

/// Answer one MOUNT call whose header is already read.
pub async fn handle(
    backend: &dyn NfsBackend,
    caller: &Caller,
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
        1 => {
            let mut path: Vec<u8> = Vec::new();
            if path.deserialize(input).is_err() || path.len() > MNTPATHLEN as usize {
                return garbage_args_reply_message(xid).serialize(out);
            }
            make_success_reply(xid).serialize(out)?;
            if !backend.client_allowed(&caller.addr) {
                debug!(client = %caller.addr, "MNT refused: client not allowed");
                return mountstat3::MNT3ERR_ACCES.serialize(out);
            }
            match backend.mount(caller, &path).await {
                Ok(fh) => {
                    mountstat3::MNT3_OK.serialize(out)?;
                    fh.data.serialize(out)?;
                    // auth flavors: AUTH_UNIX, AUTH_NULL
                    vec![1u32, 0u32].serialize(out)?;
                }
                Err(e) => e.serialize(out)?,
            }
        }
        // DUMP: no mount list is kept.
        2 => {
            make_success_reply(xid).serialize(out)?;
            false.serialize(out)?;
        }
        // UMNT, UMNTALL
        3 | 4 => make_success_reply(xid).serialize(out)?,
        5 => {
            make_success_reply(xid).serialize(out)?;
            for e in backend.exports() {
                true.serialize(out)?;
                e.serialize(out)?;
                // no group list: everyone allowed by the address rules
                false.serialize(out)?;
            }
            false.serialize(out)?;
        }
        _ => proc_unavail_reply_message(xid).serialize(out)?,
    }
    Ok(())
}
