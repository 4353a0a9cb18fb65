//! Interop with real programs from Debian: the HTTPS mTLS sink against nginx
//! (OpenSSL) with `ssl_verify_client on`, proxying to a recording backend.
//! `.ci/run` installs nginx.

use std::process::{Child, Command, Stdio};

use kube_audit_forwarder::config::{
    ClientTlsConfig, HttpSinkConfig, QueueConfig, RetryConfig, SinkConfig,
};
use kube_audit_forwarder::pipeline::WhenFull;

use crate::backends::HttpBackend;
use crate::harness::*;
use crate::pki::{Pki, pki};

const NGINX: &str = "/usr/sbin/nginx";

struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx on 127.0.0.1 with TLS, a required client certificate from the test
/// CA, and `proxy_pass` to `backend`.
async fn nginx(pki: &Pki, backend: std::net::SocketAddr) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.path().display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  client_max_body_size 64m;\n\
           server {{\n    listen 127.0.0.1:{port} ssl http2;\n    ssl_certificate {crt};\n    ssl_certificate_key {key};\n\
             ssl_client_certificate {ca};\n    ssl_verify_client on;\n    location / {{ proxy_pass http://{backend}; }}\n  }}\n}}\n",
        crt = pki.server_crt.display(),
        key = pki.server_key.display(),
        ca = pki.ca.display(),
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(NGINX)
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx is installed (.ci/run installs nginx-light)");
    eventually("nginx listening", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    Nginx {
        child,
        port,
        _dir: dir,
    }
}

#[tokio::test]
async fn https_mtls_sink_through_nginx_with_ssl_verify_client_on() {
    let pki = pki();
    let backend = HttpBackend::start().await;
    let nginx = nginx(&pki, backend.addr).await;
    let url = format!("https://localhost:{}/audit", nginx.port);
    let retry = RetryConfig {
        initial_backoff_ms: 20,
        max_backoff_secs: 1,
        ..RetryConfig::default()
    };
    let mtls = HttpSinkConfig {
        name: "mtls".into(),
        endpoints: vec![url.clone()],
        retry: retry.clone(),
        tls: ClientTlsConfig {
            ca_file: Some(pki.ca.clone()),
            crt_file: Some(pki.client_crt.clone()),
            key_file: Some(pki.client_key.clone()),
            ..ClientTlsConfig::default()
        },
        ..HttpSinkConfig::default()
    };
    // Without a client certificate nginx answers 400, which is not retried:
    // the events are dead-lettered, counted, and nothing reaches the backend.
    let anonymous = HttpSinkConfig {
        name: "anonymous".into(),
        endpoints: vec![url],
        retry,
        tls: ClientTlsConfig {
            ca_file: Some(pki.ca.clone()),
            ..ClientTlsConfig::default()
        },
        queue: QueueConfig {
            when_full: WhenFull::DropNewest,
            ..QueueConfig::default()
        },
        ..HttpSinkConfig::default()
    };
    let mut cfg = config();
    cfg.sinks = vec![SinkConfig::Http(mtls), SinkConfig::Http(anonymous)];
    cfg.shutdown.deadline_secs = 2;
    let fwd = Forwarder::start(cfg).await;
    let body = read("cases/BH-16/body.json");
    assert_eq!(fwd.post(&body).await.status, 200);
    eventually("delivered through nginx", || async {
        backend.recorded().len() == 1
    })
    .await;
    assert_eq!(
        &backend.recorded()[0].body[..],
        &body[..],
        "byte-identical through nginx"
    );
    eventually("anonymous sink refused", || async {
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_events_dead_lettered_total{sink="anonymous"}"#)
            == 200.0
    })
    .await;
    let m = fwd.metrics().await;
    assert_eq!(
        m.get(r#"audit_forwarder_events_sent_total{sink="mtls"}"#),
        200.0
    );
    assert_eq!(
        m.get(r#"audit_forwarder_error_total{reason="http_4xx",sink="anonymous"}"#),
        200.0
    );
    assert_eq!(backend.recorded().len(), 1);
    fwd.stop().await;
    drop(nginx);
}
