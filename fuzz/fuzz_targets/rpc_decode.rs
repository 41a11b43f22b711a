//! Fuzz target: see sealfs_fuzz_targets::rpc_decode.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealfs_fuzz_targets::rpc_decode(data));
