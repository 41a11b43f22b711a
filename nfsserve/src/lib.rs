//! sealfs's fork of nfsserve 0.11 (BSD-3-Clause, see LICENSE and FORK.md): an NFSv3, MOUNT v3
//! and portmapper server. The XDR types are upstream's; the server, the handlers and the
//! backend interface are rewritten so that calls carry the caller's AUTH_SYS credentials, every
//! NFSv3 procedure is answered (LINK, MKNOD and COMMIT included), file handles belong to the
//! backend (not to the server process), and oversized or garbage input is refused safely.

#![allow(clippy::upper_case_acronyms)]

pub mod xdr;

pub mod mount;
pub mod nfs;
pub mod portmap;
pub mod rpc;

mod mount_handlers;
pub mod nfs_handlers;
pub mod portmap_handlers;

pub mod server;
pub mod vfs;
