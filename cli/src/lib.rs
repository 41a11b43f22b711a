//! The `sealfs` command: `sealfs up` starts a local cluster of real processes, `sealfs status`
//! shows what a manager knows, `sealfs health` answers probes, `sealfs load` exercises a mount,
//! `sealfs gen-secret` / `gen-certs` make cluster credentials. The cluster launcher is a library
//! so the cluster tests use the very code the README's first command runs.

pub mod cluster;
pub mod health;
pub mod keys;
pub mod load;
pub mod status;
