//! Fuzz target: see sealfs_fuzz_targets::nfs_record.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealfs_fuzz_targets::nfs_record(data));
