//! An HTTP service answering `Hello, World! From <name>`, which can be
//! stopped (like a process exiting: listener closed, connections cut) and
//! started again on the same port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tokio::task::JoinSet;

use crate::BoxResult;

#[derive(Debug, Default)]
struct Counters {
    in_flight: AtomicU64,
    served: AtomicU64,
    last_end: Mutex<Option<Instant>>,
    /// Answers 500 to everything, health included (a patch that broke it).
    broken: AtomicBool,
}

/// One service.
#[derive(Debug)]
pub struct HelloService {
    name: String,
    addr: SocketAddr,
    work: Duration,
    counters: Arc<Counters>,
    running: Mutex<Option<JoinSet<()>>>,
}

impl HelloService {
    /// Binds a free loopback port and starts serving. Each request takes
    /// `work` (so that requests are in flight when a drain starts).
    pub async fn start(name: &str, work: Duration) -> BoxResult<Arc<Self>> {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = probe.local_addr()?;
        drop(probe);
        let s = Arc::new(Self {
            name: name.to_owned(),
            addr,
            work,
            counters: Arc::default(),
            running: Mutex::new(None),
        });
        s.resume()?;
        Ok(s)
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        self.counters.in_flight.load(Ordering::SeqCst)
    }

    /// Requests served so far.
    pub fn served(&self) -> u64 {
        self.counters.served.load(Ordering::SeqCst)
    }

    /// When the last request ended.
    pub fn last_end(&self) -> Option<Instant> {
        *self
            .counters
            .last_end
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether it is serving.
    pub fn is_running(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// Makes it answer `500` to every request, `/health` included (a patch
    /// that left it broken), or heals it.
    pub fn set_broken(&self, broken: bool) {
        self.counters.broken.store(broken, Ordering::SeqCst);
    }

    /// Whether it answers `500` to everything.
    pub fn is_broken(&self) -> bool {
        self.counters.broken.load(Ordering::SeqCst)
    }

    /// Starts serving again on the same port (no-op when running).
    pub fn resume(&self) -> BoxResult<()> {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if running.is_some() {
            return Ok(());
        }
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(self.addr)?;
        // A deep backlog: a shallow one loses connections under load.
        let listener = socket.listen(4096)?;
        let mut set = JoinSet::new();
        let name = self.name.clone();
        let work = self.work;
        let counters = Arc::clone(&self.counters);
        set.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let name = name.clone();
                let counters = Arc::clone(&counters);
                conns.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let name = name.clone();
                        let counters = Arc::clone(&counters);
                        async move { Ok::<_, Infallible>(answer(&req, &name, work, &counters).await) }
                    });
                    // A cut connection is what a stopped service does.
                    let _closed = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), svc).await;
                });
                // Reap finished connections so the set does not grow.
                while conns.try_join_next().is_some() {}
            }
        });
        *running = Some(set);
        Ok(())
    }

    /// Stops like a process exiting: the listener closes and every open
    /// connection is cut.
    pub fn stop(&self) {
        let set = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        drop(set); // Dropping the JoinSet aborts the accept loop and, with it, its connections.
    }
}

async fn answer(
    req: &Request<Incoming>,
    name: &str,
    work: Duration,
    c: &Counters,
) -> Response<Full<Bytes>> {
    if c.broken.load(Ordering::SeqCst) {
        let mut r = Response::new(Full::new(Bytes::from_static(b"broken\n")));
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        return r;
    }
    if req.uri().path() == "/health" {
        return Response::new(Full::new(Bytes::from_static(b"ok\n")));
    }
    // `/slow/<ms>`: a long request (several seconds in flight when a drain
    // starts).
    let work = req
        .uri()
        .path()
        .strip_prefix("/slow/")
        .and_then(|ms| ms.parse().ok())
        .map_or(work, Duration::from_millis);
    c.in_flight.fetch_add(1, Ordering::SeqCst);
    if !work.is_zero() {
        tokio::time::sleep(work).await;
    }
    c.in_flight.fetch_sub(1, Ordering::SeqCst);
    c.served.fetch_add(1, Ordering::SeqCst);
    *c.last_end
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    Response::new(Full::new(Bytes::from(format!(
        "Hello, World! From {name}\n"
    ))))
}
