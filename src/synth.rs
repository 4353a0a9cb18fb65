//! Deterministic, realistic synthetic audit events for benchmarks, load tests
//! and fuzz seeds. Shapes follow `audit.k8s.io/v1` `Event` as kube-apiserver
//! sends it in a webhook batch (compact JSON, no `kind`/`apiVersion` per item,
//! MicroTime timestamps with six fractional digits, HTML characters escaped).
//!
//! Sizes: `Metadata` about 1.1 KB, `Request` about 4.5 KB (with a
//! `requestObject`), `RequestResponse` about 30 KB (with both objects).

use std::fmt::Write;

/// The level of a synthetic event, which sets its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthLevel {
    /// No bodies, about 1.1 KB.
    Metadata,
    /// A `requestObject`, about 4.5 KB.
    Request,
    /// Both objects, about 30 KB.
    RequestResponse,
}

/// A small deterministic generator (xorshift64*), so the same seed gives the
/// same bytes on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The mix of the API server's usual traffic: six Metadata events, one
/// Request, one RequestResponse in eight (about 4.9 KB an event).
pub const MIXED: [SynthLevel; 8] = [
    SynthLevel::Metadata,
    SynthLevel::Metadata,
    SynthLevel::Metadata,
    SynthLevel::Request,
    SynthLevel::Metadata,
    SynthLevel::Metadata,
    SynthLevel::Metadata,
    SynthLevel::RequestResponse,
];

const VERBS: [&str; 6] = ["get", "list", "watch", "update", "patch", "create"];
const RESOURCES: [&str; 5] = ["pods", "configmaps", "leases", "secrets", "deployments"];

/// One compact event with the unique auditID number `id`.
pub fn event(rng: &mut Rng, id: u64, level: SynthLevel) -> String {
    let ns = rng.below(40);
    let node = rng.below(200);
    let verb = VERBS[rng.below(VERBS.len() as u64) as usize];
    let resource = RESOURCES[rng.below(RESOURCES.len() as u64) as usize];
    let name = format!(
        "{}-{:x}",
        &resource[..resource.len() - 1],
        rng.next_u64() & 0xffff_ffff
    );
    let micros = 15_449 + rng.below(900_000);
    let level_name = match level {
        SynthLevel::Metadata => "Metadata",
        SynthLevel::Request => "Request",
        SynthLevel::RequestResponse => "RequestResponse",
    };
    let mut e = String::with_capacity(1200);
    let _ = write!(
        e,
        r#"{{"level":"{level_name}","auditID":"{id:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/ns-{ns}/{resource}/{name}?timeout=10s","verb":"{verb}","user":{{"username":"system:node:node-{node}.us-west-2.compute.internal","groups":["system:nodes","system:authenticated"],"extra":{{"authentication.kubernetes.io/credential-id":["X509SHA256=7a3c{:060x}"]}}}},"sourceIPs":["10.0.{}.{}"],"userAgent":"kubelet/v1.30.2 (linux/amd64) kubernetes/39683505","objectRef":{{"resource":"{resource}","namespace":"ns-{ns}","name":"{name}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"#,
        rng.below(0x10000),
        rng.below(0x1000),
        rng.below(0x1000),
        rng.next_u64() & 0xffff_ffff_ffff,
        rng.next_u64(),
        rng.below(256),
        rng.below(256),
    );
    if level != SynthLevel::Metadata {
        e.push_str(r#""requestObject":"#);
        object(&mut e, rng, &name, ns, 3_300);
        e.push(',');
    }
    if level == SynthLevel::RequestResponse {
        e.push_str(r#""responseObject":"#);
        object(&mut e, rng, &name, ns, 25_000);
        e.push(',');
    }
    let _ = write!(
        e,
        r#""requestReceivedTimestamp":"2024-05-28T07:48:35.{micros:06}Z","stageTimestamp":"2024-05-28T07:48:35.{:06}Z","annotations":{{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":"RBAC: allowed by ClusterRoleBinding \"system:node\" of ClusterRole \"system:node\" to Group \"system:nodes\"","pod-security.kubernetes.io/enforce-policy":"restricted:latest"}}}}"#,
        micros + 3_000
    );
    e
}

/// A ConfigMap-like object of about `size` bytes.
fn object(out: &mut String, rng: &mut Rng, name: &str, ns: u64, size: usize) {
    let start = out.len();
    let _ = write!(
        out,
        r#"{{"kind":"ConfigMap","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"ns-{ns}","uid":"{:032x}","resourceVersion":"{}","labels":{{"app.kubernetes.io/name":"demo","app.kubernetes.io/part-of":"audit \u0026 forwarding"}}}},"data":{{"#,
        u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64()),
        rng.below(10_000_000)
    );
    let mut key = 0;
    while out.len() - start < size {
        let _ = write!(
            out,
            r#""key-{key}":"value line {:016x}\nnext line \u003cescaped\u003e {:016x}","#,
            rng.next_u64(),
            rng.next_u64()
        );
        key += 1;
    }
    out.pop();
    out.push_str("}}");
}

/// A compact `audit.k8s.io/v1` EventList of `n` events with auditID numbers
/// `first..first + n`, levels drawn from `mix` in turn.
pub fn event_list(rng: &mut Rng, first: u64, n: usize, mix: &[SynthLevel]) -> Vec<u8> {
    let mut body = String::from(
        r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#,
    );
    for i in 0..n {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&event(rng, first + i as u64, mix[i % mix.len()]));
    }
    body.push_str("]}\n");
    body.into_bytes()
}

/// A batch body whose auditIDs can be renumbered cheaply, so that a load
/// generator sends unique auditIDs without generating events as it runs: the
/// first eight hex digits of each auditID are a sequence number.
#[derive(Debug, Clone)]
pub struct Template {
    body: Vec<u8>,
    id_offsets: Vec<usize>,
}

impl Template {
    /// A template of `n` events drawn from `mix`.
    pub fn new(rng: &mut Rng, n: usize, mix: &[SynthLevel]) -> Self {
        let body = event_list(rng, 0, n, mix);
        let id_offsets = memchr::memmem::find_iter(&body, br#""auditID":""#)
            .map(|i| i + 11)
            .collect();
        Self { body, id_offsets }
    }

    /// Events in the batch.
    pub fn events(&self) -> usize {
        self.id_offsets.len()
    }

    /// Bytes in the batch.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether the batch is empty (never, for `n > 0`).
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The body with the events numbered `first`, `first + 1`, ….
    pub fn stamp(&self, first: u64) -> Vec<u8> {
        let mut body = self.body.clone();
        for (k, &at) in self.id_offsets.iter().enumerate() {
            let hex = format!("{:08x}", (first + k as u64) & 0xffff_ffff);
            body[at..at + 8].copy_from_slice(hex.as_bytes());
        }
        body
    }
}

/// The sequence number in an auditID made by [`Template::stamp`]: its first
/// eight hex digits.
pub fn sequence_of(audit_id: &[u8]) -> Option<u64> {
    let hex = std::str::from_utf8(audit_id.get(..8)?).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_valid_deterministic_and_of_the_advertised_size() {
        for (level, lo, hi) in [
            (SynthLevel::Metadata, 900, 1_400),
            (SynthLevel::Request, 4_000, 5_000),
            (SynthLevel::RequestResponse, 28_000, 32_000),
        ] {
            let e = event(&mut Rng::new(7), 1, level);
            assert!((lo..hi).contains(&e.len()), "{level:?}: {}", e.len());
            let v: serde_json::Value = serde_json::from_str(&e).unwrap();
            assert_eq!(v["level"].as_str().unwrap(), format!("{level:?}"));
        }
        assert_eq!(
            event_list(&mut Rng::new(1), 0, 3, &[SynthLevel::Metadata]),
            event_list(&mut Rng::new(1), 0, 3, &[SynthLevel::Metadata])
        );
    }

    #[test]
    fn stamped_templates_number_every_auditid() {
        let t = Template::new(
            &mut Rng::new(3),
            5,
            &[SynthLevel::Metadata, SynthLevel::Request],
        );
        let body = t.stamp(0x1234);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let items = v["items"].as_array().unwrap();
        let seqs: Vec<u64> = items
            .iter()
            .map(|e| sequence_of(e["auditID"].as_str().unwrap().as_bytes()).unwrap())
            .collect();
        assert_eq!(seqs, [0x1234, 0x1235, 0x1236, 0x1237, 0x1238]);
        assert_eq!(t.events(), 5);
    }
}
