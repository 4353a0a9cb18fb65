//! The HTTPS listener: handshakes with and without client certificates, the
//! allow-list, bearer tokens, HTTP/2 and HTTP/1.1 over ALPN, slow handshakes,
//! idle connections, certificate expiry, and rotation without a restart.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use kube_audit_forwarder::config::ClientAuth;

use crate::harness::*;
use crate::pki::*;

/// A batch of `n` small events with auditIDs `case_id(first..)`.
pub fn batch(first: u64, n: u64) -> Vec<u8> {
    let items: Vec<String> = (first..first + n)
        .map(|i| {
            format!(
                r#"{{"level":"Metadata","auditID":"{}","stage":"ResponseComplete","requestURI":"/api/v1/pods","verb":"list","user":{{"username":"alice"}},"sourceIPs":["10.0.0.1"],"responseStatus":{{"metadata":{{}},"code":200}},"requestReceivedTimestamp":"2024-05-01T12:00:00.000000Z","stageTimestamp":"2024-05-01T12:00:00.001000Z"}}"#,
                case_id(i)
            )
        })
        .collect();
    event_list_of(&items).into_bytes()
}

pub fn handshake_errors(m: &Metrics, reason: &str) -> f64 {
    m.get(&format!(
        r#"audit_forwarder_tls_handshake_errors_total{{listener="https",reason="{reason}"}}"#
    ))
}

pub fn rejected(m: &Metrics, reason: &str) -> f64 {
    m.get(&format!(
        r#"audit_forwarder_requests_rejected_total{{reason="{reason}"}}"#
    ))
}

/// A CA, a server certificate and the secret directory holding them.
pub struct Pki {
    pub ca: Ca,
    pub server: Pair,
    pub secret: SecretDir,
}

pub fn pki() -> Pki {
    let ca = Ca::new("test-ca");
    let server = ca.server(1001);
    let secret = SecretDir::new(&server, &ca.pem);
    Pki { ca, server, secret }
}

#[tokio::test]
async fn http2_and_http1_over_tls_with_a_client_certificate_are_accepted() {
    let p = pki();
    let fwd = Forwarder::start(https_config(config(), &p.secret)).await;
    let addr = fwd.https_addr.unwrap();
    let me = Client::new(&p.ca, Some(p.ca.client("kube-apiserver-audit", None)));

    let mut h2 = me.open(addr).await.unwrap();
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(h2.serial, p.server.serial());
    let (status, body) = h2.post(&batch(1, 3), &[]).await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"status":"accepted","events":3}"#)
    );

    let mut h1 = me.clone().http1().open(addr).await.unwrap();
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(h1.post(&batch(4, 2), &[]).await.unwrap().0, 200);
    // Keep-alive: a second request on the same HTTP/1.1 connection.
    assert_eq!(h1.post(&batch(6, 1), &[]).await.unwrap().0, 200);

    let mut tls12 = me.clone();
    tls12.tls12_only = true;
    let conn = tls12.connect(addr).await.unwrap();
    assert_eq!(
        conn.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let mut conn = Conn::over(conn).await.unwrap();
    assert_eq!(conn.post(&batch(7, 1), &[]).await.unwrap().0, 200);

    let lines = fwd.out.wait_lines(7).await;
    assert_eq!(audit_ids(&lines), (1..=7).map(case_id).collect::<Vec<_>>());
    let m = fwd.metrics().await;
    assert_eq!(m.get("audit_forwarder_events_received_total"), 7.0);
    fwd.stop().await;
}

#[tokio::test]
async fn no_certificate_or_another_ca_is_refused_in_the_handshake_and_counted() {
    let p = pki();
    let fwd = Forwarder::start(https_config(config(), &p.secret)).await;
    let addr = fwd.https_addr.unwrap();
    let before = fwd.metrics().await;

    let anonymous = Client::new(&p.ca, None);
    let err = anonymous.post(addr, &batch(1, 1)).await.unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    let other = Ca::new("other-ca");
    let stranger = Client::new(&p.ca, Some(other.client("kube-apiserver-audit", None)));
    assert!(stranger.post(addr, &batch(2, 1)).await.is_err());

    // A plain HTTP request sent to the TLS port: closed without an answer.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /audit HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut got))
        .await
        .expect("closed in time");
    assert!(
        !got.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    eventually("handshake errors counted", || async {
        let m = fwd.metrics().await;
        handshake_errors(&m, "protocol") - handshake_errors(&before, "protocol") == 1.0
            && handshake_errors(&m, "unknown_ca") - handshake_errors(&before, "unknown_ca") == 1.0
    })
    .await;
    let m = fwd.metrics().await;
    assert_eq!(
        handshake_errors(&m, "no_client_cert") - handshake_errors(&before, "no_client_cert"),
        1.0
    );
    assert_eq!(m.get("audit_forwarder_events_received_total"), 0.0);
    assert_eq!(fwd.out.text(), "");
    fwd.stop().await;
}

#[tokio::test]
async fn allow_list_lets_in_only_the_listed_names() {
    let p = pki();
    let mut cfg = https_config(config(), &p.secret);
    cfg.source.https.allowed_client_names = vec![
        "kube-apiserver-audit".to_owned(),
        "spiffe://cluster.local/ns/kube-system/sa/apiserver".to_owned(),
    ];
    let fwd = Forwarder::start(cfg).await;
    let addr = fwd.https_addr.unwrap();

    let by_cn = Client::new(&p.ca, Some(p.ca.client("kube-apiserver-audit", None)));
    assert_eq!(by_cn.post(addr, &batch(1, 1)).await.unwrap().0, 200);
    let by_uri = Client::new(
        &p.ca,
        Some(p.ca.client(
            "apiserver",
            Some("spiffe://cluster.local/ns/kube-system/sa/apiserver"),
        )),
    );
    assert_eq!(by_uri.post(addr, &batch(2, 1)).await.unwrap().0, 200);
    let intruder = Client::new(&p.ca, Some(p.ca.client("someone-else", None)));
    assert!(intruder.post(addr, &batch(3, 1)).await.is_err());

    eventually("not_allowed counted", || async {
        handshake_errors(&fwd.metrics().await, "not_allowed") == 1.0
    })
    .await;
    let lines = fwd.out.wait_lines(2).await;
    assert_eq!(audit_ids(&lines), [case_id(1), case_id(2)]);
    fwd.stop().await;
}

#[tokio::test]
async fn optional_client_auth_needs_the_bearer_token_without_a_certificate() {
    let p = pki();
    let mut cfg = https_config(config(), &p.secret);
    cfg.source.https.client_auth = ClientAuth::Optional;
    cfg.source.https.bearer_token_file = write(p.secret.dir.path(), "token", "s3cret-token\n");
    let fwd = Forwarder::start(cfg).await;
    let addr = fwd.https_addr.unwrap();

    let anonymous = Client::new(&p.ca, None);
    let mut conn = anonymous.open(addr).await.unwrap();
    let (status, body) = conn.post(&batch(1, 1), &[]).await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains(r#""reason":"unauthenticated""#), "{body}");
    let mut conn = anonymous.open(addr).await.unwrap();
    let wrong = [("authorization", "Bearer nope")];
    assert_eq!(conn.post(&batch(2, 1), &wrong).await.unwrap().0, 401);
    let mut conn = anonymous.open(addr).await.unwrap();
    let right = [("authorization", "Bearer s3cret-token")];
    assert_eq!(conn.post(&batch(3, 1), &right).await.unwrap().0, 200);

    let with_cert = Client::new(&p.ca, Some(p.ca.client("kube-apiserver-audit", None)));
    assert_eq!(with_cert.post(addr, &batch(4, 1)).await.unwrap().0, 200);

    let lines = fwd.out.wait_lines(2).await;
    assert_eq!(audit_ids(&lines), [case_id(3), case_id(4)]);
    assert_eq!(rejected(&fwd.metrics().await, "unauthenticated"), 2.0);
    fwd.stop().await;
}

#[tokio::test]
async fn plain_listener_with_a_bearer_token_answers_401_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.source.http.bearer_token_file = write(dir.path(), "token", "abc123");
    let fwd = Forwarder::start(cfg).await;
    let json = ("Content-Type", "application/json");

    let resp = post(fwd.addr, "/audit", &[json], &batch(1, 1)).await;
    assert_eq!(
        (resp.status, resp.reason().as_str()),
        (401, "unauthenticated")
    );
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    let resp = post(
        fwd.addr,
        "/audit",
        &[json, ("Authorization", "Bearer abc123")],
        &batch(2, 1),
    )
    .await;
    assert_eq!(resp.status, 200);

    // The token file is rotated: the new token works, the old one no longer does.
    write(dir.path(), "token", "def456");
    eventually("the new token is used", || async {
        let auth = ("Authorization", "Bearer def456");
        post(fwd.addr, "/audit", &[json, auth], &batch(3, 1))
            .await
            .status
            == 200
    })
    .await;
    let resp = post(
        fwd.addr,
        "/audit",
        &[json, ("Authorization", "Bearer abc123")],
        &batch(4, 1),
    )
    .await;
    assert_eq!(resp.status, 401);
    let lines = fwd.out.wait_lines(2).await;
    assert_eq!(audit_ids(&lines), [case_id(2), case_id(3)]);
    fwd.stop().await;
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_in_any_case() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.source.http.bearer_token_file = write(dir.path(), "token", "abc123");
    let fwd = Forwarder::start(cfg).await;
    let json = ("Content-Type", "application/json");
    for (n, auth) in [
        "bearer abc123",
        "BEARER abc123",
        "bEaReR  abc123",
        "Bearer abc123 ",
    ]
    .into_iter()
    .enumerate()
    {
        let n = n as u64 + 1;
        let resp = post(
            fwd.addr,
            "/audit",
            &[json, ("Authorization", auth)],
            &batch(n, 1),
        )
        .await;
        assert_eq!(resp.status, 200, "{auth:?}");
    }
    for auth in ["Bearerabc123", "Basic abc123", "bearer", "bearer abc1234"] {
        let resp = post(
            fwd.addr,
            "/audit",
            &[json, ("Authorization", auth)],
            &batch(9, 1),
        )
        .await;
        assert_eq!(resp.status, 401, "{auth:?}");
    }
    assert_eq!(fwd.out.wait_lines(4).await.len(), 4);
    fwd.stop().await;
}

#[tokio::test]
async fn a_stalled_handshake_blocks_nobody_and_times_out() {
    let p = pki();
    let mut cfg = https_config(config(), &p.secret);
    cfg.source.https.handshake_timeout_secs = 1;
    let fwd = Forwarder::start(cfg).await;
    let addr = fwd.https_addr.unwrap();

    // Connections that never send a ClientHello.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let me = Client::new(&p.ca, Some(p.ca.client("kube-apiserver-audit", None)));
    let answer = me.post(addr, &batch(1, 1)).await.unwrap();
    assert_eq!(answer.0, 200);
    eventually("the stalled handshakes time out", || async {
        handshake_errors(&fwd.metrics().await, "timeout") == 3.0
    })
    .await;
    drop(stalled);
    fwd.stop().await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let p = pki();
    let mut cfg = https_config(config(), &p.secret);
    cfg.source.http.idle_timeout_secs = 1;
    let fwd = Forwarder::start(cfg).await;
    let me = Client::new(&p.ca, Some(p.ca.client("kube-apiserver-audit", None)));
    let mut conn = me.open(fwd.https_addr.unwrap()).await.unwrap();
    assert_eq!(conn.post(&batch(1, 1), &[]).await.unwrap().0, 200);
    tokio::time::timeout(PATIENCE, &mut conn.closed)
        .await
        .expect("the server closed the idle connection")
        .unwrap();
    eventually("no connection open", || async {
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_open_connections{listener="https"}"#)
            == 0.0
    })
    .await;
    fwd.stop().await;
}

#[tokio::test]
async fn certificate_expiry_is_published() {
    let p = pki();
    let fwd = Forwarder::start(https_config(config(), &p.secret)).await;
    let m = fwd.metrics().await;
    // Ca::server certificates end on 2035-06-01, the CA on 2040-01-01 (UTC).
    assert_eq!(
        m.get(r#"audit_forwarder_tls_certificate_expiry_timestamp_seconds{certificate="serving"}"#),
        2_064_268_800.0
    );
    assert_eq!(
        m.get(
            r#"audit_forwarder_tls_certificate_expiry_timestamp_seconds{certificate="client_ca"}"#
        ),
        2_208_988_800.0
    );
    fwd.stop().await;
}

#[tokio::test]
async fn only_https_can_be_enabled_and_a_missing_key_file_is_named_at_start() {
    let p = pki();
    let mut cfg = https_config(config(), &p.secret);
    cfg.source.http.enabled = false;
    let fwd = Forwarder::start(cfg.clone()).await;
    let me = Client::new(&p.ca, Some(p.ca.client("kube-apiserver-audit", None)));
    assert_eq!(
        me.post(fwd.https_addr.unwrap(), &batch(1, 1))
            .await
            .unwrap()
            .0,
        200
    );
    fwd.stop().await;

    cfg.source.https.key_file = p.secret.path("missing.key");
    let err = kube_audit_forwarder::app::App::new(cfg)
        .start()
        .await
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("key_file") && msg.contains("missing.key"),
        "{msg}"
    );
}

#[tokio::test]
async fn header_limits_apply_over_tls() {
    let p = pki();
    let mut cfg = https_config(config(), &p.secret);
    cfg.source.http.header_read_timeout_secs = 1;
    let fwd = Forwarder::start(cfg).await;
    let addr = fwd.https_addr.unwrap();
    let me = Client::new(&p.ca, Some(p.ca.client("kube-apiserver-audit", None))).http1();

    // Headers over 64 KiB: 431.
    let mut tls = me.connect(addr).await.unwrap();
    let big = format!(
        "POST /audit HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\n{{}}",
        "a".repeat(70 << 10)
    );
    tls.write_all(big.as_bytes()).await.unwrap();
    let resp = read_response(&mut tls).await;
    assert_eq!(resp.status, 431);

    // Headers that never finish: the connection is closed, no answer.
    let mut tls = me.connect(addr).await.unwrap();
    tls.write_all(b"POST /audit HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tls.read_to_end(&mut got))
        .await
        .expect("the server closed the connection");
    assert!(
        !got.starts_with(b"HTTP/1.1 2"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(fwd.out.text(), "");
    fwd.stop().await;
}
