//! kube-audit-forwarder: receives Kubernetes API-server audit webhook batches and
//! forwards every event to one or more sinks.
//!
//! # Layout
//!
//! In data-flow order:
//! - [`decode`]: validates a body with simd-json and splits it into events,
//!   zero-copy.
//! - [`app`]: wires sources, pipeline and sinks, and shuts them down in order;
//!   [`reload`] applies a new configuration while running.
pub mod admin;
pub mod app;
pub mod config;
pub mod decode;
pub mod metrics;
pub mod pipeline;
mod ratelimit;
pub mod reload;
pub mod server;
pub mod sink;
pub mod source;
pub mod synth;
pub mod tls;
