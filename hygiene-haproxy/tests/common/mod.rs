//! Test harness: a real HAProxy per test (own config, sockets and ports in a
//! temporary directory, stopped by pid), small tokio HTTP backends, raw
//! runtime API access, and fake sockets for the failure cases.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hygiene_core::RetryPolicy;
use hygiene_haproxy::{HaproxyBalancer, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The HAProxy binary: `HYGIENE_HAPROXY_BIN`, else `haproxy` on the PATH
/// (or /usr/sbin). `None` (after a loud skip message) when missing; panics
/// instead when `HYGIENE_REQUIRE_INTEGRATION=1`.
pub fn haproxy_bin() -> Option<PathBuf> {
    let found = match std::env::var_os("HYGIENE_HAPROXY_BIN") {
        // An explicit binary is used or reported missing, never replaced.
        Some(bin) => Some(PathBuf::from(bin)).filter(|p| p.is_file()),
        None => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
                .map(|d| d.join("haproxy"))
                .find(|p| p.is_file())
        }
    };
    let available = hygiene_core::conformance::integration_available(
        "haproxy",
        found.is_some(),
        "apt-get install -y haproxy, or set HYGIENE_HAPROXY_BIN",
    );
    if available {
        found
    } else {
        None
    }
}

/// A free loopback port (bound then released; HAProxy binds it next).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// Short retries so failure tests end quickly.
pub fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        max_total: Duration::from_millis(500),
    }
}

/// A small HTTP/1.1 server answering its own name. `GET /hold` waits until
/// the test releases it ([`Backend::release`]).
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub in_flight: Arc<AtomicUsize>,
    hold: Arc<Semaphore>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Backend {
    pub async fn start(name: &str) -> Arc<Self> {
        Self::start_on(name, "127.0.0.1:0".parse().expect("addr")).await
    }

    pub async fn start_on(name: &str, addr: SocketAddr) -> Arc<Self> {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(addr).expect("bind backend");
        let listener = socket.listen(1024).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let b = Arc::new(Self {
            name: name.to_owned(),
            addr,
            hits: Arc::default(),
            in_flight: Arc::default(),
            hold: Arc::new(Semaphore::new(0)),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(serve(
            listener,
            b.name.clone(),
            b.hits.clone(),
            b.in_flight.clone(),
            b.hold.clone(),
        ));
        *b.task.lock().expect("lock") = Some(task);
        b
    }

    /// Lets `n` held requests finish.
    pub fn release(&self, n: usize) {
        self.hold.add_permits(n);
    }

    /// Stops accepting (connections are refused from now on).
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().expect("lock").take() {
            t.abort();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(
    l: TcpListener,
    name: String,
    hits: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    hold: Arc<Semaphore>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let (name, hits, in_flight, hold) =
            (name.clone(), hits.clone(), in_flight.clone(), hold.clone());
        conns.spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                let Some(end) = find(&buf, b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                buf.drain(..end + 4);
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                hits.fetch_add(1, Ordering::SeqCst);
                if path.starts_with("/hold") {
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    let permit = hold.acquire().await.expect("semaphore open");
                    permit.forget();
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                }
                let body = name.as_bytes();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n",
                    body.len()
                );
                if s.write_all(resp.as_bytes()).await.is_err() || s.write_all(body).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One GET through HAProxy on a new connection; the body (the backend's name).
pub async fn get(frontend: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(frontend).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).to_string();
    if !text.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("bad response: {text}")));
    }
    Ok(text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

/// How the test HAProxy is laid out.
pub struct Layout {
    /// Backend name → its servers (name, backend).
    pub backends: Vec<(String, Vec<(String, SocketAddr)>)>,
    /// Extra `server` options (checks).
    pub server_opts: String,
    /// Raw lines added to the first backend (servers with their own
    /// options, e.g. `server t 127.0.0.1:80 track web/s1`).
    pub extra: Vec<String>,
    /// Backends that also get a frontend of their own.
    pub fronted: Vec<String>,
}

impl Layout {
    /// One backend `web` with the given servers, TCP checks every 100 ms,
    /// rise 2 / fall 2.
    pub fn web(servers: &[&Arc<Backend>]) -> Self {
        Self {
            backends: vec![(
                "web".into(),
                servers.iter().map(|b| (b.name.clone(), b.addr)).collect(),
            )],
            server_opts: "check inter 100ms rise 2 fall 2".into(),
            extra: Vec::new(),
            fronted: Vec::new(),
        }
    }

    /// Adds a backend holding the same hosts under other server names
    /// (`<prefix><name>`), with a frontend of its own.
    pub fn renamed(mut self, backend: &str, prefix: &str) -> Self {
        let servers = self.backends[0]
            .1
            .iter()
            .map(|(s, a)| (format!("{prefix}{s}"), *a))
            .collect();
        self.backends.push((backend.into(), servers));
        self.fronted.push(backend.into());
        self
    }

    /// Other `server` options for every server (e.g. `""`: no check).
    pub fn opts(mut self, opts: &str) -> Self {
        self.server_opts = opts.into();
        self
    }

    /// A raw line added to the first backend.
    pub fn line(mut self, line: &str) -> Self {
        self.extra.push(line.into());
        self
    }

    /// Adds a backend holding the same servers.
    pub fn also(mut self, backend: &str) -> Self {
        let servers = self.backends[0].1.clone();
        self.backends.push((backend.into(), servers));
        self
    }
}

/// A running HAProxy, killed by pid on drop.
pub struct Haproxy {
    child: Child,
    pub dir: tempfile::TempDir,
    pub admin_sock: PathBuf,
    pub user_sock: PathBuf,
    pub tcp_admin: SocketAddr,
    pub frontend: SocketAddr,
    /// The frontends of [`Layout::fronted`] backends.
    pub frontends: Vec<(String, SocketAddr)>,
}

impl Haproxy {
    /// An HAProxy with one frontend sending to `default_backend` and the
    /// given raw `backend` sections; ready once every server is `UP`, `no
    /// check` or in maintenance (`disabled`).
    pub async fn start_raw(bin: &Path, default_backend: &str, backends: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let admin_sock = dir.path().join("admin.sock");
        let user_sock = dir.path().join("user.sock");
        let tcp_admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let frontend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let cfg = format!(
            "global\n  stats socket {} level admin\n  stats socket {} level user\n  stats socket ipv4@{tcp_admin} level admin\n  maxconn 2000\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  retries 0\n\
             frontend fe\n  bind {frontend}\n  default_backend {default_backend}\n{backends}",
            admin_sock.display(),
            user_sock.display(),
        );
        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, &cfg).expect("write config");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("log file");
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn haproxy");
        let h = Self {
            child,
            dir,
            admin_sock,
            user_sock,
            tcp_admin,
            frontend,
            frontends: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(stat) = h.raw("show stat -1 4 -1").await {
                let rows: Vec<&str> = stat.lines().skip(1).filter(|l| !l.is_empty()).collect();
                if !rows.is_empty()
                    && rows.iter().all(|r| {
                        r.split(',')
                            .nth(17)
                            .is_some_and(|s| s == "UP" || s == "no check" || s.starts_with("MAINT"))
                    })
                {
                    return h;
                }
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not come up: {}",
                h.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `srv_agent_state` of `backend/server` (0x04: the agent check runs).
    pub async fn agent_state(&self, backend: &str, server: &str) -> u32 {
        let state = self
            .raw(&format!("show servers state {backend}"))
            .await
            .expect("show servers state");
        state
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| f.len() > 14 && f[1] == backend && f[3] == server)
            .map(|f| f[14].parse().expect("agent state"))
            .unwrap_or_else(|| panic!("{backend}/{server} missing from {state}"))
    }

    pub async fn start(bin: &Path, layout: &Layout) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let admin_sock = dir.path().join("admin.sock");
        let user_sock = dir.path().join("user.sock");
        let tcp_admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let frontend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut cfg = format!(
            "global\n  stats socket {} level admin\n  stats socket {} level user\n  stats socket ipv4@{tcp_admin} level admin\n  maxconn 2000\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  retries 0\n\
             frontend fe\n  bind {frontend}\n  default_backend {}\n",
            admin_sock.display(),
            user_sock.display(),
            layout.backends[0].0
        );
        let mut frontends = Vec::new();
        for b in &layout.fronted {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            cfg.push_str(&format!(
                "frontend fe-{b}\n  bind {addr}\n  default_backend {b}\n"
            ));
            frontends.push((b.clone(), addr));
        }
        for (i, (name, servers)) in layout.backends.iter().enumerate() {
            cfg.push_str(&format!("backend {name}\n  balance roundrobin\n"));
            for (s, addr) in servers {
                cfg.push_str(&format!("  server {s} {addr} {}\n", layout.server_opts));
            }
            if i == 0 {
                for l in &layout.extra {
                    cfg.push_str(&format!("  {l}\n"));
                }
            }
        }
        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, &cfg).expect("write config");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("log file");
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn haproxy");
        let h = Self {
            child,
            dir,
            admin_sock,
            user_sock,
            tcp_admin,
            frontend,
            frontends,
        };
        // Ready when the socket answers and every checked server is UP
        // (servers without a check show `no check`).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(stat) = h.raw("show stat -1 4 -1").await {
                let rows: Vec<&str> = stat.lines().skip(1).filter(|l| !l.is_empty()).collect();
                if !rows.is_empty()
                    && rows
                        .iter()
                        .all(|r| matches!(r.split(',').nth(17), Some("UP" | "no check")))
                {
                    return h;
                }
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not come up: {}",
                h.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reloads HAProxy the usual way (`haproxy -f cfg -sf <old pid>`): a
    /// new process takes over the sockets and the old one finishes. Runtime
    /// changes (a server set to DRAIN or MAINT) are forgotten.
    pub async fn reload(&mut self, bin: &Path) {
        let old = self.child.id();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("haproxy.log"))
            .expect("log file");
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(self.dir.path().join("haproxy.cfg"))
            .arg("-sf")
            .arg(old.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn haproxy for the reload");
        let mut previous = std::mem::replace(&mut self.child, child);
        let deadline = Instant::now() + Duration::from_secs(15);
        let new_pid = format!("Pid: {}", self.child.id());
        loop {
            if let Ok(info) = self.raw("show info").await {
                if info.lines().any(|l| l.trim() == new_pid) {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the reloaded haproxy did not answer: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The old process exits once its connections are done.
        let _status = tokio::task::spawn_blocking(move || previous.wait()).await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// Kills this HAProxy (by its pid) and waits for it.
    pub fn kill(&mut self) {
        // Only our own child, by pid; an error means it is already gone.
        if self.child.kill().is_ok() {
            self.child.wait().expect("wait for haproxy");
        }
    }

    /// Sends a raw command on the admin socket, bypassing the library.
    pub async fn raw(&self, cmd: &str) -> std::io::Result<String> {
        let mut s = UnixStream::connect(&self.admin_sock).await?;
        s.write_all(format!("{cmd}\n").as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// `(status, srv_admin_state)` of `backend/server`, read raw.
    pub async fn server(&self, backend: &str, server: &str) -> (String, u32) {
        let stat = self
            .raw(&format!("show stat {backend} 4 -1"))
            .await
            .expect("show stat");
        let status = stat
            .lines()
            .find(|l| l.starts_with(&format!("{backend},{server},")))
            .and_then(|l| l.split(',').nth(17))
            .unwrap_or_else(|| panic!("{backend}/{server} missing from {stat}"))
            .to_owned();
        let state = self
            .raw(&format!("show servers state {backend}"))
            .await
            .expect("show servers state");
        let admin = state
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| f.len() > 6 && f[1] == backend && f[3] == server)
            .map(|f| f[6].parse().expect("admin state"))
            .unwrap_or_else(|| panic!("{backend}/{server} missing from {state}"));
        (status, admin)
    }

    pub fn node(&self, name: &str) -> Node {
        Node::unix(&self.admin_sock).named(name)
    }

    pub fn balancer(&self, backends: &[&str]) -> HaproxyBalancer {
        let mut b = HaproxyBalancer::builder()
            .node(self.node("lb-a"))
            .retry(quick_retry());
        for x in backends {
            b = b.backend(*x);
        }
        b.build().expect("valid balancer")
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HAProxy agent check: answers every connection with one line.
pub struct Agent {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Agent {
    pub async fn start(reply: &str) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind agent");
        let addr = l.local_addr().expect("addr");
        let line = format!("{reply}\n");
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                let _ = s.write_all(line.as_bytes()).await;
            }
        });
        Self { addr, task }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `f` every 10 ms until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fake runtime API socket: records every byte received and answers each
/// connection with `reply` (or nothing, or hangs).
pub struct FakeSocket {
    pub path: PathBuf,
    pub received: Arc<Mutex<Vec<String>>>,
    pub connections: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
    task: JoinHandle<()>,
}

/// What a [`FakeSocket`] does with each connection.
#[derive(Clone)]
pub enum FakeReply {
    /// Writes these bytes, then closes.
    Bytes(Vec<u8>),
    /// Never answers, keeps the connection open.
    Hang,
    /// Answers lines starting with `show` with these bytes, hangs on any
    /// other line (a `set` whose reply never comes).
    ShowThenHang(Vec<u8>),
    /// Answers with the bytes of the first prefix the line starts with
    /// (nothing when none does), then closes.
    ByPrefix(Vec<(String, Vec<u8>)>),
}

impl FakeSocket {
    pub fn start(reply: FakeReply) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fake.sock");
        let listener = UnixListener::bind(&path).expect("bind fake socket");
        let received: Arc<Mutex<Vec<String>>> = Arc::default();
        let connections: Arc<AtomicUsize> = Arc::default();
        let (rx, cx) = (received.clone(), connections.clone());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                cx.fetch_add(1, Ordering::SeqCst);
                let mut buf = vec![0u8; 65536];
                let n = s.read(&mut buf).await.unwrap_or(0);
                rx.lock()
                    .expect("lock")
                    .push(String::from_utf8_lossy(&buf[..n]).to_string());
                match &reply {
                    FakeReply::Bytes(b) => {
                        let _ = s.write_all(b).await;
                    }
                    FakeReply::Hang => held.push(s),
                    FakeReply::ByPrefix(map) => {
                        if let Some((_, b)) =
                            map.iter().find(|(p, _)| buf[..n].starts_with(p.as_bytes()))
                        {
                            let _ = s.write_all(b).await;
                        }
                    }
                    FakeReply::ShowThenHang(b) => {
                        if buf[..n].starts_with(b"show") {
                            let _ = s.write_all(b).await;
                        } else {
                            held.push(s);
                        }
                    }
                }
            }
        });
        Self {
            path,
            received,
            connections,
            _dir: dir,
            task,
        }
    }
}

impl Drop for FakeSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts responses by backend name.
pub fn tally(names: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for n in names {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
}
