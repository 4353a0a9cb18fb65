//! Case BH-16 (tests/data/cases/BH-16): HTTPS with client certificates,
//! HTTP/2 negotiated by ALPN, a 452 KB body (far over HTTP/2's initial 65,535
//! byte flow-control window), 20 streams on one connection, refused clients,
//! and an IP-addressed server needing an IP SAN. The PKI is made with openssl
//! as the case's expect.md says.

use std::collections::HashMap;
use std::time::Instant;

use crate::harness::*;
use crate::pki::*;
use crate::tls::{handshake_errors, rejected};

const BODY: &str = "cases/BH-16/body.json";

fn received(m: &Metrics) -> f64 {
    m.get("audit_forwarder_events_received_total")
}

#[tokio::test]
async fn bh16_a_b_the_large_batch_over_http2_and_http1_with_a_client_certificate() {
    let pki = OpensslPki::new(Some("127.0.0.1"));
    let fwd = Forwarder::start(pki.config(config())).await;
    let addr = fwd.https_addr.unwrap();
    let body = read(BODY);
    assert_eq!(body.len(), 452_951);
    let expected: Vec<String> = (1..=200).map(case_id).collect();

    // A: HTTP/2.
    let started = Instant::now();
    let mut h2 = pki.client(Some("cli")).open(addr).await.unwrap();
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    let (status, text) = h2.post(&body, &[]).await.unwrap();
    eprintln!("BH-16 A: h2 answered {status} in {:?}", started.elapsed());
    assert_eq!(
        (status, text.as_str()),
        (200, r#"{"status":"accepted","events":200}"#)
    );
    assert_eq!(audit_ids(&fwd.out.wait_lines(200).await), expected);
    assert_eq!(received(&fwd.metrics().await), 200.0);

    // B: HTTP/1.1 over TLS.
    let started = Instant::now();
    let mut h1 = pki.client(Some("cli")).http1().open(addr).await.unwrap();
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(h1.post(&body, &[]).await.unwrap().0, 200);
    eprintln!("BH-16 B: http/1.1 answered in {:?}", started.elapsed());
    let lines = fwd.out.wait_lines(400).await;
    assert_eq!(audit_ids(&lines[200..]), expected);
    assert_eq!(received(&fwd.metrics().await), 400.0);
    fwd.stop().await;
}

#[tokio::test]
async fn bh16_c_twenty_streams_on_one_http2_connection() {
    let pki = OpensslPki::new(Some("127.0.0.1"));
    let fwd = Forwarder::start(pki.config(config())).await;
    let body = bytes::Bytes::from(read(BODY));
    let conn = pki
        .client(Some("cli"))
        .open(fwd.https_addr.unwrap())
        .await
        .unwrap();
    assert_eq!(conn.alpn.as_deref(), Some(&b"h2"[..]));

    let started = Instant::now();
    let streams: Vec<_> = (0..20)
        .map(|_| {
            let mut send = conn.h2_sender();
            let body = body.clone();
            tokio::spawn(async move {
                let resp = send
                    .send_request(webhook_request(&body, &[]))
                    .await
                    .map_err(|e| chain(&e))?;
                answer(resp).await
            })
        })
        .collect();
    for s in streams {
        assert_eq!(s.await.unwrap().unwrap().0, 200);
    }
    eprintln!("BH-16 C: 20 streams answered in {:?}", started.elapsed());
    let lines = fwd.out.wait_lines(4000).await;
    assert_eq!(lines.len(), 4000);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in audit_ids(&lines) {
        *counts.entry(id).or_default() += 1;
    }
    assert_eq!(counts.len(), 200);
    assert!(counts.values().all(|&n| n == 20), "{counts:?}");
    assert_eq!(received(&fwd.metrics().await), 4000.0);
    fwd.stop().await;
}

#[tokio::test]
async fn bh16_d_e_no_client_certificate_or_another_ca_is_refused() {
    let pki = OpensslPki::new(Some("127.0.0.1"));
    let fwd = Forwarder::start(pki.config(config())).await;
    let addr = fwd.https_addr.unwrap();
    let body = read(BODY);

    // D: no client certificate: the handshake fails (certificate_required).
    let err = pki.client(None).post(addr, &body).await.unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // E: a certificate from another CA.
    assert!(
        pki.client(Some("other-cli"))
            .post(addr, &body)
            .await
            .is_err()
    );

    eventually("both refusals counted", || async {
        let m = fwd.metrics().await;
        handshake_errors(&m, "no_client_cert") == 1.0 && handshake_errors(&m, "unknown_ca") == 1.0
    })
    .await;
    let m = fwd.metrics().await;
    assert_eq!(received(&m), 0.0);
    assert_eq!(rejected(&m, "unauthenticated"), 0.0);
    assert_eq!(fwd.out.text(), "");
    fwd.stop().await;
}

#[tokio::test]
async fn bh16_f_an_ip_addressed_server_needs_an_ip_san() {
    // First run: DNS SAN only, the client connects by IP and refuses the server.
    let dns_only = OpensslPki::new(None);
    let fwd = Forwarder::start(dns_only.config(config())).await;
    let addr = fwd.https_addr.unwrap();
    let mut by_ip = dns_only.client(Some("cli"));
    by_ip.server_name = "127.0.0.1".to_owned();
    let err = by_ip.post(addr, &read(BODY)).await.unwrap_err();
    assert!(
        err.contains("NotValidForName") || err.contains("not valid for name"),
        "{err}"
    );
    eventually("the client's refusal counted", || async {
        handshake_errors(&fwd.metrics().await, "peer_alert") == 1.0
    })
    .await;
    assert_eq!(fwd.out.text(), "");
    fwd.stop().await;

    // Second run: with IP:127.0.0.1 added.
    let with_ip = OpensslPki::new(Some("127.0.0.1"));
    let fwd = Forwarder::start(with_ip.config(config())).await;
    let mut by_ip = with_ip.client(Some("cli"));
    by_ip.server_name = "127.0.0.1".to_owned();
    let (status, _) = by_ip
        .post(fwd.https_addr.unwrap(), &read(BODY))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(fwd.out.wait_lines(200).await.len(), 200);
    fwd.stop().await;
}
