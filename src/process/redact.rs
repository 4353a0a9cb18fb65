//! Redaction of secret values in an event's `requestObject` and
//! `responseObject`: each value becomes the string `"[REDACTED]"`, its key
//! stays, so a reader still sees which keys a request touched.
//!
//! What is redacted:
//! - `data` and `stringData` values of a `Secret`
//!   (<https://kubernetes.io/docs/reference/kubernetes-api/config-and-storage-resources/secret-v1/>),
//!   of each item of a `SecretList`, and of the Secret held as JSON text in its
//!   `kubectl.kubernetes.io/last-applied-configuration` annotation; for a
//!   request on `secrets` whose body is a patch, the same keys of a merge
//!   patch and the `value` of each JSON-patch operation;
//! - `status.token` of a `TokenRequest` (`serviceaccounts/token`) and
//!   `spec.token` of a `TokenReview`;
//! - any value at a configured path.

use super::json::{self, Edit};
use super::view::{ObjectRef, View};

/// The replacement of a redacted value, as JSON.
pub const REDACTED: &[u8] = b"\"[REDACTED]\"";

const LAST_APPLIED: &[u8] = b"kubectl.kubernetes.io/last-applied-configuration";

/// One step of a configured path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(Vec<u8>),
    /// `*`: every member of an object or element of an array.
    Any,
}

/// A built redaction step.
#[derive(Debug, Clone, Default)]
pub(crate) struct Redactor {
    secrets: bool,
    paths: Vec<Vec<Step>>,
}

/// What the object being redacted is, from the event's `objectRef` when its
/// own `kind` does not say (patches carry no `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hint {
    Secret,
    TokenRequest,
    TokenReview,
    Other,
}

impl Redactor {
    /// Redacts Secrets and tokens when `secrets`, and the values at `paths`
    /// (dot-separated member names from the event's root, `*` for any).
    pub(crate) fn new(secrets: bool, paths: &[String]) -> Self {
        let paths = paths
            .iter()
            .map(|p| {
                p.split('.')
                    .map(|s| match s {
                        "*" => Step::Any,
                        k => Step::Key(k.as_bytes().to_vec()),
                    })
                    .collect()
            })
            .collect();
        Self { secrets, paths }
    }

    /// Whether this does nothing.
    pub(crate) fn is_noop(&self) -> bool {
        !self.secrets && self.paths.is_empty()
    }

    /// Whether Secrets and tokens are redacted.
    pub(crate) fn secrets(&self) -> bool {
        self.secrets
    }

    /// Whether paths are configured.
    pub(crate) fn has_paths(&self) -> bool {
        !self.paths.is_empty()
    }

    /// Adds to `out` the edits that redact event `v`, whose objects `hint`
    /// says what they are, looking only at the top-level members `kept`
    /// allows; returns how many values they redact.
    pub(crate) fn edits(
        &self,
        v: &View<'_>,
        hint: Hint,
        kept: impl Fn(usize) -> bool,
        out: &mut Vec<Edit>,
    ) -> usize {
        let b = v.raw;
        let mut n = 0;
        if self.secrets && hint != Hint::Other {
            for i in [v.request_object, v.response_object].into_iter().flatten() {
                if let (true, Some(r)) = (kept(i), v.value(Some(i))) {
                    n += object(b, r, hint, out);
                }
            }
        }
        for path in &self.paths {
            for (i, m) in v.top.iter().enumerate() {
                let first = &path[0];
                if kept(i) && matches!(first, Step::Any)
                    || matches!(first, Step::Key(k) if m.is(b, k) && kept(i))
                {
                    n += at_path(b, m.value.clone(), &path[1..], out);
                }
            }
        }
        n
    }
}

/// What the objects of a request on `o` are.
pub(crate) fn hint(o: &ObjectRef<'_>) -> Hint {
    let is = |group: &[u8], resource: &[u8], subresource: &[u8]| {
        o.api_group.is(group) && o.resource.is(resource) && o.subresource.is(subresource)
    };
    if is(b"", b"secrets", b"") {
        Hint::Secret
    } else if is(b"", b"serviceaccounts", b"token") {
        Hint::TokenRequest
    } else if is(b"authentication.k8s.io", b"tokenreviews", b"") {
        Hint::TokenReview
    } else {
        Hint::Other
    }
}

fn redact(b: &[u8], r: std::ops::Range<usize>, out: &mut Vec<Edit>) -> usize {
    if b.get(r.clone()) == Some(b"null") || b.get(r.clone()) == Some(REDACTED) {
        return 0;
    }
    out.push(Edit {
        range: r,
        with: REDACTED.to_vec(),
    });
    1
}

/// Redacts the object (or patch) at `r`.
fn object(b: &[u8], r: std::ops::Range<usize>, hint: Hint, out: &mut Vec<Edit>) -> usize {
    if b.get(r.start) == Some(&b'[') {
        // A JSON patch (RFC 6902) on a Secret: every operation's value.
        if hint != Hint::Secret {
            return 0;
        }
        return json::elements(b, r)
            .into_iter()
            .filter_map(|op| json::get(b, op, b"value"))
            .map(|v| redact(b, v, out))
            .sum();
    }
    let kind = json::get(b, r.clone(), b"kind").and_then(|k| json::str_at(b, k));
    match (kind.as_deref(), hint) {
        (Some("Secret"), _) | (None, Hint::Secret) => secret(b, r, out),
        (Some("SecretList"), _) | (Some("List"), Hint::Secret) => json::get(b, r, b"items")
            .map(|items| {
                json::elements(b, items)
                    .into_iter()
                    .map(|item| secret(b, item, out))
                    .sum()
            })
            .unwrap_or(0),
        (Some("TokenRequest"), _) | (None, Hint::TokenRequest) => {
            field(b, r, &[b"status", b"token"], out)
        }
        (Some("TokenReview"), _) | (None, Hint::TokenReview) => {
            field(b, r, &[b"spec", b"token"], out)
        }
        _ => 0,
    }
}

fn field(b: &[u8], r: std::ops::Range<usize>, path: &[&[u8]], out: &mut Vec<Edit>) -> usize {
    json::get_path(b, r, path).map_or(0, |v| redact(b, v, out))
}

/// Redacts one Secret (or merge patch of one) at `r`.
fn secret(b: &[u8], r: std::ops::Range<usize>, out: &mut Vec<Edit>) -> usize {
    let mut n = 0;
    for m in json::members(b, r.clone()) {
        if m.is(b, b"data") || m.is(b, b"stringData") {
            for entry in json::members(b, m.value) {
                n += redact(b, entry.value, out);
            }
        }
    }
    let annotation = json::get_path(b, r, &[b"metadata", b"annotations"])
        .and_then(|a| json::get(b, a, LAST_APPLIED));
    if let Some(at) = annotation {
        n += last_applied(b, at, out);
    }
    n
}

/// Redacts the Secret held as JSON text in the string at `at`.
fn last_applied(b: &[u8], at: std::ops::Range<usize>, out: &mut Vec<Edit>) -> usize {
    let Some(text) = json::str_at(b, at.clone()) else {
        return 0;
    };
    let inner = text.as_bytes();
    let start = json::skip_ws(inner, 0);
    let Some(end) = json::value_end(inner, start) else {
        return 0;
    };
    let mut edits = Vec::new();
    let n = object(inner, start..end, Hint::Secret, &mut edits);
    if n == 0 {
        return 0;
    }
    let mut redacted = Vec::with_capacity(inner.len());
    json::splice(inner, 0, inner.len(), &mut edits, &mut redacted);
    let Ok(redacted) = String::from_utf8(redacted) else {
        return 0;
    };
    out.push(Edit {
        range: at,
        with: json::quote(&redacted),
    });
    n
}

fn at_path(b: &[u8], r: std::ops::Range<usize>, rest: &[Step], out: &mut Vec<Edit>) -> usize {
    let Some((step, rest)) = rest.split_first() else {
        return redact(b, r, out);
    };
    let children: Vec<_> = match (b.get(r.start), step) {
        (Some(b'{'), Step::Any) => json::members(b, r).map(|m| m.value).collect(),
        (Some(b'{'), Step::Key(k)) => json::get(b, r, k).into_iter().collect(),
        (Some(b'['), Step::Any) => json::elements(b, r),
        _ => Vec::new(),
    };
    children.into_iter().map(|c| at_path(b, c, rest, out)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(event: &str, r: &Redactor) -> (String, usize) {
        let v = View::new(event.as_bytes()).unwrap();
        let hint = v.object_ref().map_or(Hint::Other, |o| hint(&o));
        let mut edits = Vec::new();
        let n = r.edits(&v, hint, |_| true, &mut edits);
        let mut out = Vec::new();
        json::splice(v.raw, 0, v.raw.len(), &mut edits, &mut out);
        (String::from_utf8(out).unwrap(), n)
    }

    #[test]
    fn secret_values_and_last_applied_are_redacted_keys_kept() {
        let applied = r#"{"apiVersion":"v1","data":{"pw":"c2VjcmV0"},"kind":"Secret","metadata":{"name":"s"}}"#;
        let event = serde_json::json!({
            "objectRef": {"resource": "secrets", "namespace": "d", "name": "s"},
            "requestObject": {"data": {"pw": "c2VjcmV0"}, "metadata": {"annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": format!("{applied}\n")}}},
            "responseObject": {"kind": "Secret", "stringData": {"a": "plain", "b": null}, "data": {"pw": "c2VjcmV0"}}
        })
        .to_string();
        let (out, n) = run(&event, &Redactor::new(true, &[]));
        assert!(!out.contains("c2VjcmV0") && !out.contains("plain"), "{out}");
        assert_eq!(n, 4);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["responseObject"]["stringData"]["b"],
            serde_json::Value::Null
        );
        assert_eq!(v["responseObject"]["data"]["pw"], "[REDACTED]");
        let inner = v["requestObject"]["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap();
        let inner: serde_json::Value = serde_json::from_str(inner).unwrap();
        assert_eq!(inner["data"]["pw"], "[REDACTED]");
        assert_eq!(inner["metadata"]["name"], "s");
    }

    #[test]
    fn tokens_patches_and_paths() {
        let tr = r#"{"objectRef":{"resource":"serviceaccounts","subresource":"token"},"responseObject":{"kind":"TokenRequest","status":{"token":"eyJhbGc","expirationTimestamp":"x"}}}"#;
        let (out, n) = run(tr, &Redactor::new(true, &[]));
        assert_eq!((n, out.contains("eyJhbGc")), (1, false));
        let patch = r#"{"objectRef":{"resource":"secrets"},"requestObject":[{"op":"replace","path":"/data/k","value":"aGk="}]}"#;
        let (out, _) = run(patch, &Redactor::new(true, &[]));
        assert!(!out.contains("aGk="), "{out}");
        let cm = r#"{"objectRef":{"resource":"configmaps"},"requestObject":{"data":{"k":"v"}}}"#;
        assert_eq!(run(cm, &Redactor::new(true, &[])), (cm.to_owned(), 0));
        let (out, n) = run(cm, &Redactor::new(false, &["requestObject.data.*".into()]));
        assert_eq!(
            (n, out.as_str()),
            (
                1,
                r#"{"objectRef":{"resource":"configmaps"},"requestObject":{"data":{"k":"[REDACTED]"}}}"#
            )
        );
    }
}
