//! The Kubernetes audit `Policy` (`audit.k8s.io/v1`), read from the file
//! kube-apiserver takes with `--audit-policy-file`, and its evaluation against
//! one event.
//!
//! Semantics follow the API reference
//! (<https://kubernetes.io/docs/reference/config-api/apiserver-audit.v1/#audit-k8s-io-v1-Policy>)
//! and the "Auditing" task page: rules are checked in order and the first
//! match decides the level; no match means `None`. In a rule an empty list
//! matches everything; `resources` and `namespaces` match resource requests
//! only (`namespaces: [""]` is cluster-scoped), `nonResourceURLs` non-resource
//! requests only, with `*` alone or as a suffix. `omitStages` of the policy and
//! of the rule are joined; `omitManagedFields` of the rule wins when set.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use std::borrow::Cow;

use super::json;
#[cfg(test)]
use super::view::View;
use super::view::{Field, ObjectRef};
use crate::decode::{EventMeta, Span, Stage};

/// An audit level, in increasing order of what it records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AuditLevel {
    /// No event.
    None,
    /// User, verb, object reference, status; no bodies.
    Metadata,
    /// Also `requestObject`.
    Request,
    /// Also `responseObject`.
    RequestResponse,
}

impl AuditLevel {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "None" => Self::None,
            "Metadata" => Self::Metadata,
            "Request" => Self::Request,
            "RequestResponse" => Self::RequestResponse,
            _ => return None,
        })
    }

    /// The name used in events and policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Metadata => "Metadata",
            Self::Request => "Request",
            Self::RequestResponse => "RequestResponse",
        }
    }
}

const STAGES: [&str; 4] = [
    "RequestReceived",
    "ResponseStarted",
    "ResponseComplete",
    "Panic",
];

fn stage_bit(s: &str) -> Option<u8> {
    STAGES.iter().position(|x| *x == s).map(|i| 1 << i)
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("policy file {}: {key}: {message}", path.display())]
pub struct PolicyError {
    /// The file.
    pub path: PathBuf,
    /// Where in it: `rules[3].verbs`, `omitStages[0]`, or `.` for the file.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyFile {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<serde_json::Value>,
    #[serde(default)]
    rules: Vec<RuleFile>,
    #[serde(default)]
    omit_stages: Vec<String>,
    #[serde(default)]
    omit_managed_fields: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleFile {
    level: String,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<String>,
    #[serde(default)]
    omit_managed_fields: Option<bool>,
}

/// `GroupResources`: resources of one API group (`""` is the core group).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

/// A `GroupResources` ready to match: each of its `resources` read once.
#[derive(Debug)]
struct GroupRule {
    group: String,
    resources: Vec<ResourcePattern>,
    resource_names: Vec<String>,
}

/// One entry of `resources`.
#[derive(Debug)]
enum ResourcePattern {
    /// `*`: every resource and subresource.
    All,
    /// `pods` (no subresource) or `pods/log`.
    Exact {
        resource: String,
        subresource: String,
    },
    /// `*/status`: that subresource of any resource.
    AnyResource { subresource: String },
    /// `pods/*`: the resource and all its subresources.
    AllOf { resource: String },
}

impl GroupRule {
    fn new(g: GroupResources) -> Self {
        let pattern = |res: String| {
            if res == "*" {
                ResourcePattern::All
            } else if let Some(sub) = res.strip_prefix("*/") {
                ResourcePattern::AnyResource {
                    subresource: sub.to_owned(),
                }
            } else if let Some(r) = res.strip_suffix("/*") {
                ResourcePattern::AllOf {
                    resource: r.to_owned(),
                }
            } else {
                let (r, sub) = res.split_once('/').unwrap_or((&res, ""));
                ResourcePattern::Exact {
                    resource: r.to_owned(),
                    subresource: sub.to_owned(),
                }
            }
        };
        Self {
            group: g.group,
            resources: g.resources.into_iter().map(pattern).collect(),
            resource_names: g.resource_names,
        }
    }
}

impl ResourcePattern {
    #[inline]
    fn matches(&self, o: &ObjectRef<'_>) -> bool {
        match self {
            Self::All => true,
            Self::Exact {
                resource,
                subresource,
            } => {
                o.resource.is(resource.as_bytes())
                    && match subresource.is_empty() {
                        true => o.subresource.is_empty(),
                        false => o.subresource.is(subresource.as_bytes()),
                    }
            }
            Self::AnyResource { subresource } => {
                !o.subresource.is_empty() && o.subresource.is(subresource.as_bytes())
            }
            Self::AllOf { resource } => o.resource.is(resource.as_bytes()),
        }
    }
}

#[derive(Debug)]
struct Rule {
    level: AuditLevel,
    users: StrSet,
    user_groups: StrSet,
    verbs: StrSet,
    resources: Vec<GroupRule>,
    namespaces: StrSet,
    non_resource_urls: Vec<String>,
    omit_stages: u8,
    omit_managed_fields: bool,
}

/// A loaded policy.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    omit_stages: u8,
    omit_managed_fields: bool,
}

/// What the policy says of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The level the event may keep; [`AuditLevel::None`] drops it.
    pub level: AuditLevel,
    /// The index of the rule that matched; `None` when none did.
    pub rule: Option<usize>,
    /// Whether the event's stage is omitted (the event is dropped).
    pub omit_stage: bool,
    /// Whether `metadata.managedFields` is removed from the objects.
    pub omit_managed_fields: bool,
}

impl Policy {
    /// Reads and checks the policy file at `path` (YAML or JSON).
    ///
    /// # Errors
    ///
    /// [`PolicyError`] naming the file, and the rule index and key at fault.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let fail = |key: &str, message: String| PolicyError {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(".", e.to_string()))?;
        Self::parse(&text).map_err(|(key, message)| fail(&key, message))
    }

    /// Parses and checks a policy document; errors are `(key, message)`.
    pub(crate) fn parse(text: &str) -> Result<Self, (String, String)> {
        let built = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Yaml))
            .build()
            .map_err(|e| (".".to_owned(), e.to_string()))?;
        let file: PolicyFile = serde_path_to_error::deserialize(built).map_err(|e| {
            let key = e.path().to_string();
            let mut message = e.into_inner().to_string();
            // The config crate appends where it was; the key says it already.
            if let Some(at) = message
                .rfind(" for key `")
                .filter(|_| message.ends_with('`'))
            {
                message.truncate(at);
            }
            (key, message)
        })?;
        Self::check(file)
    }

    fn check(file: PolicyFile) -> Result<Self, (String, String)> {
        let err = |key: String, msg: &str| Err((key, msg.to_owned()));
        if file
            .api_version
            .as_ref()
            .is_some_and(|v| v != "audit.k8s.io/v1")
        {
            return err("apiVersion".into(), "must be audit.k8s.io/v1");
        }
        if file.kind.as_ref().is_some_and(|k| k != "Policy") {
            return err("kind".into(), "must be Policy");
        }
        let omit_stages = stages(&file.omit_stages, "omitStages")?;
        let mut rules = Vec::with_capacity(file.rules.len());
        for (i, r) in file.rules.into_iter().enumerate() {
            let key = |k: &str| format!("rules[{i}].{k}");
            let Some(level) = AuditLevel::parse(&r.level) else {
                return err(
                    key("level"),
                    "must be None, Metadata, Request or RequestResponse",
                );
            };
            if !r.non_resource_urls.is_empty()
                && (!r.resources.is_empty() || !r.namespaces.is_empty())
            {
                return err(
                    key("nonResourceURLs"),
                    "rules cannot apply to both regular resources and non-resource URLs",
                );
            }
            for (j, u) in r.non_resource_urls.iter().enumerate() {
                let bad =
                    u != "*" && (!u.starts_with('/') || u.trim_end_matches('*').contains('*'));
                if bad {
                    return err(
                        key(&format!("nonResourceURLs[{j}]")),
                        "must be `*` or start with `/`, with `*` only at the end",
                    );
                }
            }
            for (j, g) in r.resources.iter().enumerate() {
                if g.group.contains('/') {
                    return err(
                        key(&format!("resources[{j}].group")),
                        "must not contain `/`",
                    );
                }
                if !g.resource_names.is_empty() && g.resources.is_empty() {
                    return err(
                        key(&format!("resources[{j}].resourceNames")),
                        "using resourceNames requires at least one resource",
                    );
                }
            }
            let own = stages(&r.omit_stages, &key("omitStages"))?;
            rules.push(Rule {
                level,
                users: StrSet::new(r.users),
                user_groups: StrSet::new(r.user_groups),
                verbs: StrSet::new(r.verbs),
                resources: r.resources.into_iter().map(GroupRule::new).collect(),
                namespaces: StrSet::new(r.namespaces),
                non_resource_urls: r.non_resource_urls,
                omit_stages: omit_stages | own,
                omit_managed_fields: r.omit_managed_fields.unwrap_or(file.omit_managed_fields),
            });
        }
        Ok(Self {
            rules,
            omit_stages,
            omit_managed_fields: file.omit_managed_fields,
        })
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the policy has no rules (it then drops every event).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Evaluates the policy for the event `v`.
    #[cfg(test)]
    pub(crate) fn decide(&self, v: &View<'_>) -> Decision {
        let stage = v.stage();
        let bit = stage.as_deref().and_then(stage_bit).unwrap_or(0);
        self.decide_attrs(&Attrs::of(v), bit)
    }

    /// Evaluates the policy for an event of `attrs` at the stage `stage`.
    pub(crate) fn decide_at(&self, attrs: &Attrs<'_>, stage: Option<Stage>) -> Decision {
        let bit = match stage {
            Some(Stage::RequestReceived) => 1,
            Some(Stage::ResponseStarted) => 2,
            Some(Stage::ResponseComplete) => 4,
            Some(Stage::Panic) => 8,
            _ => 0,
        };
        self.decide_attrs(attrs, bit)
    }

    fn decide_attrs(&self, attrs: &Attrs<'_>, stage_bit: u8) -> Decision {
        for (i, r) in self.rules.iter().enumerate() {
            if r.matches(attrs) {
                return Decision {
                    level: r.level,
                    rule: Some(i),
                    omit_stage: r.omit_stages & stage_bit != 0,
                    omit_managed_fields: r.omit_managed_fields,
                };
            }
        }
        Decision {
            level: AuditLevel::None,
            rule: None,
            omit_stage: self.omit_stages & stage_bit != 0,
            omit_managed_fields: self.omit_managed_fields,
        }
    }
}

fn stages(list: &[String], key: &str) -> Result<u8, (String, String)> {
    list.iter().enumerate().try_fold(0, |acc, (i, s)| {
        stage_bit(s).map(|b| acc | b).ok_or_else(|| {
            (
                format!("{key}[{i}]"),
                format!("unknown stage {s:?}, expected one of {}", STAGES.join(", ")),
            )
        })
    })
}

/// The request attributes of one event, as the API server's policy checker
/// sees them. Compared as bytes: the rules' strings are UTF-8, so bytes that
/// are not never match any of them.
pub(crate) struct Attrs<'a> {
    user: Option<Field<'a>>,
    groups: Groups<'a>,
    verb: Field<'a>,
    object: Option<ObjectRef<'a>>,
    /// `requestURI`, whose path is read when a rule asks.
    uri: Uri<'a>,
}

/// `requestURI`: its path, or the text to read it from.
enum Uri<'a> {
    #[cfg(test)]
    Path(Cow<'a, str>),
    Span(&'a [u8], Option<Span>),
}

impl Uri<'_> {
    fn path(&self) -> Cow<'_, [u8]> {
        let uri = match self {
            #[cfg(test)]
            Self::Path(p) => return Cow::Borrowed(p.as_bytes()),
            Self::Span(body, span) => span.and_then(|s| span_text(body, s)),
        };
        let before_query = |s: &[u8]| s.iter().position(|&c| c == b'?').unwrap_or(s.len());
        match uri {
            Some(Cow::Borrowed(s)) => Cow::Borrowed(&s[..before_query(s)]),
            Some(Cow::Owned(mut s)) => {
                s.truncate(before_query(&s));
                Cow::Owned(s)
            }
            None => Cow::Borrowed(&b""[..]),
        }
    }
}

/// `user.groups`: the array's text, read once when a rule first asks.
struct Groups<'a> {
    text: &'a [u8],
    read: std::cell::OnceCell<smallvec::SmallVec<[Cow<'a, [u8]>; 4]>>,
}

impl<'a> Groups<'a> {
    fn new(text: &'a [u8]) -> Self {
        Self {
            text,
            read: std::cell::OnceCell::new(),
        }
    }

    fn any_in(&self, list: &StrSet) -> bool {
        self.read
            .get_or_init(|| {
                let mut all = smallvec::SmallVec::new();
                json::for_each_string(self.text, |g| {
                    all.push(g);
                    true
                });
                all
            })
            .iter()
            .any(|g| list.has_exact(g))
    }
}

impl<'a> Attrs<'a> {
    /// The attributes read from the event's bytes.
    #[cfg(test)]
    pub(crate) fn of(v: &View<'a>) -> Self {
        Self {
            user: v.username().map(Field::new),
            groups: Groups::new(v.groups_text()),
            verb: Field::new(v.verb().unwrap_or_default()),
            object: v.object_ref(),
            uri: Uri::Path(v.path()),
        }
    }

    /// The attributes read from the routing fields the decoder found, spans
    /// of `body`.
    pub(crate) fn of_meta(m: &EventMeta, body: &'a [u8]) -> Self {
        let field = |s: Option<Span>| Field::new(s.map_or(&[][..], |s| s.get(body)));
        let object = m.has_object_ref.then(|| ObjectRef {
            api_group: field(m.api_group),
            resource: field(m.resource),
            subresource: field(m.subresource),
            namespace: field(m.namespace),
            name: field(m.name),
        });
        Self {
            user: m.username.map(|s| Field::new(s.get(body))),
            groups: Groups::new(m.groups.map_or(&[][..], |g| g.get(body))),
            verb: field(m.verb),
            object,
            uri: Uri::Span(body, m.request_uri),
        }
    }

    /// `objectRef`, for a resource request.
    pub(crate) fn object(&self) -> Option<&ObjectRef<'a>> {
        self.object.as_ref()
    }
}

/// The content of the JSON string whose content is `s` in `body`, escapes
/// resolved (borrowed when it has none).
fn span_text(body: &[u8], s: Span) -> Option<Cow<'_, [u8]>> {
    let start = s.start as usize;
    let inner = body.get(start..start + s.len as usize)?;
    if !inner.contains(&b'\\') {
        return Some(Cow::Borrowed(inner));
    }
    json::str_at(body, start.checked_sub(1)?..start + s.len as usize + 1)
        .map(|s| Cow::Owned(s.into_owned().into_bytes()))
}

/// Whether `list` holds the string `f`.
fn has(list: &[String], f: &Field<'_>) -> bool {
    list.iter().any(|x| f.is(x.as_bytes()))
}

/// The strings of one rule key (`users`, `verbs`, ...), with what lets most
/// events be turned away without reading them: a bit per length (modulo 64)
/// and the shortest length. A field as long as none of them can still be
/// equal to a shorter one only if it holds an escape.
#[derive(Debug)]
struct StrSet {
    items: Vec<String>,
    lengths: u64,
    shortest: usize,
}

impl StrSet {
    fn new(items: Vec<String>) -> Self {
        Self {
            lengths: items.iter().fold(0, |m, s| m | length_bit(s.len())),
            shortest: items.iter().map(String::len).min().unwrap_or(0),
            items,
        }
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether it holds the string `f`.
    #[inline]
    fn has(&self, f: &Field<'_>) -> bool {
        let len = f.raw_len();
        if self.lengths & length_bit(len) == 0 && (len <= self.shortest || !f.escaped()) {
            return false;
        }
        has(&self.items, f)
    }

    /// Whether it holds `s`, a string already unescaped.
    #[inline]
    fn has_exact(&self, s: &[u8]) -> bool {
        self.lengths & length_bit(s.len()) != 0 && self.items.iter().any(|x| same(x.as_bytes(), s))
    }
}

#[inline]
fn length_bit(len: usize) -> u64 {
    1 << (len & 63)
}

/// `a == b`, testing lengths and the end bytes inline first: most candidates
/// differ there, and a call to compare whole short strings costs more than
/// the test.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && match (a.first(), a.last()) {
            (Some(f), Some(l)) => Some(f) == b.first() && Some(l) == b.last() && a == b,
            _ => true,
        }
}

impl Rule {
    fn matches(&self, a: &Attrs<'_>) -> bool {
        if !self.users.is_empty() && !a.user.as_ref().is_some_and(|u| self.users.has(u)) {
            return false;
        }
        if !self.user_groups.is_empty() && !a.groups.any_in(&self.user_groups) {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.has(&a.verb) {
            return false;
        }
        if !self.namespaces.is_empty() || !self.resources.is_empty() {
            return self.matches_resource(a);
        }
        if !self.non_resource_urls.is_empty() {
            if a.object.is_some() {
                return false;
            }
            let path = a.uri.path();
            return self
                .non_resource_urls
                .iter()
                .any(|spec| path_matches(&path, spec));
        }
        true
    }

    fn matches_resource(&self, a: &Attrs<'_>) -> bool {
        let Some(o) = &a.object else {
            return false;
        };
        if !self.namespaces.is_empty() && !self.namespaces.has(&o.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        self.resources
            .iter()
            .filter(|g| o.api_group.is(g.group.as_bytes()))
            .any(|g| {
                if g.resources.is_empty() {
                    return true;
                }
                if !g.resource_names.is_empty() && !has(&g.resource_names, &o.name) {
                    return false;
                }
                g.resources.iter().any(|p| p.matches(o))
            })
    }
}

/// `nonResourceURLs` matching: `*` matches all, else exact, else a spec
/// ending in `*` matches paths starting with what precedes it.
fn path_matches(path: &[u8], spec: &str) -> bool {
    let spec = spec.as_bytes();
    spec == b"*"
        || spec == path
        || spec.strip_suffix(b"*").is_some_and(|p| {
            let p = &p[..p.iter().rposition(|&c| c != b'*').map_or(0, |i| i + 1)];
            path.starts_with(p)
        })
}

#[cfg(test)]
mod tests;
