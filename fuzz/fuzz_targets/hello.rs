//! Bytes as a handshake frame: a `Hello` (checked as the listener checks it) and a `HelloReply`.
//! See `metrokv_node::fuzzing::hello` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = metrokv_node::fuzzing::hello(data);
});
