//! Bytes as a sequence of requests applied to an in-memory state, with the ledger invariants checked after each step.
//! See `metrokv_node::fuzzing::state_machine` for what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = metrokv_node::fuzzing::state_machine(data);
});
