//! Any bytes on a connection to the HTTP source: no panic, the connection
//! ends, and the answers are well-formed HTTP/1.1 that match what was queued.
#![no_main]

use kube_audit_forwarder_fuzz::checks::http;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| http::check(data));
