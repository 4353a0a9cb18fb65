//! kube-audit-forwarder: receives Kubernetes API-server audit webhook batches and
//! forwards every event to one or more sinks.
//!
//! # Layout
//!
//! In data-flow order:
//! - [`source`]: the webhook listeners (HTTP and HTTPS) and request handling.
//! - [`decode`]: validates a body with simd-json and splits it into events,
//!   zero-copy.
//! - [`pipeline`]: whole-batch admission into one bounded queue per sink.
//! - [`buffer`]: the disk buffer, a write-ahead log shared by all sinks.
//! - [`process`]: per-sink audit policy, redaction, labels and dedup.
//! - [`sink`]: delivery (stdout, HTTP, TCP, Kafka), each transport with the
//!   encodings of [`sink::encode`].
//! - [`config`], [`metrics`], [`tls`], [`admin`] (health and metrics
//!   endpoints), [`server`] (connection handling) [`app`] (wiring) and
//!   [`reload`] (a new configuration applied while running).
pub mod admin;
pub mod app;
pub mod buffer;
pub mod config;
pub mod decode;
pub mod metrics;
pub mod pipeline;
pub mod process;
mod ratelimit;
pub mod reload;
pub mod server;
pub mod sink;
pub mod source;
pub mod synth;
pub mod tls;
