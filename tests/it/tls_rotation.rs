//! Certificate rotation without a restart: the files are swapped the way the
//! kubelet updates a secret volume, or written in place; new connections get
//! the new certificate, established ones carry on, no request fails, and a
//! bad new set is refused while the old one stays in use.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::harness::*;
use crate::pki::*;
use crate::tls::{batch, pki};

fn reloads(m: &Metrics, result: &str) -> f64 {
    m.get(&format!(
        r#"audit_forwarder_tls_reloads_total{{result="{result}"}}"#
    ))
}

/// The serial a new connection sees.
async fn serial_now(client: &Client, addr: std::net::SocketAddr) -> Vec<u8> {
    let tls = client.connect(addr).await.unwrap();
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    serial_of(&cert)
}

#[tokio::test]
async fn kubernetes_style_secret_update_is_used_by_new_connections_without_a_failed_request() {
    let mut p = pki();
    let fwd = Forwarder::start(https_config(config(), &p.secret)).await;
    let addr = fwd.https_addr.unwrap();
    let me = Client::new(&p.ca, Some(p.ca.client("kube-apiserver-audit", None)));

    let mut old = me.open(addr).await.unwrap();
    assert_eq!(old.serial, p.server.serial());
    assert_eq!(old.post(&batch(1, 1), &[]).await.unwrap().0, 200);

    // Requests on fresh connections all through the rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (me, stop) = (me.clone(), stop.clone());
        async move {
            let mut answers = Vec::new();
            let mut id = 1000;
            while !stop.load(Ordering::Relaxed) && answers.len() < 2000 {
                answers.push(me.post(addr, &batch(id, 1)).await);
                id += 1;
            }
            answers
        }
    });

    // A new server certificate from the same CA, and a client CA bundle that
    // adds a second CA.
    let before = fwd.metrics().await;
    let new_server = p.ca.server(2002);
    let next_ca = Ca::new("next-client-ca");
    p.secret
        .publish(&new_server, &format!("{}{}", p.ca.pem, next_ca.pem));
    eventually("new connections get the new certificate", || async {
        serial_now(&me, addr).await == new_server.serial()
    })
    .await;
    assert!(reloads(&fwd.metrics().await, "success") > reloads(&before, "success"));
    assert_eq!(reloads(&fwd.metrics().await, "failure"), 0.0);

    // The established HTTP/2 connection carries on.
    assert_eq!(old.post(&batch(2, 1), &[]).await.unwrap().0, 200);
    // A client of the newly trusted CA is let in.
    let next = Client::new(&p.ca, Some(next_ca.client("kube-apiserver-audit", None)));
    assert_eq!(next.post(addr, &batch(3, 1)).await.unwrap().0, 200);

    stop.store(true, Ordering::Relaxed);
    let answers = traffic.await.unwrap();
    let failed: Vec<_> = answers
        .iter()
        .filter(|a| !matches!(a, Ok((200, _))))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        answers.len(),
        failed.first()
    );
    eprintln!(
        "{} requests on new connections during the rotation, all 200",
        answers.len()
    );
    let lines = fwd.out.wait_lines(3 + answers.len()).await;
    assert_eq!(lines.len(), 3 + answers.len());
    fwd.stop().await;
}

#[tokio::test]
async fn a_bad_new_set_is_refused_and_the_old_certificate_stays() {
    let mut p = pki();
    let fwd = Forwarder::start(https_config(config(), &p.secret)).await;
    let addr = fwd.https_addr.unwrap();
    let me = Client::new(&p.ca, Some(p.ca.client("kube-apiserver-audit", None)));

    // A certificate with the key of another one.
    let mismatched = Pair {
        crt: p.ca.server(3003).crt,
        key: p.ca.server(3004).key,
    };
    p.secret.publish(&mismatched, &p.ca.pem);
    eventually("the bad set is refused", || async {
        reloads(&fwd.metrics().await, "failure") >= 1.0
    })
    .await;
    assert_eq!(serial_now(&me, addr).await, p.server.serial());
    assert_eq!(me.post(addr, &batch(1, 1)).await.unwrap().0, 200);

    // A CA file that is not PEM.
    p.secret.publish(&p.ca.server(3005), "not a certificate\n");
    eventually("the second bad set is refused", || async {
        reloads(&fwd.metrics().await, "failure") >= 2.0
    })
    .await;
    assert_eq!(serial_now(&me, addr).await, p.server.serial());

    // Then a good set is taken.
    let good = p.ca.server(3006);
    p.secret.publish(&good, &p.ca.pem);
    eventually("the good set is used", || async {
        serial_now(&me, addr).await == good.serial()
    })
    .await;
    assert_eq!(me.post(addr, &batch(2, 1)).await.unwrap().0, 200);
    fwd.stop().await;
}

#[tokio::test]
async fn files_rewritten_in_place_are_reloaded() {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = https_config(config(), &p.secret);
    cfg.source.https.crt_file = write(dir.path(), "tls.crt", &p.server.crt);
    cfg.source.https.key_file = write(dir.path(), "tls.key", &p.server.key);
    let fwd = Forwarder::start(cfg).await;
    let addr = fwd.https_addr.unwrap();
    let me = Client::new(&p.ca, Some(p.ca.client("kube-apiserver-audit", None)));
    assert_eq!(serial_now(&me, addr).await, p.server.serial());

    let new = p.ca.server(4004);
    write(dir.path(), "tls.key", &new.key);
    write(dir.path(), "tls.crt", &new.crt);
    eventually("the rewritten files are used", || async {
        serial_now(&me, addr).await == new.serial()
    })
    .await;
    assert_eq!(me.post(addr, &batch(1, 1)).await.unwrap().0, 200);
    fwd.stop().await;
}
