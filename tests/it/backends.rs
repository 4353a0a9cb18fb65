//! Real backends on 127.0.0.1 for the network sinks: an HTTP(S) server that
//! records what it is sent and can be told to fail, and a TCP line server that
//! can close, reset, stall or be killed and restarted on the same port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// One request an HTTP backend received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    /// The request target's path and query.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// The body with gzip undone when `Content-Encoding: gzip`.
    pub fn plain_body(&self) -> Vec<u8> {
        if self
            .headers
            .get("content-encoding")
            .is_some_and(|v| v == "gzip")
        {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&self.body[..]).read_to_end_sync(&mut out);
            out
        } else {
            self.body.to_vec()
        }
    }

    /// The events in the body, whatever the encoding.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let body = self.plain_body();
        let ct = self
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        if ct.contains("ndjson") {
            return body
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect();
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        match v {
            serde_json::Value::Array(items) => items,
            v => v["items"].as_array().cloned().unwrap_or_default(),
        }
    }
}

trait ReadToEndSync {
    fn read_to_end_sync(self, out: &mut Vec<u8>);
}

impl<R: std::io::Read> ReadToEndSync for R {
    fn read_to_end_sync(mut self, out: &mut Vec<u8>) {
        self.read_to_end(out).expect("valid gzip");
    }
}

/// How an HTTP backend answers POSTs.
#[derive(Debug, Clone)]
pub enum Answer {
    Ok,
    /// This status (with `Retry-After: 0` on 429/503) for the next `n` requests, then 200.
    FailNext(u16, usize),
    /// 400 for any request whose body contains this text.
    RejectContaining(String),
}

#[derive(Default)]
struct HttpState {
    recorded: Vec<Recorded>,
    answer: Option<Answer>,
    health_checks: usize,
}

/// An HTTP/1.1 + h2 server that records POSTs; GET answers 200 (health checks).
pub struct HttpBackend {
    pub addr: SocketAddr,
    state: Arc<Mutex<HttpState>>,
    conns: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl HttpBackend {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), None).await
    }

    pub async fn start_tls(acceptor: tokio_rustls::TlsAcceptor) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), Some(acceptor)).await
    }

    async fn start_on(addr: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let state = Arc::new(Mutex::new(HttpState {
            answer: Some(Answer::Ok),
            ..HttpState::default()
        }));
        Self::serve(TcpListener::bind(addr).await.unwrap(), state, tls)
    }

    fn serve(
        listener: TcpListener,
        state: Arc<Mutex<HttpState>>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let (st, cs, acceptor) = (state.clone(), conns.clone(), tls.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let acceptor = acceptor.clone();
                cs.lock().unwrap().spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(st.clone(), req));
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
            state,
            conns,
            accept,
            tls,
        }
    }

    pub fn set_answer(&self, answer: Answer) {
        self.state.lock().unwrap().answer = Some(answer);
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().recorded.clone()
    }

    pub fn health_checks(&self) -> usize {
        self.state.lock().unwrap().health_checks
    }

    /// Every event received, in arrival order.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.recorded().iter().flat_map(Recorded::events).collect()
    }

    pub fn audit_ids(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e["auditID"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Closes every open connection without telling the client.
    pub fn kill_connections(&self) {
        self.conns.lock().unwrap().abort_all();
    }

    /// Stops listening and closes every connection.
    pub fn stop(&self) {
        self.accept.abort();
        self.kill_connections();
    }

    /// Listens again on the same port, keeping what was recorded.
    pub async fn restart(&mut self) {
        self.stop();
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        *self = Self::serve(listener, self.state.clone(), self.tls.clone());
    }
}

async fn answer(
    state: Arc<Mutex<HttpState>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut st = state.lock().unwrap();
    let reply = |status: u16| {
        let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        if matches!(status, 429 | 503) {
            r.headers_mut().insert("retry-after", "0".parse().unwrap());
        }
        Ok(r)
    };
    if parts.method == http::Method::GET {
        st.health_checks += 1;
        return reply(200);
    }
    let status = match st.answer.clone().unwrap_or(Answer::Ok) {
        Answer::Ok => 200,
        Answer::FailNext(status, n) => {
            st.answer = Some(if n > 1 {
                Answer::FailNext(status, n - 1)
            } else {
                Answer::Ok
            });
            status
        }
        Answer::RejectContaining(text)
            if body.windows(text.len()).any(|w| w == text.as_bytes()) =>
        {
            400
        }
        Answer::RejectContaining(_) => 200,
    };
    if status == 200 {
        st.recorded.push(Recorded {
            path: parts.uri.path().to_owned(),
            target: parts
                .uri
                .path_and_query()
                .map_or_else(String::new, |p| p.as_str().to_owned()),
            headers: parts.headers,
            body,
        });
    }
    reply(status)
}

/// How a TCP backend treats its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpMode {
    /// Reads lines.
    Read,
    /// Accepts and never reads.
    Stall,
}

/// What to do to an open connection.
#[derive(Debug, Clone, Copy)]
enum Cmd {
    /// Send FIN and stop reading (the socket stays open).
    Fin,
    /// Reset it.
    Rst,
}

type Senders = Arc<Mutex<Vec<tokio::sync::mpsc::UnboundedSender<Cmd>>>>;

/// A line-recording TCP server with a small receive buffer.
pub struct TcpBackend {
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    conns: Senders,
    mode: Arc<Mutex<TcpMode>>,
    readers: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpBackend {
    pub async fn start(mode: TcpMode) -> Self {
        let listener = bind_small("127.0.0.1:0".parse().unwrap());
        Self::serve(listener, Arc::default(), Arc::new(Mutex::new(mode)))
    }

    fn serve(
        listener: TcpListener,
        lines: Arc<Mutex<Vec<String>>>,
        mode: Arc<Mutex<TcpMode>>,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let conns: Senders = Arc::default();
        let readers: Arc<Mutex<JoinSet<()>>> = Arc::new(Mutex::new(JoinSet::new()));
        let (ls, cs, md, rs) = (lines.clone(), conns.clone(), mode.clone(), readers.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                cs.lock().unwrap().push(tx);
                let (ls, md) = (ls.clone(), md.clone());
                rs.lock()
                    .unwrap()
                    .spawn(async move { read_lines(stream, rx, ls, md).await });
            }
        });
        Self {
            addr,
            lines,
            conns,
            mode,
            readers,
            accept,
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn audit_ids(&self) -> Vec<String> {
        crate::harness::audit_ids(&self.lines())
    }

    pub fn set_mode(&self, mode: TcpMode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn command(&self, cmd: Cmd) {
        for tx in self.conns.lock().unwrap().drain(..) {
            let _ = tx.send(cmd);
        }
    }

    /// Variant i: sends FIN on every connection and stops reading them.
    pub fn close_quietly(&self) {
        self.command(Cmd::Fin);
    }

    /// Variant ii: resets every connection.
    pub fn reset(&self) {
        self.command(Cmd::Rst);
    }

    /// Variant iii: the process dies (listener and connections closed).
    pub fn kill(&self) {
        self.accept.abort();
        self.readers.lock().unwrap().abort_all();
        self.conns.lock().unwrap().clear();
    }

    /// Listens again on the same port, keeping what was recorded.
    pub async fn restart(&mut self) {
        self.kill();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let listener = bind_small(self.addr);
        *self = Self::serve(listener, self.lines.clone(), self.mode.clone());
    }
}

/// A listener whose connections have a 4 KiB receive buffer, so a stalled
/// backend pushes back after a few KiB.
fn bind_small(addr: SocketAddr) -> TcpListener {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_nonblocking(true).unwrap();
    socket.bind(&addr.into()).unwrap();
    socket.listen(128).unwrap();
    TcpListener::from_std(socket.into()).unwrap()
}

async fn read_lines(
    stream: TcpStream,
    mut cmds: tokio::sync::mpsc::UnboundedReceiver<Cmd>,
    lines: Arc<Mutex<Vec<String>>>,
    mode: Arc<Mutex<TcpMode>>,
) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        let stalled = *mode.lock().unwrap() == TcpMode::Stall;
        tokio::select! {
            // A command given before the mode changed is obeyed before any
            // read: a reset stalled connection never delivers what it held.
            biased;
            cmd = cmds.recv() => {
                let stream = reader.into_inner();
                match cmd {
                    Some(Cmd::Fin) => {
                        let std = stream.into_std().unwrap();
                        std.shutdown(std::net::Shutdown::Write).unwrap();
                        // Keep the socket open and unread until the test ends.
                        std::future::pending::<()>().await;
                        drop(std);
                    }
                    Some(Cmd::Rst) => {
                        socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
                        drop(stream);
                    }
                    None => {}
                }
                return;
            }
            () = tokio::time::sleep(Duration::from_millis(10)), if stalled => {}
            r = reader.read_line(&mut line), if !stalled => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if line.ends_with('\n') {
                        lines.lock().unwrap().push(line.trim_end().to_owned());
                        line.clear();
                    }
                }
            },
        }
    }
}

/// An HTTP/1.1 server that reads each request and holds its answer (200)
/// until released: shows how many requests a sink has in flight at once.
pub struct HoldingBackend {
    pub addr: SocketAddr,
    arrived: Arc<std::sync::atomic::AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl HoldingBackend {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let count = arrived.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (count, released) = (count.clone(), released.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (count, mut released) = (count.clone(), released.clone());
                        async move {
                            let _ = req.into_body().collect().await;
                            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let _ = released.wait_for(|&go| go).await;
                            Ok::<_, std::convert::Infallible>(Response::new(
                                Full::new(Bytes::new()),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            arrived,
            release,
            accept,
        }
    }

    /// Requests received in full so far (answered or held).
    pub fn arrived(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Answers every held request and every later one at once.
    pub fn release(&self) {
        self.release.send_replace(true);
    }
}

impl Drop for HoldingBackend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
