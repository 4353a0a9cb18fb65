//! Truncation of an oversized event, as kube-apiserver's truncating backend does
//! it (`--audit-webhook-truncate-enabled`, `plugin/pkg/audit/truncate`): the
//! `requestObject` and `responseObject` members are removed and the annotation
//! `"audit.k8s.io/truncated": "true"` is added.

use super::walk::Walk;

const ANNOTATION: &[u8] = br#""audit.k8s.io/truncated":"true""#;

/// Appends the truncated, compact form of the event object at token `tok` to
/// `out`. Returns `false` (and may leave partial output, which the caller cuts
/// off) when the event is not an object or its `annotations` is neither an
/// object nor `null`.
pub(super) fn write_truncated(w: &Walk<'_>, tok: usize, out: &mut Vec<u8>) -> bool {
    if w.byte(tok) != b'{' {
        return false;
    }
    out.push(b'{');
    let mut first = true;
    let mut annotated = false;
    for m in w.members(tok) {
        if w.key_is(&m, b"requestObject") || w.key_is(&m, b"responseObject") {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        if !w.key_is(&m, b"annotations") {
            let end = w.value_range(m.value, m.next).end;
            w.write_compact(m.key, m.next, end, out);
            continue;
        }
        annotated = true;
        out.extend_from_slice(br#""annotations":{"#);
        out.extend_from_slice(ANNOTATION);
        match w.byte(m.value) {
            b'n' => {}
            b'{' => {
                for a in w.members(m.value) {
                    if w.key_is(&a, b"audit.k8s.io/truncated") {
                        continue;
                    }
                    out.push(b',');
                    let end = w.value_range(a.value, a.next).end;
                    w.write_compact(a.key, a.next, end, out);
                }
            }
            _ => return false,
        }
        out.push(b'}');
    }
    if !annotated {
        if !first {
            out.push(b',');
        }
        out.extend_from_slice(br#""annotations":{"#);
        out.extend_from_slice(ANNOTATION);
        out.push(b'}');
    }
    out.push(b'}');
    true
}
