//! One event's top-level members, read from its bytes (and, for tests, the
//! request attributes an audit policy matches on, read the slow way).
//!
//! Field names are those of the `audit.k8s.io/v1` `Event`
//! (<https://kubernetes.io/docs/reference/config-api/apiserver-audit.v1/#audit-k8s-io-v1-Event>).

#[cfg(test)]
use std::borrow::Cow;
use std::ops::Range;

use super::json::{self, Member};

/// The top-level members of one event, with the ones processing looks at
/// picked out.
pub(crate) struct View<'a> {
    /// The event's bytes.
    pub(crate) raw: &'a [u8],
    /// Its members in order.
    pub(crate) top: Vec<Member>,
    level: Option<usize>,
    stage: Option<usize>,
    audit_id: Option<usize>,
    verb: Option<usize>,
    user: Option<usize>,
    object_ref: Option<usize>,
    request_uri: Option<usize>,
    /// Index of `requestObject` in `top`.
    pub(crate) request_object: Option<usize>,
    /// Index of `responseObject` in `top`.
    pub(crate) response_object: Option<usize>,
    /// Index of `annotations` in `top`.
    pub(crate) annotations: Option<usize>,
}

/// `Event.objectRef`, the fields a policy rule matches (absent fields are
/// empty, as the API server's request attributes are).
#[derive(Debug, Default)]
pub(crate) struct ObjectRef<'a> {
    pub(crate) api_group: Field<'a>,
    pub(crate) resource: Field<'a>,
    pub(crate) subresource: Field<'a>,
    pub(crate) namespace: Field<'a>,
    pub(crate) name: Field<'a>,
}

/// A JSON string's content as it lies in the event (escapes as written),
/// compared with plain text without unescaping it unless it must be.
#[derive(Debug, Default)]
pub(crate) struct Field<'a> {
    raw: &'a [u8],
    /// Whether `raw` holds a backslash, once looked for.
    escaped: std::cell::Cell<Option<bool>>,
}

impl<'a> Field<'a> {
    /// The field whose content, between its quotes, is `raw`.
    pub(crate) fn new(raw: &'a [u8]) -> Self {
        Self {
            raw,
            escaped: std::cell::Cell::new(None),
        }
    }

    /// Whether the string is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Whether the string is `s`. An escape always stands for fewer bytes
    /// than it takes, so a content as long as `s` or shorter is equal only
    /// when its bytes are (and `s` has no backslash, which the content would
    /// have to escape), and only a longer one with escapes is unescaped.
    #[inline(always)]
    pub(crate) fn is(&self, s: &[u8]) -> bool {
        let raw = self.raw;
        if raw.len() == s.len() {
            // The end bytes first: most candidates differ there, and a call
            // to compare whole short strings costs more than the test.
            return match (raw.first(), raw.last()) {
                (Some(f), Some(l)) => {
                    Some(f) == s.first() && Some(l) == s.last() && raw == s && !s.contains(&b'\\')
                }
                _ => true,
            };
        }
        raw.len() > s.len() && self.escaped() && self.unescaped().as_deref() == Some(s)
    }

    /// Length of the content as written, escapes included.
    pub(crate) fn raw_len(&self) -> usize {
        self.raw.len()
    }

    /// Whether the content holds an escape (looked for once).
    pub(crate) fn escaped(&self) -> bool {
        match self.escaped.get() {
            Some(e) => e,
            None => {
                let e = memchr::memchr(b'\\', self.raw).is_some();
                self.escaped.set(Some(e));
                e
            }
        }
    }

    fn unescaped(&self) -> Option<Vec<u8>> {
        let mut quoted = Vec::with_capacity(self.raw.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(self.raw);
        quoted.push(b'"');
        serde_json::from_slice::<String>(&quoted)
            .ok()
            .map(String::into_bytes)
    }
}

impl<'a> View<'a> {
    /// Reads the top level of `raw`; `None` when it is not an object.
    pub(crate) fn new(raw: &'a [u8]) -> Option<Self> {
        if raw.first() != Some(&b'{') {
            return None;
        }
        let top: Vec<Member> = json::members(raw, 0..raw.len()).collect();
        let mut v = Self {
            raw,
            top,
            level: None,
            stage: None,
            audit_id: None,
            verb: None,
            user: None,
            object_ref: None,
            request_uri: None,
            request_object: None,
            response_object: None,
            annotations: None,
        };
        for (i, m) in v.top.iter().enumerate() {
            let slot = match raw.get(m.key.clone()).unwrap_or_default() {
                b"level" => &mut v.level,
                b"stage" => &mut v.stage,
                b"auditID" => &mut v.audit_id,
                b"verb" => &mut v.verb,
                b"user" => &mut v.user,
                b"objectRef" => &mut v.object_ref,
                b"requestURI" => &mut v.request_uri,
                b"requestObject" => &mut v.request_object,
                b"responseObject" => &mut v.response_object,
                b"annotations" => &mut v.annotations,
                _ => continue,
            };
            slot.get_or_insert(i);
        }
        Some(v)
    }

    /// The value range of the member at `index`.
    pub(crate) fn value(&self, index: Option<usize>) -> Option<Range<usize>> {
        index.and_then(|i| self.top.get(i)).map(|m| m.value.clone())
    }

    #[cfg(test)]
    fn text(&self, index: Option<usize>) -> Option<Cow<'a, str>> {
        json::str_at(self.raw, self.value(index)?)
    }

    #[cfg(test)]
    /// `stage`.
    pub(crate) fn stage(&self) -> Option<Cow<'a, str>> {
        self.text(self.stage)
    }

    /// The value range of `level`.
    pub(crate) fn level_range(&self) -> Option<Range<usize>> {
        self.value(self.level)
    }

    #[cfg(test)]
    /// `verb`.
    pub(crate) fn verb(&self) -> Option<&'a [u8]> {
        self.content(self.value(self.verb)?)
    }

    #[cfg(test)]
    /// `user.username`.
    pub(crate) fn username(&self) -> Option<&'a [u8]> {
        let user = self.value(self.user)?;
        self.content(json::get(self.raw, user, b"username")?)
    }

    #[cfg(test)]
    /// The content of the string at `r`, between its quotes.
    fn content(&self, r: Range<usize>) -> Option<&'a [u8]> {
        let quoted = self.raw.get(r)?;
        quoted.strip_prefix(b"\"")?.strip_suffix(b"\"")
    }

    #[cfg(test)]
    /// The text of `user.groups` (empty when absent).
    pub(crate) fn groups_text(&self) -> &'a [u8] {
        self.value(self.user)
            .and_then(|u| json::get(self.raw, u, b"groups"))
            .map_or(&[][..], |g| &self.raw[g])
    }

    #[cfg(test)]
    /// `objectRef`, present for resource requests.
    pub(crate) fn object_ref(&self) -> Option<ObjectRef<'a>> {
        let r = self.value(self.object_ref)?;
        if self.raw.get(r.start) != Some(&b'{') {
            return None;
        }
        let mut o = ObjectRef::default();
        for m in json::members(self.raw, r) {
            let slot = match self.raw.get(m.key.clone()).unwrap_or_default() {
                b"apiGroup" => &mut o.api_group,
                b"resource" => &mut o.resource,
                b"subresource" => &mut o.subresource,
                b"namespace" => &mut o.namespace,
                b"name" => &mut o.name,
                _ => continue,
            };
            *slot = Field::new(self.content(m.value).unwrap_or_default());
        }
        Some(o)
    }

    #[cfg(test)]
    /// The path of `requestURI`, without its query.
    pub(crate) fn path(&self) -> Cow<'a, str> {
        match self.text(self.request_uri) {
            Some(Cow::Borrowed(s)) => Cow::Borrowed(s.split('?').next().unwrap_or_default()),
            Some(Cow::Owned(s)) => Cow::Owned(s.split('?').next().unwrap_or_default().to_owned()),
            None => Cow::Borrowed(""),
        }
    }
}
