//! A small HTTP/1.1 + h2 server for the destinations that cannot run here
//! (Elasticsearch, Splunk HEC): the test gives the protocol as a function
//! from request to answer, with its state behind a mutex. It can be stopped
//! (connections refused, open ones cut) and started again on the same port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// One request, its body with gzip undone.
pub struct Req {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The protocol: a request to `(status, JSON body)`.
pub type Protocol = Arc<dyn Fn(Req) -> (u16, serde_json::Value) + Send + Sync>;

pub struct ProtocolServer {
    pub addr: SocketAddr,
    protocol: Protocol,
    conns: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl ProtocolServer {
    pub async fn start(protocol: Protocol) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, protocol, None)
    }

    pub async fn start_tls(protocol: Protocol, tls: tokio_rustls::TlsAcceptor) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, protocol, Some(tls))
    }

    fn serve(
        listener: TcpListener,
        protocol: Protocol,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let (p, cs, acceptor) = (protocol.clone(), conns.clone(), tls.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (p, acceptor) = (p.clone(), acceptor.clone());
                cs.lock().unwrap().spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(p.clone(), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        None => drop(
                            builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await,
                        ),
                        Some(a) => {
                            if let Ok(tls) = a.accept(stream).await {
                                drop(builder.serve_connection(TokioIo::new(tls), service).await);
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            protocol,
            conns,
            accept,
            tls,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops listening and cuts every open connection: the destination is down.
    pub fn stop(&self) {
        self.accept.abort();
        self.conns.lock().unwrap().abort_all();
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        *self = Self::serve(listener, self.protocol.clone(), self.tls.clone());
    }
}

impl Drop for ProtocolServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer(
    protocol: Protocol,
    req: http::Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let raw = body.collect().await?.to_bytes();
    let gzip = parts
        .headers
        .get("content-encoding")
        .is_some_and(|v| v == "gzip");
    let body = if gzip {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut out)
            .expect("a valid gzip body");
        out
    } else {
        raw.to_vec()
    };
    let req = Req {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts.headers,
        body,
    };
    let (status, json) = protocol(req);
    let mut r = Response::new(Full::new(Bytes::from(json.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(r)
}
