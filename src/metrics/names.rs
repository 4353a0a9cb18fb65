//! Every metric name the forwarder exports, in one place. All share the prefix
//! `audit_forwarder_`, after kube-apiserver's `apiserver_audit_*` family.

/// Counter `{code}`: webhook requests answered, by HTTP status code.
pub const REQUESTS_TOTAL: &str = "audit_forwarder_requests_total";
/// Counter `{reason}`: requests refused (every non-200 answer), by bounded reason.
pub const REQUESTS_REJECTED_TOTAL: &str = "audit_forwarder_requests_rejected_total";
/// Histogram `{code}`: seconds from the request's headers to its answer.
pub const REQUEST_DURATION_SECONDS: &str = "audit_forwarder_request_duration_seconds";
/// Counter: events split out of accepted requests.
pub const EVENTS_RECEIVED_TOTAL: &str = "audit_forwarder_events_received_total";
/// Counter: request body bytes read from the wire (before decompression) of
/// accepted requests.
pub const BYTES_RECEIVED_TOTAL: &str = "audit_forwarder_bytes_received_total";
/// Counter `{reason}`: bodies the decoder refused, by reason.
pub const DECODE_ERRORS_TOTAL: &str = "audit_forwarder_decode_errors_total";
/// Counter: events truncated for `decode.max_event_bytes`.
pub const EVENTS_TRUNCATED_TOTAL: &str = "audit_forwarder_events_truncated_total";
/// Counter `{reason}`: accepted events that were changed to be forwarded:
/// `invalid_utf8` (bytes that are not UTF-8 replaced by U+FFFD, as Go's
/// decoder does).
pub const EVENTS_REPAIRED_TOTAL: &str = "audit_forwarder_events_repaired_total";
/// Counter `{sink, reason}`: events discarded after acceptance. `sink="all"` for
/// drops before the fan-out (`event_too_large`).
pub const EVENTS_DROPPED_TOTAL: &str = "audit_forwarder_events_dropped_total";
/// Counter `{sink}`: events a sink delivered (wrote, for stdout).
pub const EVENTS_SENT_TOTAL: &str = "audit_forwarder_events_sent_total";
/// Counter `{sink}`: bytes a sink delivered, framing included.
pub const BYTES_SENT_TOTAL: &str = "audit_forwarder_bytes_sent_total";
/// Counter `{sink, reason}`: events affected by a failed delivery attempt; the
/// analogue of kube-apiserver's `apiserver_audit_error_total{plugin}`.
pub const ERROR_TOTAL: &str = "audit_forwarder_error_total";
/// Counter `{sink}`: delivery attempts repeated (HTTP requests retried, events
/// re-sent on a new TCP connection, Kafka messages produced again).
pub const RETRIES_TOTAL: &str = "audit_forwarder_retries_total";
/// Counter `{sink}`: events an endpoint rejected for good, written to the
/// dead-letter file if one is configured.
pub const EVENTS_DEAD_LETTERED_TOTAL: &str = "audit_forwarder_events_dead_lettered_total";
/// Gauge `{sink, endpoint}`: 1 while the endpoint is in rotation, 0 while it
/// is ejected.
pub const ENDPOINT_UP: &str = "audit_forwarder_endpoint_up";
/// Counter `{sink, reason}`: failed connections to a sink's endpoint
/// (`connect`, `timeout`, `closed` by the peer, `broken`; for Kafka, `down`:
/// no broker reachable, `transport`, `auth`), whether or not events
/// were in flight: what shows an outage when nothing is being sent.
pub const CONNECTION_ERRORS_TOTAL: &str = "audit_forwarder_connection_errors_total";
/// Histogram `{sink}`: seconds one delivery (one write or request) took.
pub const SEND_DURATION_SECONDS: &str = "audit_forwarder_send_duration_seconds";
/// Gauge `{sink}`: events in the sink's queue, including those being delivered.
pub const QUEUE_EVENTS: &str = "audit_forwarder_queue_events";
/// Gauge `{sink}`: bytes held by the sink's queue.
pub const QUEUE_BYTES: &str = "audit_forwarder_queue_bytes";
/// Gauge `{sink}`: the queue's `capacity_events`.
pub const QUEUE_CAPACITY_EVENTS: &str = "audit_forwarder_queue_capacity_events";
/// Gauge `{sink}`: the queue's `capacity_bytes`.
pub const QUEUE_CAPACITY_BYTES: &str = "audit_forwarder_queue_capacity_bytes";
/// Gauge `{listener}`: open client connections.
pub const OPEN_CONNECTIONS: &str = "audit_forwarder_open_connections";
/// Gauge `{version}`: always 1.
pub const BUILD_INFO: &str = "audit_forwarder_build_info";
/// Counter `{listener, reason}`: TLS handshakes that failed, by bounded reason:
/// `no_client_cert`, `unknown_ca`, `not_allowed`, `bad_client_cert`,
/// `peer_alert` (the client refused us), `protocol`, `timeout`, `closed`,
/// `other`.
pub const TLS_HANDSHAKE_ERRORS_TOTAL: &str = "audit_forwarder_tls_handshake_errors_total";
/// Gauge `{certificate}`: notAfter in seconds since the Unix epoch of the
/// serving certificate's leaf (`serving`) and the earliest of the client CA
/// file (`client_ca`).
pub const TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS: &str =
    "audit_forwarder_tls_certificate_expiry_timestamp_seconds";
/// Counter `{result}`: reloads of changed certificate files, `success` or
/// `failure` (the files in use stay).
pub const TLS_RELOADS_TOTAL: &str = "audit_forwarder_tls_reloads_total";

/// Counter `{result}`: configuration reloads (SIGHUP): `success`,
/// `restart_required` (applied, but a changed `buffer` or `log.format` waits
/// for a restart) or `failure` (an invalid file, or a sink or listener that
/// could not be built: the running configuration stays).
pub const CONFIG_RELOADS_TOTAL: &str = "audit_forwarder_config_reloads_total";

/// Gauge: bytes the disk buffer's log files take.
pub const BUFFER_BYTES: &str = "audit_forwarder_buffer_bytes";
/// Gauge: `buffer.max_bytes`.
pub const BUFFER_MAX_BYTES: &str = "audit_forwarder_buffer_max_bytes";
/// Gauge: bytes free on the disk buffer's filesystem for an unprivileged
/// writer (statvfs `f_bavail`), the headroom before writes fail.
pub const BUFFER_FREE_BYTES: &str = "audit_forwarder_buffer_filesystem_free_bytes";
/// Gauge `{sink}`: events in the disk buffer the sink has not yet delivered.
pub const BUFFER_EVENTS: &str = "audit_forwarder_buffer_events";
/// Gauge `{sink}`: seconds since the oldest batch the sink has not yet
/// delivered was accepted (0 when it has delivered everything): how far
/// behind the sink is.
pub const BUFFER_OLDEST_AGE_SECONDS: &str = "audit_forwarder_buffer_oldest_event_age_seconds";
/// Histogram: seconds one `fdatasync` of the disk buffer's log took.
pub const BUFFER_FSYNC_DURATION_SECONDS: &str = "audit_forwarder_buffer_fsync_duration_seconds";
/// Counter: damaged records found in the disk buffer's log (skipped, or cut
/// off at the end of the last file).
pub const BUFFER_CORRUPT_RECORDS_TOTAL: &str = "audit_forwarder_buffer_corrupt_records_total";
/// Counter `{kind}`: disk errors of the buffer: `full` (no space), `write`,
/// `sync` (a failed fsync: the log is re-opened and re-checked), `read`,
/// `checkpoint`.
pub const BUFFER_DISK_ERRORS_TOTAL: &str = "audit_forwarder_buffer_disk_errors_total";
/// Counter `{sink}`: events given to a sink again after a restart because its
/// last saved position was behind what it had delivered.
pub const BUFFER_REPLAYED_EVENTS_TOTAL: &str = "audit_forwarder_buffer_replayed_events_total";

/// Counter `{sink, rule, reason}`: events a sink's audit policy dropped, by
/// the index of the rule that matched (`none` when no rule did) and reason
/// (`level_none`, `omit_stage`).
pub const PROCESS_POLICY_DROPPED_TOTAL: &str =
    "audit_forwarder_process_policy_dropped_events_total";
/// Counter `{sink}`: events whose level a sink's audit policy lowered.
pub const PROCESS_LEVELS_LOWERED_TOTAL: &str = "audit_forwarder_process_levels_lowered_total";
/// Counter `{sink}`: values a sink replaced with `"[REDACTED]"`.
pub const PROCESS_FIELDS_REDACTED_TOTAL: &str = "audit_forwarder_process_fields_redacted_total";
/// Counter `{sink}`: labels a sink set in events' `annotations`.
pub const PROCESS_LABELS_ADDED_TOTAL: &str = "audit_forwarder_process_labels_added_total";
/// Counter `{sink}`: events a sink dropped as repeats of an `(auditID, stage)`
/// in its dedup window.
pub const PROCESS_DUPLICATES_DROPPED_TOTAL: &str =
    "audit_forwarder_process_duplicates_dropped_total";
/// Counter `{sink, result}`: reloads of a changed policy file, `success` or
/// `failure` (the policy in use stays).
pub const PROCESS_POLICY_RELOADS_TOTAL: &str = "audit_forwarder_process_policy_reloads_total";
