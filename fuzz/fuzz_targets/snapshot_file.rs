//! Bytes as a snapshot file, read and verified from memory.
//! See `metrokv_node::fuzzing::snapshot_file` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = metrokv_node::fuzzing::snapshot_file(data);
});
