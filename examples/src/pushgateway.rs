//! A real Prometheus Pushgateway on loopback for the tests (Debian's
//! `prometheus-pushgateway`), and a reader of what it holds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::BoxResult;

/// The Pushgateway binary: `HYGIENE_PUSHGATEWAY_BIN`, else
/// `prometheus-pushgateway` or `pushgateway` on the `PATH` or in /usr/bin.
pub fn pushgateway_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HYGIENE_PUSHGATEWAY_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .flat_map(|d| [d.join("prometheus-pushgateway"), d.join("pushgateway")])
        .find(|p| p.is_file())
}

/// A running Pushgateway, killed when dropped.
#[derive(Debug)]
pub struct Pushgateway {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// One HTTP/1.0 GET on loopback: status and body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

impl Pushgateway {
    /// Starts `bin` on a free loopback port with its persistence in a
    /// temporary directory, and waits until it is ready.
    pub fn start(bin: &std::path::Path) -> BoxResult<Self> {
        let dir = tempfile::tempdir()?;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut child = Command::new(bin)
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!(
                "--persistence.file={}",
                dir.path().join("pushgateway.data").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok((200, _)) = get(addr, "/-/ready") {
                break;
            }
            if let Some(status) = child.try_wait()? {
                return Err(format!("{} exited at start ({status})", bin.display()).into());
            }
            if Instant::now() > deadline {
                let _ignored = child.kill();
                return Err(format!("{} did not become ready on {addr}", bin.display()).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            child,
            addr,
            _dir: dir,
        })
    }

    /// Its base URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it exposes for Prometheus to scrape (`/metrics`).
    pub fn metrics(&self) -> BoxResult<String> {
        match get(self.addr, "/metrics")? {
            (200, body) => Ok(body),
            (status, body) => Err(format!("GET /metrics: {status}: {body}").into()),
        }
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
    }
}

/// The value of the sample `name{labels…}` whose labels include every
/// `k="v"` of `labels`, in Prometheus's text format.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}
