//! The settings of the HTTP sink's destination encodings:
//! `encoding: elasticsearch` and `encoding: splunk_hec`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// `elasticsearch:` of an HTTP sink with `encoding: elasticsearch`: the
/// Elasticsearch/OpenSearch `_bulk` API
/// (<https://www.elastic.co/docs/api/doc/elasticsearch/operation/operation-bulk>).
/// Each endpoint is the cluster's base URL; requests go to `<endpoint>/_bulk`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ElasticsearchConfig {
    /// The index or data stream each event is created in. `%Y`, `%m`, `%d`
    /// and `%H` are replaced by the UTC year, month, day and hour of the
    /// event's `stageTimestamp` (the time now when it has none), `%%` by `%`.
    pub index: String,
    /// User for HTTP basic authentication; needs `password_file`.
    pub username: Option<String>,
    /// File holding the basic-authentication password (trailing newline
    /// removed); re-read when it changes.
    pub password_file: Option<PathBuf>,
    /// File holding an API key in its encoded form (what the create API key
    /// API returns as `encoded`), sent as `Authorization: ApiKey <key>`;
    /// re-read when it changes.
    pub api_key_file: Option<PathBuf>,
}

impl Default for ElasticsearchConfig {
    fn default() -> Self {
        Self {
            index: "kube-audit-%Y.%m.%d".to_owned(),
            username: None,
            password_file: None,
            api_key_file: None,
        }
    }
}

/// `splunk_hec:` of an HTTP sink with `encoding: splunk_hec`: Splunk's HTTP
/// Event Collector
/// (<https://docs.splunk.com/Documentation/Splunk/latest/Data/HECRESTendpoints>).
/// Each endpoint is the collector's base URL (`https://splunk:8088`);
/// events go to `<endpoint>/services/collector/event`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SplunkHecConfig {
    /// File holding the HEC token, sent as `Authorization: Splunk <token>`;
    /// re-read when it changes. Required.
    pub token_file: Option<PathBuf>,
    /// The events' `host`; Splunk's default for the token when absent.
    pub host: Option<String>,
    /// The events' `source`; Splunk's default when absent.
    pub source: Option<String>,
    /// The events' `sourcetype`.
    pub sourcetype: String,
    /// The index; the token's default index when absent.
    pub index: Option<String>,
    /// Indexed fields added to every event (a cluster label, say).
    pub fields: BTreeMap<String, String>,
    /// Indexer acknowledgement: an event counts as sent only once
    /// `/services/collector/ack` confirms it. The token must have it enabled.
    pub ack: bool,
    /// Seconds to wait for an acknowledgement before the events are sent again.
    pub ack_timeout_secs: u64,
    /// Milliseconds between acknowledgement polls.
    pub ack_interval_ms: u64,
    /// The channel (a GUID) sent as `X-Splunk-Request-Channel` with `ack`;
    /// a new random one at each start when absent.
    pub channel: Option<String>,
}

impl Default for SplunkHecConfig {
    fn default() -> Self {
        Self {
            token_file: None,
            host: None,
            source: None,
            sourcetype: "kube:apiserver:audit".to_owned(),
            index: None,
            fields: BTreeMap::new(),
            ack: false,
            ack_timeout_secs: 60,
            ack_interval_ms: 1000,
            channel: None,
        }
    }
}

fn refuse(key: String, msg: &str) -> Result<(), (String, String)> {
    Err((key, msg.to_owned()))
}

impl ElasticsearchConfig {
    /// Checks the index pattern and that at most one way to authenticate is given.
    ///
    /// # Errors
    ///
    /// `(key under prefix, message)`.
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        let mut rest = self.index.as_str();
        // The name with its date patterns taken out.
        let mut index = String::new();
        while let Some(at) = rest.find('%') {
            index.push_str(&rest[..at]);
            match rest.as_bytes().get(at + 1) {
                Some(b'Y' | b'm' | b'd' | b'H' | b'%') => {
                    index.push('0');
                    rest = &rest[at + 2..];
                }
                _ => {
                    return refuse(
                        format!("{prefix}.index"),
                        "only %Y, %m, %d, %H and %% may follow %",
                    );
                }
            }
        }
        let bad = |c: char| c.is_ascii_uppercase() || "\"\\/*?<>| ,#:".contains(c);
        if index.is_empty() || index.starts_with(['-', '_', '+']) || index.chars().any(bad) {
            return refuse(
                format!("{prefix}.index"),
                "must be a lowercase index or data stream name (no spaces or \"\\/*?<>|,#:)",
            );
        }
        match (&self.username, &self.password_file, &self.api_key_file) {
            (Some(_), None, _) => refuse(
                format!("{prefix}.password_file"),
                "username needs password_file",
            ),
            (None, Some(_), _) => {
                refuse(format!("{prefix}.username"), "password_file needs username")
            }
            (Some(_), Some(_), Some(_)) => refuse(
                format!("{prefix}.api_key_file"),
                "give either api_key_file or username and password_file",
            ),
            _ => Ok(()),
        }
    }
}

impl SplunkHecConfig {
    /// Checks that the token file is given and the ack timings are not zero.
    ///
    /// # Errors
    ///
    /// `(key under prefix, message)`.
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        if self.token_file.is_none() {
            return refuse(
                format!("{prefix}.token_file"),
                "the HEC token file is required",
            );
        }
        if self.ack_timeout_secs == 0 || self.ack_interval_ms == 0 {
            return refuse(
                format!("{prefix}.ack_timeout_secs"),
                "ack_timeout_secs and ack_interval_ms must be greater than 0",
            );
        }
        if self
            .channel
            .as_ref()
            .is_some_and(|c| http::HeaderValue::from_str(c).is_err() || c.is_empty())
        {
            return refuse(format!("{prefix}.channel"), "must be a GUID");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn es_key(cfg: ElasticsearchConfig) -> Option<String> {
        cfg.validate("sinks[0].elasticsearch").err().map(|(k, _)| k)
    }

    #[test]
    fn bad_settings_are_named_by_their_key() {
        let es = ElasticsearchConfig::default;
        assert_eq!(es_key(es()), None);
        for index in ["Audit", "audit %Y", "audit-%y", "_audit", ""] {
            let cfg = ElasticsearchConfig {
                index: index.into(),
                ..es()
            };
            assert_eq!(
                es_key(cfg).as_deref(),
                Some("sinks[0].elasticsearch.index"),
                "{index}"
            );
        }
        let half = ElasticsearchConfig {
            username: Some("u".into()),
            ..es()
        };
        assert_eq!(
            es_key(half).as_deref(),
            Some("sinks[0].elasticsearch.password_file")
        );
        let both = ElasticsearchConfig {
            username: Some("u".into()),
            password_file: Some("p".into()),
            api_key_file: Some("k".into()),
            ..es()
        };
        assert_eq!(
            es_key(both).as_deref(),
            Some("sinks[0].elasticsearch.api_key_file")
        );
        let hec = SplunkHecConfig::default();
        assert_eq!(
            hec.validate("s").unwrap_err().0,
            "s.token_file",
            "the token is required"
        );
        let hec = SplunkHecConfig {
            token_file: Some("t".into()),
            ack_timeout_secs: 0,
            ..hec
        };
        assert_eq!(hec.validate("s").unwrap_err().0, "s.ack_timeout_secs");
    }
}
