//! A real HAProxy process for the scenarios, with its own configuration and
//! admin socket in a temporary directory; killed when dropped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::BoxResult;

/// The HAProxy binary: `HYGIENE_HAPROXY_BIN`, else `haproxy` on the PATH or
/// in `/usr/sbin`.
pub fn haproxy_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HYGIENE_HAPROXY_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
}

/// A running HAProxy.
#[derive(Debug)]
pub struct Haproxy {
    child: Child,
    socket: PathBuf,
    frontend: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Health-check timing of the servers.
#[derive(Debug, Clone, Copy)]
pub struct Checks {
    /// Interval between checks.
    pub inter: Duration,
    /// Failed checks before a server is DOWN.
    pub fall: u32,
    /// Passed checks before a server is UP.
    pub rise: u32,
}

impl Default for Checks {
    fn default() -> Self {
        Self {
            inter: Duration::from_millis(200),
            fall: 1,
            rise: 2,
        }
    }
}

impl Haproxy {
    /// Starts HAProxy with one backend `web` holding `servers`
    /// (name, address), `retries 0`, no `option redispatch` and health
    /// checks on: HAProxy must not hide the errors a bad rollout causes.
    pub async fn start(
        bin: &Path,
        servers: &[(String, SocketAddr)],
        checks: Checks,
    ) -> BoxResult<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("admin.sock");
        let frontend: SocketAddr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?
        };
        let mut cfg = String::new();
        writeln!(
            cfg,
            "global\n    stats socket {} mode 600 level admin\n    maxconn 4000\n",
            socket.display()
        )?;
        writeln!(
            cfg,
            "defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    timeout http-keep-alive 10s\n    retries 0\n"
        )?;
        writeln!(
            cfg,
            "frontend fe\n    bind {frontend}\n    default_backend web\n"
        )?;
        writeln!(
            cfg,
            "backend web\n    balance roundrobin\n    option httpchk GET /health\n    default-server check inter {}ms fall {} rise {}",
            checks.inter.as_millis(),
            checks.fall,
            checks.rise
        )?;
        // `X-Server: <name>` sends a request to that server while it is in
        // service (a benchmark's long request in flight on a chosen server).
        for (name, _) in servers {
            writeln!(
                cfg,
                "    use-server {name} if {{ req.hdr(x-server) -m str {name} }}"
            )?;
        }
        for (name, addr) in servers {
            writeln!(cfg, "    server {name} {addr}")?;
        }
        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg)?;
        let mut child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Not in the terminal's process group: Ctrl-C is for the demo,
            // which must keep HAProxy up until every service is back.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if socket.exists() && tokio::net::TcpStream::connect(frontend).await.is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _read = e.read_to_string(&mut err).await;
                }
                return Err(format!("haproxy exited with {status}: {err}").into());
            }
            if tokio::time::Instant::now() > deadline {
                return Err("haproxy did not open its socket and frontend within 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            child,
            socket,
            frontend,
            _dir: dir,
        })
    }

    /// The admin socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The frontend address the load goes to.
    pub fn frontend(&self) -> SocketAddr {
        self.frontend
    }

    /// Stops HAProxy.
    pub async fn stop(&mut self) {
        if self.child.start_kill().is_ok() {
            let _status = self.child.wait().await;
        }
    }
}
