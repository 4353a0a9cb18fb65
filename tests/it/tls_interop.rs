//! Real clients against the HTTPS listener: `curl` over HTTP/2 and HTTP/1.1
//! with a client certificate, and `openssl s_client` over TLS 1.3 and 1.2.
//! Both commands must be installed (.ci/run installs them).

use std::process::Output;

use tokio::process::Command;

use crate::harness::*;
use crate::pki::*;
use crate::tls::handshake_errors;

async fn run(cmd: &mut Command) -> Output {
    tokio::time::timeout(PATIENCE, cmd.kill_on_drop(true).output())
        .await
        .expect("finished in time")
        .expect("the command runs")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn curl(pki: &OpensslPki, port: u16, args: &[&str]) -> Command {
    let mut c = Command::new("curl");
    c.current_dir(pki.dir.path())
        .args(["-sS", "--max-time", "10", "--cacert", "ca.crt"])
        .args(["--resolve", &format!("forwarder.demo.svc:{port}:127.0.0.1")])
        .args(["-H", "Content-Type: application/json"])
        .arg("--data-binary")
        .arg(format!("@{}", data("cases/BH-16/body.json").display()))
        .args(["-w", "\n%{http_code} %{http_version}\n"])
        .args(args)
        .arg(format!(
            "https://forwarder.demo.svc:{port}/audit?timeout=30s"
        ));
    c
}

#[tokio::test]
async fn curl_over_http2_and_http1_with_a_client_certificate() {
    let pki = OpensslPki::new(Some("127.0.0.1"));
    let fwd = Forwarder::start(pki.config(config())).await;
    let port = fwd.https_addr.unwrap().port();
    let cert = ["--cert", "cli.crt", "--key", "cli.key"];

    let out = run(&mut curl(&pki, port, &[&["--http2"][..], &cert].concat())).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout.ends_with("\n200 2\n"), "{}", text(&out));
    assert!(
        stdout.starts_with(r#"{"status":"accepted","events":200}"#),
        "{}",
        text(&out)
    );

    let out = run(&mut curl(&pki, port, &[&["--http1.1"][..], &cert].concat())).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with("\n200 1.1\n"),
        "{}",
        text(&out)
    );

    // Without a client certificate curl fails and nothing is written.
    let out = run(&mut curl(&pki, port, &["--http2"])).await;
    assert!(!out.status.success(), "{}", text(&out));
    eventually("the refusal counted", || async {
        handshake_errors(&fwd.metrics().await, "no_client_cert") == 1.0
    })
    .await;
    assert_eq!(fwd.out.wait_lines(400).await.len(), 400);
    fwd.stop().await;
}

#[tokio::test]
async fn openssl_s_client_negotiates_h2_over_tls13_and_tls12() {
    let pki = OpensslPki::new(Some("127.0.0.1"));
    let fwd = Forwarder::start(pki.config(config())).await;
    let port = fwd.https_addr.unwrap().port();
    let s_client = |extra: &[&str]| {
        let mut c = Command::new("openssl");
        c.current_dir(pki.dir.path())
            .arg("s_client")
            .args(["-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", "forwarder.demo.svc"])
            .args(["-CAfile", "ca.crt", "-verify_return_error"])
            .args(["-cert", "cli.crt", "-key", "cli.key"])
            .args(["-alpn", "h2,http/1.1"])
            .args(extra)
            .stdin(std::process::Stdio::null());
        c
    };

    let out = run(&mut s_client(&["-tls1_3"])).await;
    let all = text(&out);
    assert!(all.contains("ALPN protocol: h2"), "{all}");
    assert!(all.contains("Verify return code: 0 (ok)"), "{all}");
    assert!(all.contains("TLSv1.3"), "{all}");

    let out = run(&mut s_client(&["-tls1_2"])).await;
    let all = text(&out);
    assert!(all.contains("ALPN protocol: h2"), "{all}");
    assert!(all.contains("Protocol  : TLSv1.2"), "{all}");
    assert!(all.contains("Verify return code: 0 (ok)"), "{all}");

    // TLS 1.1 is refused by the server (the client allowed to offer it).
    let before = handshake_errors(&fwd.metrics().await, "protocol");
    let out = run(&mut s_client(&["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"])).await;
    assert!(!text(&out).contains("ALPN protocol: h2"), "{}", text(&out));
    eventually("the TLS 1.1 hello refused", || async {
        handshake_errors(&fwd.metrics().await, "protocol") == before + 1.0
    })
    .await;
    fwd.stop().await;
}
