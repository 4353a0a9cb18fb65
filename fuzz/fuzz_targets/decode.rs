//! Any bytes as a webhook request body, with and without gzip, through the
//! handler's own unpack-and-decode: no panic, live memory within
//! `memory_bound`, output faithful to a serde_json reference.
#![no_main]

use std::alloc::System;

use cap::Cap;
use kube_audit_forwarder_fuzz::checks::{body, memory_bound};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

fuzz_target!(|data: &[u8]| {
    let case = body::Case::new(data);
    let size = case
        .plain()
        .map_or(case.wire.len(), |p| p.len().max(case.wire.len()));
    // An allocation past the bound fails, which aborts: libFuzzer reports it.
    ALLOCATOR
        .set_limit(ALLOCATOR.allocated() + memory_bound(size))
        .expect("limit above what is allocated");
    let result = case.run();
    ALLOCATOR.set_limit(usize::MAX).expect("lift the limit");
    body::check_result(&case, result);
});
