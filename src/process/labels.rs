//! Labels: string pairs added to each event's `annotations` (the one string
//! map of the `audit.k8s.io/v1` `Event`), static per sink or taken from the
//! request path (`/post/<cluster>`), so that one forwarder serving several
//! clusters keeps their events apart.
//!
//! A label whose key is already among the event's annotations replaces that
//! value; an event without `annotations` (or with `null`) gets the member.

use super::json::{self, Edit};
use super::view::View;
use crate::pipeline::Listener;

/// Where one label comes from.
#[derive(Debug, Clone, Default)]
pub(crate) struct Labels {
    /// Of the HTTP and the HTTPS listener, set first.
    listener: [Vec<(String, String)>; 2],
    fixed: Vec<(String, String)>,
    from_path: Option<(String, String)>,
}

/// The labels of one batch, as JSON: `(quoted key, quoted value)`.
pub(crate) type Resolved = Vec<(Vec<u8>, Vec<u8>)>;

impl Labels {
    /// Static `fixed` pairs, and the annotation `key` set to the path segment
    /// that follows `prefix` when `from_path` is `Some((key, prefix))`.
    pub(crate) fn new(fixed: Vec<(String, String)>, from_path: Option<(String, String)>) -> Self {
        Self {
            listener: Default::default(),
            fixed,
            from_path,
        }
    }

    /// Sets the labels of each listener, `[http, https]`, which the sink's
    /// own labels override.
    pub(crate) fn set_listener(&mut self, labels: [Vec<(String, String)>; 2]) {
        self.listener = labels;
    }

    /// Whether this adds nothing.
    pub(crate) fn is_noop(&self) -> bool {
        self.fixed.is_empty() && self.from_path.is_none() && self.listener.iter().all(Vec::is_empty)
    }

    /// The labels for a batch received at `path_and_query` on `listener`.
    pub(crate) fn resolve(&self, path_and_query: &str, listener: Listener) -> Resolved {
        let by_listener = &self.listener[match listener {
            Listener::Http => 0,
            Listener::Https => 1,
        }];
        let mut out: Resolved = by_listener
            .iter()
            .filter(|(k, _)| !self.fixed.iter().any(|(f, _)| f == k))
            .chain(&self.fixed)
            .map(|(k, v)| (json::quote(k), json::quote(v)))
            .collect();
        if let Some((key, prefix)) = &self.from_path {
            let path = path_and_query.split('?').next().unwrap_or_default();
            let segment = path
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.split('/').next())
                .filter(|s| !s.is_empty());
            if let Some(value) = segment {
                out.retain(|(k, _)| k[1..k.len() - 1] != *key.as_bytes());
                out.push((json::quote(key), json::quote(value)));
            }
        }
        out
    }

    /// Adds to `edits` (or to `append`, a new top-level member) what sets
    /// `labels` on event `v`; returns how many labels it sets. A label that
    /// already has its value costs nothing.
    pub(crate) fn edits(
        v: &View<'_>,
        labels: &Resolved,
        edits: &mut Vec<Edit>,
        append: &mut Vec<u8>,
    ) -> usize {
        if labels.is_empty() {
            return 0;
        }
        let b = v.raw;
        let Some(at) = v.value(v.annotations) else {
            append.extend_from_slice(b"\"annotations\":");
            append.extend_from_slice(&object(labels.iter()));
            return labels.len();
        };
        match b.get(at.start) {
            Some(b'{') => {}
            _ if b.get(at.clone()) == Some(b"null") => {
                edits.push(Edit {
                    range: at,
                    with: object(labels.iter()),
                });
                return labels.len();
            }
            _ => return 0,
        }
        let present: Vec<_> = json::members(b, at.clone()).collect();
        let mut added: Vec<&(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut n = 0;
        for pair in labels {
            let (k, val) = pair;
            let key = &k[1..k.len() - 1];
            match present.iter().find(|m| m.is(b, key)) {
                Some(m) if b.get(m.value.clone()) == Some(&val[..]) => {}
                Some(m) => {
                    edits.push(Edit {
                        range: m.value.clone(),
                        with: val.clone(),
                    });
                    n += 1;
                }
                None => added.push(pair),
            }
        }
        if !added.is_empty() {
            let mut with = object(added.iter().copied());
            with.remove(0);
            with.pop();
            if !present.is_empty() {
                with.push(b',');
            }
            n += added.len();
            edits.push(Edit {
                range: at.start + 1..at.start + 1,
                with,
            });
        }
        n
    }
}

fn object<'a>(pairs: impl Iterator<Item = &'a (Vec<u8>, Vec<u8>)>) -> Vec<u8> {
    let mut out = vec![b'{'];
    for (i, (k, v)) in pairs.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(k);
        out.push(b':');
        out.extend_from_slice(v);
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(event: &str, labels: &Labels, path: &str) -> (String, usize) {
        run_on(event, labels, path, Listener::Http)
    }

    fn run_on(event: &str, labels: &Labels, path: &str, on: Listener) -> (String, usize) {
        let v = View::new(event.as_bytes()).unwrap();
        let (mut edits, mut append) = (Vec::new(), Vec::new());
        let n = Labels::edits(&v, &labels.resolve(path, on), &mut edits, &mut append);
        let mut out = Vec::new();
        json::splice(v.raw, 0, v.raw.len() - 1, &mut edits, &mut out);
        if !append.is_empty() {
            out.push(b',');
            out.extend_from_slice(&append);
        }
        out.push(b'}');
        (String::from_utf8(out).unwrap(), n)
    }

    #[test]
    fn a_listener_labels_its_requests_and_the_sink_and_path_win() {
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let mut l = Labels::new(
            vec![pair("example.com/team", "sre")],
            Some(("example.com/cluster".into(), "/post/".into())),
        );
        l.set_listener([
            vec![
                pair("example.com/cluster", "plain"),
                pair("example.com/team", "x"),
            ],
            vec![
                pair("example.com/cluster", "tls"),
                pair("example.com/via", "https"),
            ],
        ]);
        assert!(!l.is_noop());
        let (out, n) = run_on(r#"{"a":1}"#, &l, "/post", Listener::Http);
        assert_eq!(n, 2);
        assert_eq!(
            out,
            r#"{"a":1,"annotations":{"example.com/cluster":"plain","example.com/team":"sre"}}"#
        );
        let (out, _) = run_on(r#"{"a":1}"#, &l, "/post", Listener::Https);
        assert_eq!(
            out,
            r#"{"a":1,"annotations":{"example.com/cluster":"tls","example.com/via":"https","example.com/team":"sre"}}"#
        );
        let (out, _) = run_on(r#"{"a":1}"#, &l, "/post/eu-1", Listener::Https);
        assert_eq!(
            out,
            r#"{"a":1,"annotations":{"example.com/via":"https","example.com/team":"sre","example.com/cluster":"eu-1"}}"#
        );
        let only_listener = {
            let mut l = Labels::new(Vec::new(), None);
            l.set_listener([Vec::new(), vec![pair("k", "v")]]);
            l
        };
        assert!(!only_listener.is_noop());
        assert_eq!(
            run_on(r#"{"a":1}"#, &only_listener, "/", Listener::Http).1,
            0
        );
    }

    #[test]
    fn labels_are_added_replaced_or_left() {
        let l = Labels::new(
            vec![("example.com/cluster".into(), "prod".into())],
            Some(("example.com/source".into(), "/post/".into())),
        );
        let (out, n) = run(r#"{"a":1}"#, &l, "/post/eu-1?timeout=30s");
        assert_eq!(n, 2);
        assert_eq!(
            out,
            r#"{"a":1,"annotations":{"example.com/cluster":"prod","example.com/source":"eu-1"}}"#
        );
        let (out, _) = run(
            r#"{"annotations":{"x":"y","example.com/cluster":"old"},"b":2}"#,
            &l,
            "/other",
        );
        assert_eq!(
            out,
            r#"{"annotations":{"x":"y","example.com/cluster":"prod"},"b":2}"#
        );
        let (out, _) = run(r#"{"annotations":{}}"#, &l, "/post/");
        assert_eq!(out, r#"{"annotations":{"example.com/cluster":"prod"}}"#);
        let same = r#"{"annotations":{"example.com/cluster":"prod"}}"#;
        assert_eq!(run(same, &l, "/"), (same.to_owned(), 0));
    }
}
