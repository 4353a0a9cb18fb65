//! Where one event goes in Kafka: its topic (fixed, or rendered from a
//! template such as `audit-{level}`) and its message key, both read from the
//! event's routing fields without parsing it again.

use crate::config::KafkaKey;
use crate::decode::{Event, Level, Stage};

/// Kafka's longest topic name (`Topic.MAX_NAME_LENGTH`).
const MAX_TOPIC_CHARS: usize = 249;

/// An event field a topic template or a key can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Level,
    Stage,
    Verb,
    Namespace,
    Resource,
    User,
    AuditId,
}

impl Field {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "level" => Self::Level,
            "stage" => Self::Stage,
            "verb" => Self::Verb,
            "namespace" => Self::Namespace,
            "resource" => Self::Resource,
            "user" => Self::User,
            _ => return None,
        })
    }

    /// The field's value in `event` (decoded from `body`), as its JSON
    /// string content with escapes as received; `None` when absent.
    fn value<'a>(self, event: &Event, body: &'a [u8]) -> Option<&'a [u8]> {
        let m = &event.meta;
        let span = match self {
            Self::Level => {
                return m.level.and_then(|l| match l {
                    Level::Metadata => Some(&b"Metadata"[..]),
                    Level::Request => Some(b"Request"),
                    Level::RequestResponse => Some(b"RequestResponse"),
                    Level::Other => None,
                });
            }
            Self::Stage => {
                return m.stage.and_then(|s| match s {
                    Stage::RequestReceived => Some(&b"RequestReceived"[..]),
                    Stage::ResponseStarted => Some(b"ResponseStarted"),
                    Stage::ResponseComplete => Some(b"ResponseComplete"),
                    Stage::Panic => Some(b"Panic"),
                    Stage::Other => None,
                });
            }
            Self::Verb => m.verb,
            Self::Namespace => m.namespace,
            Self::Resource => m.resource,
            Self::User => m.username,
            Self::AuditId => m.audit_id,
        };
        span.map(|s| s.get(body)).filter(|v| !v.is_empty())
    }
}

/// One piece of a topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
}

/// A sink's topic: fixed, or a template rendered per event.
#[derive(Debug, Clone)]
pub(crate) struct Topic {
    parts: Vec<Part>,
    missing: String,
}

impl Topic {
    /// Parses `template` (checked by the config's validation: unknown
    /// fields are kept as text here); `missing` stands in for absent fields.
    pub(crate) fn new(template: &str, missing: &str) -> Self {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').map(|c| open + c);
            let field = close.and_then(|c| Field::parse(&rest[open + 1..c]));
            match (close, field) {
                (Some(close), Some(f)) => {
                    if open > 0 {
                        parts.push(Part::Text(rest[..open].to_owned()));
                    }
                    parts.push(Part::Field(f));
                    rest = &rest[close + 1..];
                }
                _ => {
                    parts.push(Part::Text(rest[..=open].to_owned()));
                    rest = &rest[open + 1..];
                }
            }
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Self {
            parts,
            missing: missing.to_owned(),
        }
    }

    /// The topic when it is the same for every event.
    pub(crate) fn fixed(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Text(t)] => Some(t),
            [] => Some(""),
            _ => None,
        }
    }

    /// Writes the topic of `event` into `out` (cleared first). A byte a
    /// topic name cannot hold becomes `_`; the name is cut at 249 bytes.
    pub(crate) fn render(&self, event: &Event, body: &[u8], out: &mut String) {
        out.clear();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => match f.value(event, body) {
                    Some(v) => out.extend(v.iter().map(|&b| match b {
                        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => b as char,
                        _ => '_',
                    })),
                    None => out.push_str(&self.missing),
                },
            }
        }
        out.truncate(MAX_TOPIC_CHARS);
        if out == "." || out == ".." {
            out.clone_from(&self.missing);
        }
    }
}

/// Which bytes of an event are its message key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key(Option<Field>);

impl Key {
    /// The key `cfg` names.
    pub(crate) fn new(cfg: KafkaKey) -> Self {
        Self(match cfg {
            KafkaKey::None => None,
            KafkaKey::AuditId => Some(Field::AuditId),
            KafkaKey::Level => Some(Field::Level),
            KafkaKey::Stage => Some(Field::Stage),
            KafkaKey::Verb => Some(Field::Verb),
            KafkaKey::Namespace => Some(Field::Namespace),
            KafkaKey::Resource => Some(Field::Resource),
            KafkaKey::User => Some(Field::User),
        })
    }

    /// The key of `event` (decoded from `body`): the field's JSON string
    /// content as received; `None` for no key or an absent field (the
    /// message then has no key).
    pub(crate) fn of<'a>(&self, event: &Event, body: &'a [u8]) -> Option<&'a [u8]> {
        self.0.and_then(|f| f.value(event, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(json: &str) -> (Event, Bytes) {
        let body = Bytes::from(format!(r#"{{"items":[{json}]}}"#));
        let mut events = crate::decode::decode(&body, &Default::default())
            .expect("decodes")
            .events;
        (events.remove(0), body)
    }

    #[test]
    fn a_template_takes_the_events_fields_and_cleans_them() {
        let (e, body) = event(
            r#"{"level":"RequestResponse","auditID":"a-1","stage":"ResponseComplete","objectRef":{"namespace":"kube-system","resource":"pods"},"user":{"username":"system:admin"}}"#,
        );
        let mut out = String::new();
        let t = Topic::new("audit-{level}.{namespace}", "none");
        assert_eq!(t.fixed(), None);
        t.render(&e, &body, &mut out);
        assert_eq!(out, "audit-RequestResponse.kube-system");
        Topic::new("u-{user}-{verb}", "none").render(&e, &body, &mut out);
        assert_eq!(out, "u-system_admin-none");
        assert_eq!(Topic::new("kube-audit", "x").fixed(), Some("kube-audit"));
        assert_eq!(Key::new(KafkaKey::AuditId).of(&e, &body), Some(&b"a-1"[..]));
        assert_eq!(
            Key::new(KafkaKey::Resource).of(&e, &body),
            Some(&b"pods"[..])
        );
        assert_eq!(Key::new(KafkaKey::Verb).of(&e, &body), None);
        assert_eq!(Key::new(KafkaKey::None).of(&e, &body), None);
    }

    #[test]
    fn a_rendered_topic_is_never_over_kafkas_limit() {
        let long = "n".repeat(400);
        let (e, body) = event(&format!(
            r#"{{"level":"Metadata","objectRef":{{"namespace":"{long}"}}}}"#
        ));
        let mut out = String::new();
        Topic::new("audit-{namespace}", "none").render(&e, &body, &mut out);
        assert_eq!(out.len(), 249);
        assert!(out.starts_with("audit-nnn"));
    }
}
