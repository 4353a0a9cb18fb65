//! Integration tests: the forwarder started for real on 127.0.0.1:0, fed over
//! real TCP, its stdout sink and `/metrics` read as a user would.
#![allow(unreachable_pub)]

mod backends;
mod bh16;
mod binary;
mod buffer;
mod cases;
mod corpus;
mod deploy;
mod elasticsearch;
mod fuzz_regressions;
mod harness;
mod http_edge;
mod interop;
#[cfg(feature = "kafka")]
mod kafka;
mod monitoring;
mod pki;
mod process;
mod prometheus;
mod protocol_server;
mod reload;
mod sinks;
mod splunk;
mod syslog;
mod tls;
mod tls_interop;
mod tls_rotation;
