//! Structure-aware EventLists of odd but valid JSON: exactly the items that
//! went in come out.
#![no_main]

use kube_audit_forwarder_fuzz::checks::eventlist::{List, check};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|list: List| check(&list));
