//! Test PKI made at test time with rcgen, and a TLS client (tokio-rustls with
//! hyper) that speaks HTTP/1.1 or HTTP/2 to the forwarder's HTTPS listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube_audit_forwarder::config::{ClientAuth, Config};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A certificate authority.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

/// A certificate with its key, both PEM.
#[derive(Clone)]
pub struct Pair {
    pub crt: String,
    pub key: String,
}

impl Ca {
    pub fn new(cn: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_after = rcgen::date_time_ymd(2040, 1, 1);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self { params, key, pem }
    }

    fn issue(&self, cn: &str, sans: Vec<SanType>, serial: u64, client: bool) -> Pair {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.serial_number = Some(serial.into());
        params.not_after = rcgen::date_time_ymd(2035, 6, 1);
        params.extended_key_usages = vec![match client {
            true => ExtendedKeyUsagePurpose::ClientAuth,
            false => ExtendedKeyUsagePurpose::ServerAuth,
        }];
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let crt = params.signed_by(&key, &issuer).unwrap().pem();
        Pair {
            crt,
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1 with `serial`.
    pub fn server(&self, serial: u64) -> Pair {
        self.issue(
            "forwarder.test",
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            serial,
            false,
        )
    }

    /// A client certificate with subject CN `cn` (and `uri` as a URI SAN).
    pub fn client(&self, cn: &str, uri: Option<&str>) -> Pair {
        let sans = uri
            .map(|u| SanType::URI(u.try_into().unwrap()))
            .into_iter()
            .collect();
        self.issue(cn, sans, 7, true)
    }
}

/// The files of one server identity and client CA, laid out like a
/// Kubernetes secret volume: `dir/tls.crt -> ..data/tls.crt`,
/// `..data -> ..<n>` (a timestamped directory).
pub struct SecretDir {
    pub dir: tempfile::TempDir,
    version: u32,
}

impl SecretDir {
    pub fn new(server: &Pair, client_ca: &str) -> Self {
        let mut s = Self {
            dir: tempfile::tempdir().unwrap(),
            version: 0,
        };
        s.publish(server, client_ca);
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), s.dir.path().join(name)).unwrap();
        }
        s
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a new version the way the kubelet does: a new timestamped
    /// directory, a `..data_tmp` symlink to it renamed over `..data`, the old
    /// directory removed.
    pub fn publish(&mut self, server: &Pair, client_ca: &str) {
        self.version += 1;
        let root = self.dir.path();
        let name = format!("..2026_11_30_00_00_{:02}.{}", self.version, self.version);
        let new = root.join(&name);
        std::fs::create_dir(&new).unwrap();
        std::fs::write(new.join("tls.crt"), &server.crt).unwrap();
        std::fs::write(new.join("tls.key"), &server.key).unwrap();
        std::fs::write(new.join("ca.crt"), client_ca).unwrap();
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        let old = std::fs::read_link(root.join("..data")).ok();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(root.join(old)).unwrap();
        }
    }
}

/// `cfg` with the HTTPS listener on 127.0.0.1:0 using `secret`'s files,
/// client certificates required.
pub fn https_config(cfg: Config, secret: &SecretDir) -> Config {
    https_listener(
        cfg,
        [
            secret.path("tls.crt"),
            secret.path("tls.key"),
            secret.path("ca.crt"),
        ],
    )
}

/// `cfg` with the HTTPS listener on 127.0.0.1:0 serving `crt` and `key`,
/// client certificates of `ca` required.
pub fn https_listener(mut cfg: Config, [crt, key, ca]: [PathBuf; 3]) -> Config {
    let h = &mut cfg.source.https;
    h.enabled = true;
    h.address = "127.0.0.1:0".parse().unwrap();
    h.crt_file = crt;
    h.key_file = key;
    h.client_ca_file = ca;
    h.client_auth = ClientAuth::Required;
    cfg
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// How a test client connects.
#[derive(Clone)]
pub struct Client {
    pub ca: String,
    pub identity: Option<Pair>,
    pub alpn: Vec<Vec<u8>>,
    pub tls12_only: bool,
    /// The name the server certificate is checked against (a DNS name or an
    /// IP address).
    pub server_name: String,
}

impl Client {
    pub fn new(ca: &Ca, identity: Option<Pair>) -> Self {
        Self {
            ca: ca.pem.clone(),
            identity,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            tls12_only: false,
            server_name: "localhost".to_owned(),
        }
    }

    pub fn http1(mut self) -> Self {
        self.alpn = vec![b"http/1.1".to_vec()];
        self
    }

    fn config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let versions: &[&rustls::SupportedProtocolVersion] = match self.tls12_only {
            true => &[&rustls::version::TLS12],
            false => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match &self.identity {
            Some(p) => {
                let chain = CertificateDer::pem_slice_iter(p.crt.as_bytes())
                    .map(Result::unwrap)
                    .collect();
                let key = PrivateKeyDer::from_pem_slice(p.key.as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.clone();
        config
    }

    /// Connects and completes the handshake as the client sees it.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(Arc::new(self.config()))
            .connect(ServerName::try_from(self.server_name.clone()).unwrap(), tcp)
            .await
    }

    /// Connects and opens an HTTP connection over the negotiated protocol.
    pub async fn open(&self, addr: SocketAddr) -> Result<Conn, String> {
        let tls = self.connect(addr).await.map_err(|e| chain(&e))?;
        Conn::over(tls).await
    }

    /// One POST on a new connection: the status and body, or why it failed.
    pub async fn post(&self, addr: SocketAddr, body: &[u8]) -> Result<(u16, String), String> {
        let mut conn = self.open(addr).await?;
        conn.post(body, &[]).await
    }
}

/// An HTTP/1.1 or HTTP/2 client connection over TLS.
pub struct Conn {
    pub alpn: Option<Vec<u8>>,
    pub serial: Vec<u8>,
    send: Sender,
    pub closed: tokio::task::JoinHandle<()>,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    pub async fn over(tls: TlsStream<TcpStream>) -> Result<Conn, String> {
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let serial = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| serial_of(c))
            .unwrap_or_default();
        let io = TokioIo::new(tls);
        let (send, closed) = if alpn.as_deref() == Some(b"h2") {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| chain(&e))?;
            (
                Sender::H2(send),
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| chain(&e))?;
            (
                Sender::H1(send),
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        };
        Ok(Conn {
            alpn,
            serial,
            send,
            closed,
        })
    }

    /// A clone for concurrent HTTP/2 streams on the same connection.
    pub fn h2_sender(&self) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        match &self.send {
            Sender::H2(s) => s.clone(),
            Sender::H1(_) => panic!("not an HTTP/2 connection"),
        }
    }

    /// POSTs `body` to `/audit?timeout=30s` with the given extra headers.
    pub async fn post(
        &mut self,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<(u16, String), String> {
        let req = webhook_request(body, headers);
        let resp = match &mut self.send {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| chain(&e))?;
                s.send_request(req).await
            }
            Sender::H2(s) => s.send_request(req).await,
        }
        .map_err(|e| chain(&e))?;
        answer(resp).await
    }
}

/// A webhook POST as the API server sends it.
pub fn webhook_request(body: &[u8], headers: &[(&str, &str)]) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::post("https://localhost/audit?timeout=30s")
        .header("content-type", "application/json")
        .header("accept", "application/json, */*");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::copy_from_slice(body))).unwrap()
}

/// Status and body text of a response.
pub async fn answer(resp: http::Response<hyper::body::Incoming>) -> Result<(u16, String), String> {
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| chain(&e))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The serial number of a DER certificate, big-endian bytes.
pub fn serial_of(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial().to_vec()
}

impl Pair {
    /// The certificate's serial number, as `serial_of` reads it.
    pub fn serial(&self) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(self.crt.as_bytes()).unwrap();
        serial_of(&pem.contents)
    }
}

/// An error and its sources, joined by ": ".
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

/// The PKI of case BH-16, made with the `openssl` command exactly as its
/// expect.md says (RSA 2048 keys), in a temporary directory: `ca.crt`,
/// `srv.crt`/`srv.key` (SANs `forwarder.demo.svc` and `IP:<ip>` when given),
/// `cli.crt`/`cli.key` (CN kube-apiserver-audit, clientAuth), and
/// `other-cli.crt`/`other-cli.key` from a different CA.
pub struct OpensslPki {
    pub dir: tempfile::TempDir,
}

impl OpensslPki {
    pub fn new(server_ip: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sh = |script: &str| {
            let out = std::process::Command::new("sh")
                .arg("-ec")
                .arg(script)
                .current_dir(dir.path())
                .output()
                .expect("sh runs");
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let san = match server_ip {
            Some(ip) => format!("DNS:forwarder.demo.svc,IP:{ip}"),
            None => "DNS:forwarder.demo.svc".to_owned(),
        };
        sh(&format!(
            "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=demo-ca -keyout ca.key -out ca.crt
             openssl req -newkey rsa:2048 -nodes -subj /CN=forwarder.demo.svc -keyout srv.key -out srv.csr
             printf 'subjectAltName={san}\\n' > srv.ext
             openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile srv.ext -out srv.crt
             openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver-audit -keyout cli.key -out cli.csr
             printf 'extendedKeyUsage=clientAuth\\n' > cli.ext
             openssl x509 -req -in cli.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile cli.ext -out cli.crt
             openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=other-ca -keyout other-ca.key -out other-ca.crt
             openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver-audit -keyout other-cli.key -out other-cli.csr
             openssl x509 -req -in other-cli.csr -CA other-ca.crt -CAkey other-ca.key -CAcreateserial -days 2 -extfile cli.ext -out other-cli.crt"
        ));
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn text(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }

    pub fn pair(&self, name: &str) -> Pair {
        Pair {
            crt: self.text(&format!("{name}.crt")),
            key: self.text(&format!("{name}.key")),
        }
    }

    /// `cfg` with the HTTPS listener on 127.0.0.1:0 serving `srv`, client
    /// certificates of `ca.crt` required.
    pub fn config(&self, cfg: Config) -> Config {
        https_listener(cfg, ["srv.crt", "srv.key", "ca.crt"].map(|n| self.path(n)))
    }

    /// A client trusting `ca.crt`, presenting `identity` (`cli`, `other-cli`).
    pub fn client(&self, identity: Option<&str>) -> Client {
        Client {
            ca: self.text("ca.crt"),
            identity: identity.map(|n| self.pair(n)),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            tls12_only: false,
            server_name: "forwarder.demo.svc".to_owned(),
        }
    }
}

/// The files the network-sink tests use: the CA, a server identity for
/// `localhost`/127.0.0.1 (for test backends) and a client identity (for the
/// forwarder's sinks).
pub struct Pki {
    /// Holds the files for as long as the PKI lives.
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_crt: PathBuf,
    pub server_key: PathBuf,
    pub client_crt: PathBuf,
    pub client_key: PathBuf,
}

pub fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test-ca");
    let server = ca.server(1);
    let client = ca.client("kube-audit-forwarder", None);
    let at = |name: &str, text: &str| write(dir.path(), name, text);
    Pki {
        ca: at("ca.crt", &ca.pem),
        server_crt: at("server.crt", &server.crt),
        server_key: at("server.key", &server.key),
        client_crt: at("client.crt", &client.crt),
        client_key: at("client.key", &client.key),
        _dir: dir,
    }
}

impl Pki {
    /// A TLS acceptor for test backends that requires a client certificate
    /// from the test CA, offering h2 and http/1.1.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let chain: Vec<_> = CertificateDer::pem_file_iter(&self.server_crt)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&self.server_key).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Full handshakes only, so every new connection shows the client's
        // current certificate.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}
