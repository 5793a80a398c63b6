//! Bytes as a `POST /v1/txn` body, parsed and limit-checked as the handler does it.
//! See `metrokv_node::fuzzing::txn_body` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = metrokv_node::fuzzing::txn_body(data);
});
