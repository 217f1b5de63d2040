//! A constant load against an HTTP endpoint that counts every request and
//! classifies every failure. Clients either keep their connection alive or
//! open a new one per request.
//!
//! A keep-alive client can be told to do what browsers and Go's
//! `http.Transport` do when a server closes an idle keep-alive connection
//! just as a request goes out on it (RFC 9110 §9.2.2 allows it for an
//! idempotent request): send the GET once more, on a new connection. Only
//! a request on a *reused* connection that got no byte of an answer is sent
//! again; each one is counted in [`LoadStats::retried`], and fails if the
//! second try fails.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How the load is made.
#[derive(Debug, Clone, Copy)]
pub struct LoadConfig {
    /// Clients that keep their connection alive.
    pub keepalive_clients: usize,
    /// Clients that open a new connection per request.
    pub fresh_clients: usize,
    /// Requests per second per client (`None`: as fast as answers come).
    pub rate_per_client: Option<u32>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Keep-alive clients send a GET once more, on a new connection, when
    /// the reused connection it went out on closed before any byte of the
    /// answer (a server closing idle connections at a reload).
    pub retry_idle_races: bool,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            keepalive_clients: 4,
            fresh_clients: 4,
            rate_per_client: None,
            timeout: Duration::from_secs(10),
            retry_idle_races: false,
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    requests: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    by_kind: Mutex<BTreeMap<String, u64>>,
    by_server: Mutex<BTreeMap<String, u64>>,
}

/// What the load saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadStats {
    /// Requests sent.
    pub requests: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Failures by kind (`connect`, `reset`, `timeout`, `status_503`, …).
    pub failed_by_kind: BTreeMap<String, u64>,
    /// Requests sent once more because the reused keep-alive connection
    /// they went out on closed before any byte of the answer (only with
    /// [`LoadConfig::retry_idle_races`]); counted once in `requests`.
    pub retried: u64,
    /// Successful answers by the server that gave them.
    pub by_server: BTreeMap<String, u64>,
}

/// A running load.
#[derive(Debug)]
pub struct Load {
    tally: Arc<Tally>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Load {
    /// Starts the load against `http://<target>/`.
    pub fn start(target: SocketAddr, cfg: LoadConfig) -> Self {
        let tally = Arc::new(Tally::default());
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let uri: hyper::Uri = format!("http://{target}/").parse().unwrap_or_default();
        for i in 0..cfg.keepalive_clients + cfg.fresh_clients {
            let keepalive = i < cfg.keepalive_clients;
            let mut builder = Client::builder(TokioExecutor::new());
            if !keepalive {
                builder.pool_max_idle_per_host(0);
            }
            let client: Client<_, Empty<Bytes>> = builder.build_http();
            let mut own = (keepalive && cfg.retry_idle_races).then(|| KeepAlive::new(target));
            let (tally, stop, uri) = (Arc::clone(&tally), stop.clone(), uri.clone());
            tasks.spawn(async move {
                let mut ticker = cfg.rate_per_client.map(|r| {
                    tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(r.max(1))))
                });
                loop {
                    if let Some(t) = ticker.as_mut() {
                        tokio::select! {
                            _ = t.tick() => {}
                            () = stop.cancelled() => return,
                        }
                    } else if stop.is_cancelled() {
                        return;
                    }
                    let outcome = match own.as_mut() {
                        Some(conn) => {
                            tokio::time::timeout(cfg.timeout, conn.get(&tally.retried)).await
                        }
                        None => {
                            tokio::time::timeout(cfg.timeout, request(&client, uri.clone())).await
                        }
                    };
                    tally.requests.fetch_add(1, Ordering::Relaxed);
                    let kind = match outcome {
                        Ok(Ok(server)) => {
                            *tally
                                .by_server
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .entry(server)
                                .or_default() += 1;
                            continue;
                        }
                        Ok(Err(kind)) => kind,
                        Err(_) => "timeout".to_owned(),
                    };
                    let kind = if keepalive {
                        format!("keepalive_{kind}")
                    } else {
                        format!("fresh_{kind}")
                    };
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    *tally
                        .by_kind
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .entry(kind)
                        .or_default() += 1;
                }
            });
        }
        Self { tally, stop, tasks }
    }

    /// What was seen so far.
    pub fn stats(&self) -> LoadStats {
        let t = &self.tally;
        LoadStats {
            requests: t.requests.load(Ordering::Relaxed),
            failed: t.failed.load(Ordering::Relaxed),
            retried: t.retried.load(Ordering::Relaxed),
            failed_by_kind: t
                .by_kind
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            by_server: t
                .by_server
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }

    /// Stops every client (requests in flight finish) and returns the tally.
    pub async fn stop(mut self) -> LoadStats {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.stats()
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// One GET; `Ok(server name)` or `Err(kind of failure)`.
async fn request(client: &HttpClient, uri: hyper::Uri) -> Result<String, String> {
    let resp = client.get(uri).await.map_err(|e| {
        if e.is_connect() {
            "connect".to_owned()
        } else {
            "reset".to_owned()
        }
    })?;
    answer(resp).await
}

/// The server named in an answer, or the kind of failure.
async fn answer(resp: hyper::Response<hyper::body::Incoming>) -> Result<String, String> {
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|_| "body".to_owned())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("status_{}", status.as_u16()));
    }
    let text = String::from_utf8_lossy(&body);
    text.trim()
        .strip_prefix("Hello, World! From ")
        .map(str::to_owned)
        .ok_or_else(|| "bad_body".to_owned())
}

/// A keep-alive client's own connection, opened on first use and kept for
/// as long as the server keeps it, so that it knows whether a request went
/// out on a reused connection.
#[derive(Debug)]
struct KeepAlive {
    target: SocketAddr,
    /// The kept connection, and the bytes read from it so far.
    conn: Option<(Sender, Arc<AtomicU64>)>,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

impl KeepAlive {
    fn new(target: SocketAddr) -> Self {
        Self { target, conn: None }
    }

    /// One GET; sent once more on a new connection when the reused one
    /// closed before any byte of the answer (counted in `retried`).
    async fn get(&mut self, retried: &AtomicU64) -> Result<String, String> {
        let sent = match self.send().await {
            Err(Sent::Raced) => {
                retried.fetch_add(1, Ordering::Relaxed);
                self.send().await
            }
            sent => sent,
        };
        match sent {
            Ok(resp) => answer(resp).await,
            Err(Sent::Connect) => Err("connect".to_owned()),
            // A second race is a failure like any other.
            Err(Sent::Raced | Sent::Failed) => Err("reset".to_owned()),
        }
    }

    /// Sends the GET, on the kept connection if it is still open. The
    /// connection is kept again only once an answer's head has come.
    async fn send(&mut self) -> Result<hyper::Response<hyper::body::Incoming>, Sent> {
        let mut reused = false;
        let mut conn = None;
        if let Some((mut c, read)) = self.conn.take() {
            if c.ready().await.is_ok() {
                reused = true;
                conn = Some((c, read));
            }
        }
        let (mut conn, read) = match conn {
            Some(c) => c,
            None => self.connect().await.map_err(|()| Sent::Connect)?,
        };
        let req = hyper::Request::get("/")
            .header(hyper::header::HOST, self.target.to_string())
            .body(Empty::new())
            .map_err(|_| Sent::Failed)?;
        let before = read.load(Ordering::SeqCst);
        match conn.send_request(req).await {
            Ok(resp) => {
                self.conn = Some((conn, read));
                Ok(resp)
            }
            // Not one byte of an answer came: the server closed the
            // connection before it took the request.
            Err(_) if reused && read.load(Ordering::SeqCst) == before => Err(Sent::Raced),
            Err(_) => Err(Sent::Failed),
        }
    }

    async fn connect(&self) -> Result<(Sender, Arc<AtomicU64>), ()> {
        let stream = tokio::net::TcpStream::connect(self.target)
            .await
            .map_err(|_| ())?;
        let read = Arc::new(AtomicU64::new(0));
        let counted = Counted {
            inner: stream,
            read: Arc::clone(&read),
        };
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(counted))
                .await
                .map_err(|_| ())?;
        tokio::spawn(conn);
        Ok((send, read))
    }
}

/// A connection that counts the bytes read from it.
#[derive(Debug)]
struct Counted {
    inner: tokio::net::TcpStream,
    read: Arc<AtomicU64>,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.read.fetch_add(n as u64, Ordering::SeqCst);
        polled
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a send went wrong.
#[derive(Debug)]
enum Sent {
    /// The connection could not be opened.
    Connect,
    /// A reused connection closed before any byte of the answer.
    Raced,
    /// Anything else: a new connection closed or reset, a bad request.
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What a test server does at the request after its `answered` ones
    /// on a connection.
    #[derive(Clone, Copy)]
    enum Then {
        /// Closes the connection without an answer (a reload closing an
        /// idle keep-alive connection just as a request goes out on it).
        Close,
        /// Sends the start of an answer's head, then closes.
        HalfHead,
    }

    /// A server on loopback that answers `answered` requests on each
    /// connection (the last one with `Connection: close` when `close_last`),
    /// then does `then`. Counts connections.
    async fn server(answered: usize, close_last: bool, then: Then) -> (SocketAddr, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conns = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&conns);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut served = 0;
                    loop {
                        let mut chunk = [0u8; 1024];
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            continue;
                        }
                        buf.clear();
                        if served == answered {
                            if matches!(then, Then::HalfHead) {
                                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
                            }
                            return;
                        }
                        served += 1;
                        let body = "Hello, World! From t1";
                        let close = if close_last && served == answered {
                            "Connection: close\r\n"
                        } else {
                            ""
                        };
                        let head = format!(
                            "HTTP/1.1 200 OK\r\n{close}Content-Length: {}\r\n\r\n",
                            body.len()
                        );
                        if s.write_all(format!("{head}{body}").as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                        if !close.is_empty() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, conns)
    }

    async fn closing_server(answered: usize) -> (SocketAddr, Arc<AtomicU64>) {
        server(answered, false, Then::Close).await
    }

    #[tokio::test]
    async fn a_get_on_a_reused_connection_closed_before_its_answer_is_sent_once_more() {
        let (addr, conns) = closing_server(1).await;
        let mut client = KeepAlive::new(addr);
        let retried = AtomicU64::new(0);
        assert_eq!(client.get(&retried).await, Ok("t1".to_owned()));
        assert_eq!(retried.load(Ordering::Relaxed), 0);
        // The second GET goes out on the kept connection, which the server
        // closes: sent again on a new connection, and answered there.
        assert_eq!(client.get(&retried).await, Ok("t1".to_owned()));
        assert_eq!(retried.load(Ordering::Relaxed), 1);
        assert_eq!(conns.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_new_connection_closed_before_its_answer_fails_without_a_second_try() {
        let (addr, conns) = closing_server(0).await;
        let mut client = KeepAlive::new(addr);
        let retried = AtomicU64::new(0);
        assert_eq!(client.get(&retried).await, Err("reset".to_owned()));
        assert_eq!(retried.load(Ordering::Relaxed), 0);
        assert_eq!(conns.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_second_try_that_fails_too_is_a_failure() {
        let (addr, _) = closing_server(1).await;
        let mut client = KeepAlive::new(addr);
        let retried = AtomicU64::new(0);
        assert_eq!(client.get(&retried).await, Ok("t1".to_owned()));
        client.target = closing_server(0).await.0;
        // The kept connection is to the first server, which closes it at
        // this GET; the second try opens one to the second server, which
        // closes it too.
        assert_eq!(client.get(&retried).await, Err("reset".to_owned()));
        assert_eq!(retried.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_after_its_answer_is_not_a_race() {
        // The answer said `Connection: close`: the next GET sees the
        // connection closed before it goes out, and opens a new one.
        let (addr, conns) = server(1, true, Then::Close).await;
        let mut client = KeepAlive::new(addr);
        let retried = AtomicU64::new(0);
        for _ in 0..3 {
            assert_eq!(client.get(&retried).await, Ok("t1".to_owned()));
        }
        assert_eq!(retried.load(Ordering::Relaxed), 0);
        assert_eq!(conns.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_reused_connection_closed_after_part_of_an_answer_is_a_failure() {
        let (addr, _) = server(1, false, Then::HalfHead).await;
        let mut client = KeepAlive::new(addr);
        let retried = AtomicU64::new(0);
        assert_eq!(client.get(&retried).await, Ok("t1".to_owned()));
        assert_eq!(client.get(&retried).await, Err("reset".to_owned()));
        assert_eq!(retried.load(Ordering::Relaxed), 0, "not sent again");
    }

    #[tokio::test]
    async fn without_retries_the_load_counts_the_idle_close_as_a_failure() {
        let (addr, _) = closing_server(1).await;
        for (retry, failed) in [(false, true), (true, false)] {
            let load = Load::start(
                addr,
                LoadConfig {
                    keepalive_clients: 1,
                    fresh_clients: 0,
                    rate_per_client: Some(50),
                    timeout: Duration::from_secs(5),
                    retry_idle_races: retry,
                },
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            let stats = load.stop().await;
            assert!(stats.requests >= 3, "{stats:?}");
            assert_eq!(stats.failed > 0, failed, "retry {retry}: {stats:?}");
            assert_eq!(stats.retried > 0, retry, "retry {retry}: {stats:?}");
        }
    }
}
