//! Fuzz target: see sealfs_fuzz_targets::key_codec.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealfs_fuzz_targets::key_codec(data));
