//! Encodings: how a sink places each event's own bytes in a destination's
//! envelope. Each is pure code over an event's bytes (never re-serialised);
//! the transports (`tcp`, `http`, …) frame, send and account for them.

pub mod syslog;
