//! Bytes as a stream of peer frames: read with the frame cap, decoded as requests and answers, Raft requests run through `transport::validate`.
//! See `metrokv_node::fuzzing::peer_frame` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = metrokv_node::fuzzing::peer_frame(data);
});
