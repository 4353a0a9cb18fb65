//! Syslog messages of audit events: RFC 5424 (The Syslog Protocol) with the
//! event's own JSON bytes as MSG, or an ArcSight CEF record as MSG, each
//! framed for a stream as RFC 6587 §3.4 describes (octet counting, the
//! framing RFC 5425 requires over TLS, or a trailing LF).
//!
//! One message per event:
//!
//! ```text
//! MSG-LEN SP <PRI>1 SP TIMESTAMP SP HOSTNAME SP APP-NAME SP - SP MSGID SP SD [SP [BOM] MSG]
//! ```
//!
//! - PRI is `facility * 8 + severity`; the severity is `severity.failed`
//!   for an event whose `responseStatus.code` is 400 or more or whose stage
//!   is `Panic`, else `severity.default`.
//! - TIMESTAMP is the event's `stageTimestamp` (Kubernetes writes RFC 3339
//!   with microseconds, which RFC 5424 §6.2.3 takes as it is; more than six
//!   fraction digits are cut to six); `-` when it has none.
//! - PROCID is always `-`; MSGID is the event's stage (or verb, or a fixed
//!   text); STRUCTURED-DATA is the same on every message, its values escaped
//!   as §6.3.3 says (`"`, `\` and `]` after a backslash).
//!
//! The CEF record (ArcSight "Implementing ArcSight CEF", revision 25) is
//! `CEF:0|Vendor|Product|Version|SignatureID|Name|Severity|Extension`, header
//! fields with `\` and `|` escaped, extension values with `\` and `=`
//! escaped and line breaks written `\n`/`\r`. Signature ID is
//! `verb:resource` (`verb` alone for non-resource requests), Name is
//! `verb resource` (or `verb requestURI`), Severity 0–10 from the syslog
//! severity. Extension keys, in this order, each only when the event has the
//! field:
//!
//! | key | event field |
//! | --- | --- |
//! | `rt` | `stageTimestamp`, milliseconds since the epoch |
//! | `externalId` | `auditID` |
//! | `cat` | `stage` |
//! | `act` | `verb` |
//! | `suser` | `user.username` |
//! | `src` / `c6a2` | first of `sourceIPs` (IPv4 / IPv6) |
//! | `requestClientApplication` | `userAgent` |
//! | `request` | `requestURI` |
//! | `outcome` | `success`, or `failure` as for the severity |
//! | `cn1` (`cn1Label=responseCode`) | `responseStatus.code` |
//! | `cs1` (`cs1Label=level`) | `level` |
//! | `cs2` (`cs2Label=namespace`) | `objectRef.namespace` |
//! | `cs3` (`cs3Label=resource`) | `objectRef.resource[/subresource]` |
//! | `cs4` (`cs4Label=name`) | `objectRef.name` |
//! | `rawEvent` | the event's JSON, with `cef.raw_event` |

use std::borrow::Cow;
use std::ops::Range;

use crate::config::{SyslogConfig, SyslogFormat, SyslogFraming};
use crate::decode::{Event, Stage};
use crate::process::json;

/// What follows the bytes an encoder appended for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Whether the event's own bytes come next (`false` when the appended
    /// bytes are the whole message, as with CEF).
    pub event: bool,
    /// Bytes after those (a newline, or nothing).
    pub tail: &'static [u8],
}

/// A message longer than `max_message_bytes`: the event is not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("syslog message of {bytes} bytes is over max_message_bytes ({max})")]
pub struct TooLong {
    /// The framed message's length.
    pub bytes: usize,
    /// The limit.
    pub max: usize,
}

/// Where MSGID comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MsgId {
    Stage,
    Verb,
    Fixed(String),
}

/// A built syslog encoder: the parts of every header fixed at start-up.
#[derive(Debug, Clone)]
pub struct SyslogEncoder {
    format: SyslogFormat,
    framing: SyslogFraming,
    facility: u8,
    default: u8,
    failed: u8,
    /// `SP HOSTNAME SP APP-NAME SP PROCID SP`.
    middle: Vec<u8>,
    msgid: MsgId,
    /// `SP STRUCTURED-DATA`.
    sd: Vec<u8>,
    bom: bool,
    max: usize,
    /// `CEF:0|vendor|product|version|`, escaped.
    cef_head: Vec<u8>,
    raw_event: bool,
}

const BOM: &[u8] = "\u{feff}".as_bytes();

impl SyslogEncoder {
    /// Builds the encoder for `cfg` (already validated), taking HOSTNAME from
    /// the `HOSTNAME` environment variable or the kernel when the config
    /// leaves it empty.
    pub fn new(cfg: &SyslogConfig) -> Self {
        let host = if cfg.hostname.is_empty() {
            local_hostname()
        } else {
            cfg.hostname.clone()
        };
        Self::with_hostname(cfg, &host)
    }

    /// Builds the encoder for `cfg` with `host` as HOSTNAME (`-` when it is
    /// not 1–255 printable US-ASCII characters).
    pub fn with_hostname(cfg: &SyslogConfig, host: &str) -> Self {
        let host = if crate::config::is_print_ascii(host, 255, &[]) {
            host
        } else {
            "-"
        };
        let middle = format!(" {host} {} - ", cfg.app_name).into_bytes();
        let msgid = match cfg.msgid.as_str() {
            "stage" => MsgId::Stage,
            "verb" => MsgId::Verb,
            "none" => MsgId::Fixed("-".to_owned()),
            other => MsgId::Fixed(other.to_owned()),
        };
        let mut sd = b" ".to_vec();
        if cfg.structured_data.is_empty() {
            sd.push(b'-');
        }
        for (id, params) in &cfg.structured_data {
            sd.push(b'[');
            sd.extend_from_slice(id.as_bytes());
            for (name, value) in params {
                sd.push(b' ');
                sd.extend_from_slice(name.as_bytes());
                sd.extend_from_slice(b"=\"");
                sd_escape(value, &mut sd);
                sd.push(b'"');
            }
            sd.push(b']');
        }
        let mut cef_head = b"CEF:0|".to_vec();
        for f in [&cfg.cef.vendor, &cfg.cef.product, &cfg.cef.version] {
            cef_header_escape(f, &mut cef_head);
            cef_head.push(b'|');
        }
        Self {
            format: cfg.format,
            framing: cfg.framing,
            facility: cfg.facility.0,
            default: cfg.severity.default.0,
            failed: cfg.severity.failed.0,
            middle,
            msgid,
            sd,
            bom: cfg.bom,
            max: cfg.max_message_bytes,
            cef_head,
            raw_event: cfg.cef.raw_event,
        }
    }

    /// Whether `max_message_bytes` limits the messages.
    pub fn has_limit(&self) -> bool {
        self.max > 0
    }

    /// Appends to `out` the bytes that put event `e` on the stream, up to
    /// where the event's own bytes go; the returned [`Frame`] says what
    /// follows. On `Err` nothing is appended.
    ///
    /// # Errors
    ///
    /// [`TooLong`] when the framed message is over `max_message_bytes`.
    pub fn encode(&self, e: &Event, out: &mut Vec<u8>) -> Result<Frame, TooLong> {
        let start = out.len();
        let raw = &e.raw[..];
        let f = self.fields(e);
        let severity = if f.failed() {
            self.failed
        } else {
            self.default
        };
        out.push(b'<');
        push_num(u64::from(self.facility) * 8 + u64::from(severity), out);
        out.extend_from_slice(b">1 ");
        match f.timestamp.as_deref().and_then(Rfc5424Time::parse) {
            Some(t) => t.write_rfc5424(out),
            None => out.push(b'-'),
        }
        out.extend_from_slice(&self.middle);
        match &self.msgid {
            MsgId::Fixed(s) => out.extend_from_slice(s.as_bytes()),
            MsgId::Stage => push_token(f.stage.as_deref(), 32, out),
            MsgId::Verb => push_token(f.verb.as_deref(), 32, out),
        }
        out.extend_from_slice(&self.sd);
        out.push(b' ');
        if self.bom {
            out.extend_from_slice(BOM);
        }
        let event = match self.format {
            SyslogFormat::Json => true,
            SyslogFormat::Cef => {
                self.cef(&f, severity, raw, out);
                false
            }
        };
        let msg_len = out.len() - start + if event { raw.len() } else { 0 };
        let (tail, total) = match self.framing {
            SyslogFraming::NonTransparent => (&b"\n"[..], msg_len + 1),
            SyslogFraming::OctetCounting => {
                let mut prefix = Vec::with_capacity(8);
                push_num(msg_len as u64, &mut prefix);
                prefix.push(b' ');
                let total = msg_len + prefix.len();
                out.splice(start..start, prefix);
                (&b""[..], total)
            }
        };
        if self.max > 0 && total > self.max {
            out.truncate(start);
            return Err(TooLong {
                bytes: total,
                max: self.max,
            });
        }
        Ok(Frame { event, tail })
    }

    /// The fields the message needs. With MSG the event's JSON, the stage
    /// and status the decoder read are used, and `stageTimestamp` is found
    /// from the end of the event (where the API server writes it, after the
    /// request and response objects), so the event is not walked; anything
    /// else is read in one walk over the event's top level.
    fn fields<'a>(&self, e: &'a Event) -> Fields<'a> {
        if self.format == SyslogFormat::Json
            && self.msgid != MsgId::Verb
            && let Some(stage) = e.meta.stage.and_then(stage_name)
        {
            let timestamp = match last_stage_timestamp(&e.raw) {
                Some(t) => Some(t),
                None => Fields::of(&e.raw).timestamp,
            };
            return Fields {
                timestamp,
                stage: Some(Cow::Borrowed(stage)),
                code: e.meta.code.map(u64::from),
                ..Fields::default()
            };
        }
        Fields::of(&e.raw)
    }

    /// Appends the CEF record of `f`.
    fn cef(&self, f: &Fields<'_>, severity: u8, raw: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.cef_head);
        let verb = f.verb.as_deref().unwrap_or("unknown");
        let resource = f
            .resource
            .as_deref()
            .map(|r| match f.subresource.as_deref() {
                Some(sub) => Cow::Owned(format!("{r}/{sub}")),
                None => Cow::Borrowed(r),
            });
        let what = resource.as_deref().or(f.uri.as_deref());
        cef_header_escape(verb, out);
        if let Some(r) = &resource {
            out.push(b':');
            cef_header_escape(r, out);
        }
        out.push(b'|');
        let mut name = verb.to_owned();
        if let Some(w) = what {
            name.push(' ');
            name.push_str(w);
        }
        cef_header_escape(truncate(&name, 512), out);
        out.push(b'|');
        push_num(u64::from(cef_severity(severity)), out);
        out.push(b'|');
        let mut ext = Extension { out, first: true };
        if let Some(ms) = f.timestamp.as_deref().and_then(epoch_millis) {
            ext.put("rt", &ms.to_string());
        }
        ext.opt("externalId", f.audit_id.as_deref());
        ext.opt("cat", f.stage.as_deref());
        ext.opt("act", f.verb.as_deref());
        ext.opt("suser", f.username.as_deref());
        match f
            .source_ip
            .as_deref()
            .map(|s| (s, s.parse::<std::net::IpAddr>()))
        {
            Some((s, Ok(std::net::IpAddr::V4(_)))) => ext.put("src", s),
            Some((s, Ok(std::net::IpAddr::V6(_)))) => {
                ext.put("c6a2", s);
                ext.put("c6a2Label", "Source IPv6 Address");
            }
            _ => {}
        }
        ext.opt("requestClientApplication", f.user_agent.as_deref());
        ext.opt("request", f.uri.as_deref());
        ext.put("outcome", if f.failed() { "failure" } else { "success" });
        if let Some(c) = f.code {
            ext.put("cn1", &c.to_string());
            ext.put("cn1Label", "responseCode");
        }
        for (key, label, value) in [
            ("cs1", "level", f.level.as_deref()),
            ("cs2", "namespace", f.namespace.as_deref()),
            ("cs3", "resource", resource.as_deref()),
            ("cs4", "name", f.name.as_deref()),
        ] {
            if let Some(v) = value {
                ext.put(key, v);
                ext.put(&format!("{key}Label"), label);
            }
        }
        if self.raw_event {
            ext.put("rawEvent", &String::from_utf8_lossy(raw));
        }
    }
}

/// The name of a stage the decoder knows; `None` for any other.
fn stage_name(s: Stage) -> Option<&'static str> {
    Some(match s {
        Stage::RequestReceived => "RequestReceived",
        Stage::ResponseStarted => "ResponseStarted",
        Stage::ResponseComplete => "ResponseComplete",
        Stage::Panic => "Panic",
        Stage::Other => return None,
    })
}

/// The value of the top-level `stageTimestamp` when it is the event's last
/// member but for members after it that close the event: its last
/// occurrence, checked to be at the top level by walking what follows it to
/// the event's final `}`. `None` when that does not hold.
fn last_stage_timestamp(raw: &[u8]) -> Option<Cow<'_, str>> {
    const KEY: &[u8] = br#""stageTimestamp":"#;
    let at = memchr::memmem::rfind(raw, KEY)?;
    if !matches!(raw.get(at.checked_sub(1)?), Some(b',' | b'{')) {
        return None;
    }
    let value = json::skip_ws(raw, at + KEY.len());
    let end = json::value_end(raw, value)?;
    let mut i = json::skip_ws(raw, end);
    while raw.get(i) == Some(&b',') {
        let key = json::skip_ws(raw, i + 1);
        if raw.get(key) != Some(&b'"') {
            return None;
        }
        let colon = json::skip_ws(raw, json::value_end(raw, key)?);
        if raw.get(colon) != Some(&b':') {
            return None;
        }
        let v = json::skip_ws(raw, colon + 1);
        i = json::skip_ws(raw, json::value_end(raw, v)?);
    }
    if raw.get(i) != Some(&b'}') || json::skip_ws(raw, i + 1) != raw.len() {
        return None;
    }
    json::str_at(raw, value..end)
}

/// The host name for HOSTNAME: `$HOSTNAME` (a pod's name in Kubernetes),
/// else the kernel's, else `-`.
fn local_hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "-".to_owned())
}

/// The fields of an event that the encodings use, read from its top level in
/// one pass.
#[derive(Debug, Default)]
struct Fields<'a> {
    timestamp: Option<Cow<'a, str>>,
    stage: Option<Cow<'a, str>>,
    verb: Option<Cow<'a, str>>,
    level: Option<Cow<'a, str>>,
    audit_id: Option<Cow<'a, str>>,
    uri: Option<Cow<'a, str>>,
    user_agent: Option<Cow<'a, str>>,
    username: Option<Cow<'a, str>>,
    source_ip: Option<Cow<'a, str>>,
    namespace: Option<Cow<'a, str>>,
    resource: Option<Cow<'a, str>>,
    subresource: Option<Cow<'a, str>>,
    name: Option<Cow<'a, str>>,
    code: Option<u64>,
}

impl<'a> Fields<'a> {
    fn of(b: &'a [u8]) -> Self {
        let mut f = Self::default();
        let s = |r: Range<usize>| json::str_at(b, r);
        for m in json::members(b, 0..b.len()) {
            let v = m.value.clone();
            match b.get(m.key.clone()).unwrap_or_default() {
                b"stageTimestamp" => f.timestamp = s(v),
                b"stage" => f.stage = s(v),
                b"verb" => f.verb = s(v),
                b"level" => f.level = s(v),
                b"auditID" => f.audit_id = s(v),
                b"requestURI" => f.uri = s(v),
                b"userAgent" => f.user_agent = s(v),
                b"user" => f.username = json::get(b, v, b"username").and_then(s),
                b"sourceIPs" => f.source_ip = json::elements(b, v).into_iter().next().and_then(s),
                b"responseStatus" => {
                    f.code = json::get(b, v, b"code")
                        .and_then(|r| std::str::from_utf8(&b[r]).ok()?.parse().ok());
                }
                b"objectRef" => {
                    let get = |k: &[u8]| json::get(b, v.clone(), k).and_then(s);
                    f.namespace = get(b"namespace");
                    f.resource = get(b"resource");
                    f.subresource = get(b"subresource");
                    f.name = get(b"name");
                }
                _ => {}
            }
        }
        f
    }

    /// A failed request: status 400 or more, or a panic.
    fn failed(&self) -> bool {
        self.code.is_some_and(|c| c >= 400) || self.stage.as_deref() == Some("Panic")
    }
}

/// An RFC 3339 date-time as RFC 5424 §6.2.3 restricts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rfc5424Time<'a> {
    /// `YYYY-MM-DDTHH:MM:SS`, checked.
    date_time: &'a str,
    /// Fraction digits (at most 6 kept), without the dot.
    frac: &'a str,
    /// The offset as written (`Z` or `+hh:mm`).
    offset: &'a str,
}

impl<'a> Rfc5424Time<'a> {
    /// Parses `YYYY-MM-DD(T|t)HH:MM:SS[.frac](Z|z|±HH:MM)`; `None` for
    /// anything else, or a field out of its range (a leap second included,
    /// which RFC 5424 forbids).
    fn parse(s: &'a str) -> Option<Self> {
        let b = s.as_bytes();
        let digits = |r: Range<usize>| -> Option<i64> {
            let d = b.get(r)?;
            d.iter()
                .all(u8::is_ascii_digit)
                .then(|| d.iter().fold(0i64, |n, &c| n * 10 + i64::from(c - b'0')))
        };
        let seps = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
        if b.len() < 20 || seps.iter().any(|&(i, c)| b[i] != c) || !matches!(b[10], b'T' | b't') {
            return None;
        }
        let (mo, d, h, mi, sec) = (
            digits(5..7)?,
            digits(8..10)?,
            digits(11..13)?,
            digits(14..16)?,
            digits(17..19)?,
        );
        digits(0..4)?;
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 59 {
            return None;
        }
        let mut i = 19;
        let mut frac = "";
        if b[i] == b'.' {
            let n = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 {
                return None;
            }
            frac = &s[i + 1..i + 1 + n.min(6)];
            i += 1 + n;
        }
        let rest = &s[i..];
        match rest.as_bytes() {
            [b'Z' | b'z'] => {}
            [b'+' | b'-', _, _, b':', _, _] => {
                let (oh, om) = (digits(i + 1..i + 3)?, digits(i + 4..i + 6)?);
                if oh > 23 || om > 59 {
                    return None;
                }
            }
            _ => return None,
        }
        Some(Self {
            date_time: &s[..19],
            frac,
            offset: rest,
        })
    }

    fn write_rfc5424(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.date_time.as_bytes()[..10]);
        out.push(b'T');
        out.extend_from_slice(&self.date_time.as_bytes()[11..]);
        if !self.frac.is_empty() {
            out.push(b'.');
            out.extend_from_slice(self.frac.as_bytes());
        }
        if matches!(self.offset, "Z" | "z") {
            out.push(b'Z');
        } else {
            out.extend_from_slice(self.offset.as_bytes());
        }
    }
}

/// Milliseconds since 1970-01-01T00:00:00Z of an RFC 3339 time.
fn epoch_millis(t: &str) -> Option<i64> {
    let t = super::timestamp::Timestamp::parse(t.as_bytes())?;
    Some(t.secs * 1000 + i64::from(t.nanos / 1_000_000))
}

/// CEF severity (0–10) of a syslog severity (0–7).
fn cef_severity(syslog: u8) -> u8 {
    match syslog {
        0..=2 => 10,
        3 => 8,
        4 => 6,
        5 => 4,
        6 => 3,
        _ => 1,
    }
}

/// Appends `n` in decimal.
fn push_num(n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(n.to_string().as_bytes());
}

/// Appends `v` when it is 1–`max` printable US-ASCII characters, else `-`.
fn push_token(v: Option<&str>, max: usize, out: &mut Vec<u8>) {
    match v {
        Some(v) if crate::config::is_print_ascii(v, max, &[]) => {
            out.extend_from_slice(v.as_bytes())
        }
        _ => out.push(b'-'),
    }
}

/// Appends a PARAM-VALUE's content with `"`, `\` and `]` escaped (RFC 5424
/// §6.3.3).
fn sd_escape(v: &str, out: &mut Vec<u8>) {
    for &c in v.as_bytes() {
        if matches!(c, b'"' | b'\\' | b']') {
            out.push(b'\\');
        }
        out.push(c);
    }
}

/// Appends a CEF header field with `\` and `|` escaped and line breaks made
/// spaces (the header has no escape for them).
fn cef_header_escape(v: &str, out: &mut Vec<u8>) {
    for &c in v.as_bytes() {
        match c {
            b'\\' | b'|' => out.extend_from_slice(&[b'\\', c]),
            b'\n' | b'\r' => out.push(b' '),
            _ => out.push(c),
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// CEF extension pairs being appended.
struct Extension<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl Extension<'_> {
    fn opt(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.put(key, v);
        }
    }

    /// Appends `key=value`, the value with `\` and `=` escaped and line
    /// breaks written `\n` / `\r`.
    fn put(&mut self, key: &str, value: &str) {
        if !self.first {
            self.out.push(b' ');
        }
        self.first = false;
        self.out.extend_from_slice(key.as_bytes());
        self.out.push(b'=');
        for &c in value.as_bytes() {
            match c {
                b'\\' | b'=' => self.out.extend_from_slice(&[b'\\', c]),
                b'\n' => self.out.extend_from_slice(b"\\n"),
                b'\r' => self.out.extend_from_slice(b"\\r"),
                _ => self.out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{Facility, Severity, SeverityConfig};

    fn cfg() -> SyslogConfig {
        SyslogConfig::default()
    }

    /// `raw` as an event without the decoder's fields.
    fn event(raw: &str) -> Event {
        Event {
            raw: bytes::Bytes::copy_from_slice(raw.as_bytes()),
            meta: crate::decode::EventMeta::default(),
        }
    }

    /// The framed message for `raw`, the event's bytes put where the frame
    /// says; the same whether the decoder's fields are used or not.
    fn framed(enc: &SyslogEncoder, raw: &str) -> String {
        let plain = framed_event(enc, &event(raw));
        let body = bytes::Bytes::from(format!(r#"{{"items":[{raw}]}}"#));
        let decoded = crate::decode::decode(&body, &crate::decode::DecodeOptions::default())
            .map(|d| d.events)
            .unwrap_or_default();
        if let [e] = &decoded[..] {
            assert_eq!(framed_event(enc, e), plain, "with the decoder's fields");
        }
        plain
    }

    fn framed_event(enc: &SyslogEncoder, e: &Event) -> String {
        let raw = &e.raw[..];
        let mut out = Vec::new();
        let f = enc.encode(e, &mut out).unwrap();
        if f.event {
            out.extend_from_slice(raw);
        }
        out.extend_from_slice(f.tail);
        String::from_utf8(out).unwrap()
    }

    /// Splits an octet-counted frame, checking that the count is right.
    fn unframe(s: &str) -> &str {
        let (len, msg) = s.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len(), "MSG-LEN of {s:?}");
        msg
    }

    const EVENT: &str = r#"{"kind":"Event","level":"Metadata","auditID":"a-1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/d/pods?x=1","verb":"create","user":{"username":"alice","groups":["g"]},"sourceIPs":["10.0.0.7","::1"],"userAgent":"kubectl/v1.31","objectRef":{"resource":"pods","namespace":"d","name":"p","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":201},"requestReceivedTimestamp":"2026-01-02T03:04:05.000001Z","stageTimestamp":"2026-01-02T03:04:05.123456Z"}"#;

    #[test]
    fn rfc5424_example_1_header_with_bom() {
        // RFC 5424 §6.5 example 1: facility auth (4), severity crit (2).
        let c = SyslogConfig {
            facility: Facility(4),
            severity: SeverityConfig {
                default: Severity(2),
                failed: Severity(2),
            },
            app_name: "su".into(),
            msgid: "ID47".into(),
            bom: true,
            ..cfg()
        };
        let enc = SyslogEncoder::with_hostname(&c, "mymachine.example.com");
        let raw = r#"{"stageTimestamp":"2003-10-11T22:14:15.003Z"}"#;
        let s = framed(&enc, raw);
        assert_eq!(
            unframe(&s),
            format!(
                "<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \u{feff}{raw}"
            )
        );
    }

    #[test]
    fn rfc5424_example_3_structured_data_and_example_2_offset() {
        // §6.5 example 3's SD element (parameters in name order here), and
        // example 2's PRI (local4.notice = 165) and time with an offset.
        let mut params = BTreeMap::new();
        params.insert("iut".to_owned(), "3".to_owned());
        params.insert("eventSource".to_owned(), "Application".to_owned());
        params.insert("eventID".to_owned(), "1011".to_owned());
        let mut sd = BTreeMap::new();
        sd.insert("exampleSDID@32473".to_owned(), params);
        let c = SyslogConfig {
            facility: Facility(20),
            severity: SeverityConfig {
                default: Severity(5),
                failed: Severity(5),
            },
            app_name: "myproc".into(),
            msgid: "none".into(),
            structured_data: sd,
            framing: SyslogFraming::NonTransparent,
            ..cfg()
        };
        let enc = SyslogEncoder::with_hostname(&c, "192.0.2.1");
        let raw = r#"{"stageTimestamp":"2003-08-24T05:14:15.000003-07:00"}"#;
        assert_eq!(
            framed(&enc, raw),
            format!(
                "<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc - - \
                 [exampleSDID@32473 eventID=\"1011\" eventSource=\"Application\" iut=\"3\"] {raw}\n"
            )
        );
    }

    #[test]
    fn sd_values_are_escaped() {
        let mut sd = BTreeMap::new();
        sd.insert(
            "k8s@32473".to_owned(),
            BTreeMap::from([("cluster".to_owned(), r#"a"b\c]d é"#.to_owned())]),
        );
        let enc = SyslogEncoder::with_hostname(
            &SyslogConfig {
                structured_data: sd,
                ..cfg()
            },
            "h",
        );
        let s = framed(&enc, "{}");
        assert!(
            unframe(&s).ends_with(r#" [k8s@32473 cluster="a\"b\\c\]d é"] {}"#),
            "{s}"
        );
    }

    #[test]
    fn defaults_give_local0_stage_and_the_event_bytes() {
        let enc = SyslogEncoder::with_hostname(&cfg(), "node-1");
        let s = framed(&enc, EVENT);
        assert_eq!(
            unframe(&s),
            format!(
                "<134>1 2026-01-02T03:04:05.123456Z node-1 kube-apiserver-audit - ResponseComplete - {EVENT}"
            )
        );
        let failed = EVENT.replace(r#""code":201"#, r#""code":403"#);
        assert!(unframe(&framed(&enc, &failed)).starts_with("<132>1 "));
        let panic = EVENT.replace("ResponseComplete", "Panic");
        assert!(unframe(&framed(&enc, &panic)).starts_with("<132>1 "));
        let verb = SyslogEncoder::with_hostname(
            &SyslogConfig {
                msgid: "verb".into(),
                ..cfg()
            },
            "node-1",
        );
        assert!(framed(&verb, EVENT).contains(" - create - {"));
    }

    #[test]
    fn odd_fields_become_nil_values() {
        let enc = SyslogEncoder::with_hostname(&cfg(), "bad host");
        let raw = r#"{"stage":"Response Complete","stageTimestamp":"2026-01-02T03:04:05Z "}"#;
        assert_eq!(
            unframe(&framed(&enc, raw)),
            format!("<134>1 - - kube-apiserver-audit - - - {raw}")
        );
        assert_eq!(
            unframe(&framed(&enc, "{}")),
            "<134>1 - - kube-apiserver-audit - - - {}"
        );
    }

    #[test]
    fn the_stage_timestamp_found_from_the_end_is_the_top_level_one() {
        let t = |raw: &str| last_stage_timestamp(raw.as_bytes()).map(Cow::into_owned);
        assert_eq!(
            t(r#"{"stageTimestamp":"A","annotations":{"k":"v,\"}\""},"z":[1,{}]}"#).as_deref(),
            Some("A")
        );
        for nested in [
            r#"{"stageTimestamp":"A","requestObject":{"stageTimestamp":"B"}}"#,
            r#"{"annotations":{"stageTimestamp":"B"},"z":1}"#,
            r#"{"a":[{"stageTimestamp":"B"}]}"#,
            r#"{"a":"x\"stageTimestamp\":\"B"}"#,
        ] {
            assert_eq!(t(nested), None, "{nested}");
        }
        // Where it is not found so, the walk from the front finds it.
        let enc = SyslogEncoder::with_hostname(&cfg(), "h");
        let raw = r#"{"stage":"ResponseComplete","stageTimestamp":"2026-01-02T03:04:05Z","requestObject":{"stageTimestamp":"1999-01-01T00:00:00Z"}}"#;
        assert!(framed(&enc, raw).contains(" 2026-01-02T03:04:05Z h "));
    }

    #[test]
    fn timestamps_are_checked_and_normalised() {
        let t = |s: &str| {
            Rfc5424Time::parse(s).map(|t| {
                let mut out = Vec::new();
                t.write_rfc5424(&mut out);
                String::from_utf8(out).unwrap()
            })
        };
        assert_eq!(
            t("2026-01-02t03:04:05z").as_deref(),
            Some("2026-01-02T03:04:05Z")
        );
        assert_eq!(
            t("2026-01-02T03:04:05.123456789+05:30").as_deref(),
            Some("2026-01-02T03:04:05.123456+05:30")
        );
        for bad in [
            "2026-01-02T03:04:05",
            "2026-01-02T23:59:60Z",
            "2026-13-02T03:04:05Z",
            "2026-01-02T03:04:05.Z",
            "2026-01-02 03:04:05Z",
            "2026-01-02T03:04:05+0530",
            "",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
        let ms = |s: &str| epoch_millis(s).unwrap();
        assert_eq!(ms("1970-01-01T00:00:00Z"), 0);
        assert_eq!(ms("2003-10-11T22:14:15.003Z"), 1_065_910_455_003);
        assert_eq!(ms("2003-10-11T23:14:15.3+01:00"), 1_065_910_455_300);
        assert_eq!(ms("2000-03-01T00:00:00Z"), 951_868_800_000);
    }

    #[test]
    fn too_long_messages_are_refused_and_leave_nothing() {
        let enc = SyslogEncoder::with_hostname(
            &SyslogConfig {
                max_message_bytes: 100,
                ..cfg()
            },
            "h",
        );
        let mut out = b"before".to_vec();
        let err = enc.encode(&event(EVENT), &mut out).unwrap_err();
        assert_eq!(out, b"before");
        assert_eq!(err.max, 100);
        let whole = framed(&SyslogEncoder::with_hostname(&cfg(), "h"), EVENT);
        assert_eq!(err.bytes, whole.len());
        let fits = SyslogEncoder::with_hostname(
            &SyslogConfig {
                max_message_bytes: whole.len(),
                ..cfg()
            },
            "h",
        );
        assert_eq!(framed(&fits, EVENT), whole);
    }

    #[test]
    fn cef_maps_the_fields_and_escapes() {
        let c = SyslogConfig {
            format: SyslogFormat::Cef,
            framing: SyslogFraming::NonTransparent,
            ..cfg()
        };
        let enc = SyslogEncoder::with_hostname(&c, "h");
        let s = framed(&enc, EVENT);
        let cef = s
            .strip_prefix(
                "<134>1 2026-01-02T03:04:05.123456Z h kube-apiserver-audit - ResponseComplete - ",
            )
            .unwrap();
        assert_eq!(
            cef,
            "CEF:0|Kubernetes|kube-apiserver|audit.k8s.io/v1|create:pods|create pods|3|\
             rt=1767323045123 externalId=a-1 cat=ResponseComplete act=create suser=alice \
             src=10.0.0.7 requestClientApplication=kubectl/v1.31 \
             request=/api/v1/namespaces/d/pods?x\\=1 outcome=success cn1=201 cn1Label=responseCode \
             cs1=Metadata cs1Label=level cs2=d cs2Label=namespace cs3=pods cs3Label=resource \
             cs4=p cs4Label=name\n"
        );
        let odd = r#"{"verb":"get","requestURI":"/a|b\\c","user":{"username":"x=y\nz\\"},"sourceIPs":["fd00::1"],"responseStatus":{"code":500}}"#;
        let c = SyslogConfig {
            cef: crate::config::CefConfig {
                vendor: "V|1".into(),
                raw_event: true,
                ..Default::default()
            },
            ..c
        };
        let s = framed(&SyslogEncoder::with_hostname(&c, "h"), odd);
        let cef = s.split_once("audit - - - ").unwrap().1;
        assert_eq!(
            cef,
            format!(
                "CEF:0|V\\|1|kube-apiserver|audit.k8s.io/v1|get|get /a\\|b\\\\c|6|\
                 act=get suser=x\\=y\\nz\\\\ c6a2=fd00::1 c6a2Label=Source IPv6 Address \
                 request=/a|b\\\\c outcome=failure cn1=500 cn1Label=responseCode rawEvent={}\n",
                odd.replace('\\', "\\\\").replace('=', "\\=")
            )
        );
    }
}
