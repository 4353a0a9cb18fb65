//! The `syslog` section of a `tcp` sink with `encoding: syslog`: RFC 5424
//! messages (or CEF inside them) framed per RFC 6587 over TCP, or over TLS
//! as RFC 5425 describes.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What a `tcp` sink writes for each event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpEncoding {
    /// The event's JSON followed by a newline (a Logstash `json_lines` codec).
    #[default]
    JsonLines,
    /// One syslog message per event, as the `syslog` section says.
    Syslog,
}

/// How syslog messages are delimited on the stream (RFC 6587 §3.4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogFraming {
    /// `MSG-LEN SP SYSLOG-MSG` (RFC 6587 §3.4.1; the only framing RFC 5425
    /// allows over TLS). A message may hold any byte.
    #[default]
    OctetCounting,
    /// `SYSLOG-MSG LF` (RFC 6587 §3.4.2). Safe for the event's JSON, which
    /// never holds a raw newline, but a receiver with a line-length limit
    /// splits or truncates long events.
    NonTransparent,
}

/// What a syslog message's MSG part is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogFormat {
    /// The event's own JSON bytes.
    #[default]
    Json,
    /// An ArcSight CEF record of the event's main fields.
    Cef,
}

/// A syslog severity (RFC 5424 §6.2.1), by keyword or number 0–7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Severity(pub u8);

/// A syslog facility (RFC 5424 §6.2.1), by keyword or number 0–23.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facility(pub u8);

const SEVERITIES: [&str; 8] = [
    "emergency",
    "alert",
    "critical",
    "error",
    "warning",
    "notice",
    "informational",
    "debug",
];

const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// A keyword of `names` or a number below `names.len()`.
fn keyword_or_number<'de, D: serde::Deserializer<'de>>(
    d: D,
    names: &[&str],
    aliases: &[(&str, u8)],
) -> Result<u8, D::Error> {
    use serde::de::Error;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    let found = match Raw::deserialize(d)? {
        Raw::N(n) => u8::try_from(n)
            .ok()
            .filter(|&n| usize::from(n) < names.len()),
        Raw::S(s) => {
            let s = s.to_ascii_lowercase();
            names
                .iter()
                .position(|n| *n == s)
                .and_then(|i| u8::try_from(i).ok())
                .or_else(|| aliases.iter().find(|(a, _)| *a == s).map(|&(_, n)| n))
                .or_else(|| {
                    s.parse()
                        .ok()
                        .filter(|&n: &u8| usize::from(n) < names.len())
                })
        }
    };
    found.ok_or_else(|| {
        D::Error::custom(format!(
            "expected one of {} or a number from 0 to {}",
            names.join(", "),
            names.len() - 1
        ))
    })
}

impl<'de> Deserialize<'de> for Severity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let aliases = [
            ("emerg", 0),
            ("crit", 2),
            ("err", 3),
            ("warn", 4),
            ("info", 6),
        ];
        keyword_or_number(d, &SEVERITIES, &aliases).map(Self)
    }
}

impl<'de> Deserialize<'de> for Facility {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        keyword_or_number(d, &FACILITIES, &[("security", 4)]).map(Self)
    }
}

/// Severities by the outcome of the request an event describes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SeverityConfig {
    /// Events of requests that did not fail, or have no status yet.
    pub default: Severity,
    /// Events whose `responseStatus.code` is 400 or more, and `Panic` stages.
    pub failed: Severity,
}

impl Default for SeverityConfig {
    fn default() -> Self {
        Self {
            default: Severity(6),
            failed: Severity(4),
        }
    }
}

/// The CEF header fields that are fixed per sink.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CefConfig {
    /// Device Vendor.
    pub vendor: String,
    /// Device Product.
    pub product: String,
    /// Device Version.
    pub version: String,
    /// Whether the event's whole JSON goes in the `rawEvent` extension too.
    pub raw_event: bool,
}

impl Default for CefConfig {
    fn default() -> Self {
        Self {
            vendor: "Kubernetes".to_owned(),
            product: "kube-apiserver".to_owned(),
            version: "audit.k8s.io/v1".to_owned(),
            raw_event: false,
        }
    }
}

/// The `syslog` section of a `tcp` sink (used with `encoding: syslog`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyslogConfig {
    /// What MSG holds: `json` (the event) or `cef`.
    pub format: SyslogFormat,
    /// `octet_counting` or `non_transparent`.
    pub framing: SyslogFraming,
    /// Facility of PRI: a keyword (`local0`) or 0–23.
    pub facility: Facility,
    /// Severity of PRI by the event's outcome.
    pub severity: SeverityConfig,
    /// APP-NAME: 1–48 printable US-ASCII characters.
    pub app_name: String,
    /// HOSTNAME; when empty, the `HOSTNAME` environment variable (a pod's
    /// name), else the kernel's host name.
    pub hostname: String,
    /// MSGID: `stage` (the event's stage), `verb`, `none` (`-`), or any
    /// other 1–32 printable US-ASCII characters, used as they are.
    pub msgid: String,
    /// STRUCTURED-DATA: SD-ID (`name@<enterprise number>`) to parameters,
    /// the same on every message; none when empty.
    pub structured_data: BTreeMap<String, BTreeMap<String, String>>,
    /// Whether MSG starts with a UTF-8 BOM (RFC 5424 MSG-UTF8). Off by
    /// default: receivers then take MSG as opaque octets, and the JSON
    /// reaches them without a byte that JSON parsers refuse.
    pub bom: bool,
    /// Events whose whole message (framing included) is longer are not sent
    /// but dead-lettered: receivers cut long messages (rsyslog at its
    /// `maxMessageSize`, 8 KiB by default). 0: no limit.
    pub max_message_bytes: usize,
    /// The CEF header with `format: cef`.
    pub cef: CefConfig,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        Self {
            format: SyslogFormat::Json,
            framing: SyslogFraming::OctetCounting,
            facility: Facility(16),
            severity: SeverityConfig::default(),
            app_name: "kube-apiserver-audit".to_owned(),
            hostname: String::new(),
            msgid: "stage".to_owned(),
            structured_data: BTreeMap::new(),
            bom: false,
            max_message_bytes: 0,
            cef: CefConfig::default(),
        }
    }
}

/// Whether `s` has `min..=max` printable US-ASCII characters (RFC 5424
/// PRINTUSASCII, `%d33-126`), none of `except`.
pub(crate) fn is_print_ascii(s: &str, max: usize, except: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| (33..=126).contains(&b) && !except.contains(&b))
}

impl SyslogConfig {
    /// Checks what types alone cannot: header fields in their RFC 5424
    /// alphabets and lengths, SD-IDs and PARAM-NAMEs (§6.3).
    ///
    /// # Errors
    ///
    /// `(key under prefix, message)`.
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: &str| Err((format!("{prefix}.{key}"), msg.to_owned()));
        if !is_print_ascii(&self.app_name, 48, &[]) {
            return bad("app_name", "must be 1 to 48 printable US-ASCII characters");
        }
        if !self.hostname.is_empty() && !is_print_ascii(&self.hostname, 255, &[]) {
            return bad(
                "hostname",
                "must be up to 255 printable US-ASCII characters",
            );
        }
        if !is_print_ascii(&self.msgid, 32, &[]) {
            return bad(
                "msgid",
                "must be stage, verb, none or 1 to 32 printable US-ASCII characters",
            );
        }
        const SD_NAME: &[u8] = b"= ]\"";
        for (id, params) in &self.structured_data {
            let key = format!("structured_data.{id}");
            if !is_print_ascii(id, 32, SD_NAME) {
                return bad(
                    &key,
                    "an SD-ID is 1 to 32 printable US-ASCII characters without '=', ']', '\"'",
                );
            }
            if !id.contains('@') && !matches!(id.as_str(), "timeQuality" | "origin" | "meta") {
                return bad(
                    &key,
                    "an SD-ID not registered with IANA must be name@<private enterprise number>",
                );
            }
            for name in params.keys() {
                if !is_print_ascii(name, 32, SD_NAME) {
                    return bad(
                        &format!("{key}.{name}"),
                        "a PARAM-NAME is 1 to 32 printable US-ASCII characters without '=', ']', '\"'",
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::config::{SinkConfig, load};

    fn syslog_of(yaml: &str) -> Result<SyslogConfig, String> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let text = format!(
            "sinks:\n  - type: tcp\n    endpoint: \"h:1\"\n    encoding: syslog\n    syslog:\n{yaml}"
        );
        f.write_all(text.as_bytes()).unwrap();
        match load(Some(f.path()), Vec::new())
            .map_err(|e| e.to_string())?
            .sinks
            .remove(0)
        {
            SinkConfig::Tcp(t) => Ok(t.syslog),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keywords_numbers_and_case_of_names_are_kept() {
        let s = syslog_of(
            "      facility: 13\n      severity: {default: NOTICE, failed: err}\n      structured_data:\n        exampleSDID@32473: {eventID: \"1011\"}\n",
        )
        .unwrap();
        assert_eq!(s.facility, Facility(13));
        assert_eq!(s.severity.default, Severity(5));
        assert_eq!(s.severity.failed, Severity(3));
        assert_eq!(
            s.structured_data["exampleSDID@32473"]["eventID"], "1011",
            "SD-IDs and PARAM-NAMEs are case-sensitive (RFC 5424 §6.3.2)"
        );
        assert_eq!(
            syslog_of("      facility: local7\n").unwrap().facility,
            Facility(23)
        );
    }

    #[test]
    fn bad_values_are_named() {
        for (yaml, key) in [
            ("      facility: 24\n", "syslog.facility"),
            ("      severity: {failed: loud}\n", "syslog.severity.failed"),
            ("      app_name: \"a b\"\n", "syslog.app_name"),
            ("      msgid: \"\"\n", "syslog.msgid"),
            (
                "      structured_data: {\"a b@1\": {}}\n",
                "syslog.structured_data",
            ),
            (
                "      structured_data: {\"a@1\": {\"x=y\": v}}\n",
                "syslog.structured_data.a@1.x=y",
            ),
        ] {
            let msg = syslog_of(yaml).unwrap_err();
            assert!(msg.contains(&format!("sinks[0].{key}")), "{yaml}: {msg}");
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"sinks:\n  - type: tcp\n    endpoint: \"h:1\"\n    syslog: {app_name: x}\n")
            .unwrap();
        let msg = load(Some(f.path()), Vec::new()).unwrap_err().to_string();
        assert!(
            msg.contains("sinks[0].syslog") && msg.contains("encoding: syslog"),
            "{msg}"
        );
    }
}
