//! Bytes as a `POST /v1/accounts` body, parsed and checked as the handler does it.
//! See `metrokv_node::fuzzing::account_body` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = metrokv_node::fuzzing::account_body(data);
});
