//! Test support (feature `test-support`): a real etcd of this process on
//! loopback — free ports, a temporary data directory, killed when dropped.
//!
//! etcd is found through `HYGIENE_ETCD_BIN`, then `etcd` on `PATH`, then
//! `/usr/bin/etcd` (Debian's `etcd-server`, installed by `./scripts/test`).
//! The server runs with a 10 ms heartbeat and a 100 ms election timeout, so
//! it elects itself at once and accepts leases of one second (etcd raises a
//! shorter TTL to 1.5 election timeouts).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hygiene_core::{Error, Result};
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// Where an etcd server binary is, if anywhere.
pub fn find_etcd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HYGIENE_ETCD_BIN") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("etcd"))
                .find(|p| p.is_file())
        })
        .or_else(|| {
            let p = PathBuf::from("/usr/bin/etcd");
            p.is_file().then_some(p)
        })
}

/// TLS files for a server: its certificate and key (PEM), and, for mutual
/// TLS, the CA that client certificates must chain to.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server's certificate (PEM), valid for `127.0.0.1`.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

fn etcd_err(message: impl Into<String>) -> Error {
    Error::unavailable("etcd", message)
}

/// A real etcd server of this process, killed when dropped.
#[derive(Debug)]
pub struct EtcdServer {
    bin: PathBuf,
    child: Option<Child>,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<ServerTls>,
}

impl EtcdServer {
    /// Starts an etcd on free loopback ports (plain HTTP) and waits (up to
    /// 30 s) until it answers.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when etcd is not installed or does not answer.
    pub async fn start() -> Result<Self> {
        Self::start_with(None).await
    }

    /// The same, serving TLS with `tls`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when etcd is not installed or does not answer.
    pub async fn start_with(tls: Option<ServerTls>) -> Result<Self> {
        let bin = find_etcd().ok_or_else(|| {
            etcd_err("etcd not found: run ./scripts/test, which installs Debian's etcd-server, or set HYGIENE_ETCD_BIN")
        })?;
        let dir = tempfile::Builder::new()
            .prefix("hygiene-etcd-")
            .tempdir()
            .map_err(|e| etcd_err(format!("no temporary directory: {e}")))?;
        let mut server = Self {
            bin,
            child: None,
            client_port: free_port()?,
            peer_port: free_port()?,
            dir,
            tls,
        };
        let mut tries = 0;
        loop {
            match server.launch().await {
                Ok(()) => return Ok(server),
                // A free port may be taken between our probe and etcd's
                // bind: try again on new ports.
                Err(_) if tries < 2 && server.child.is_none() => {
                    tries += 1;
                    let _ = std::fs::remove_dir_all(server.dir.path().join("data"));
                    server.client_port = free_port()?;
                    server.peer_port = free_port()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The client URL: `http://127.0.0.1:<port>` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The data and log directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What etcd wrote on stderr so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Kills the server (the data stays: [`EtcdServer::restart`] brings it
    /// back with every key and lease it had).
    ///
    /// # Errors
    /// When the process cannot be signalled.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()
                .await
                .map_err(|e| etcd_err(format!("cannot stop etcd: {e}")))?;
        }
        Ok(())
    }

    /// Starts the server again on the same ports and data.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when it does not answer.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.launch().await
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing
    /// answers — a store behind a partition.
    ///
    /// # Errors
    /// When the process cannot be signalled.
    pub fn pause(&self) -> Result<()> {
        self.signal(rustix::process::Signal::STOP)
    }

    /// Lets a frozen server run again (SIGCONT).
    ///
    /// # Errors
    /// When the process cannot be signalled.
    pub fn resume(&self) -> Result<()> {
        self.signal(rustix::process::Signal::CONT)
    }

    fn signal(&self, sig: rustix::process::Signal) -> Result<()> {
        let pid = self
            .pid()
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| etcd_err("etcd is not running"))?;
        rustix::process::kill_process(pid, sig)
            .map_err(|e| etcd_err(format!("cannot signal etcd: {e}")))
    }

    async fn launch(&mut self) -> Result<()> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .map_err(|e| etcd_err(format!("cannot create etcd.log: {e}")))?;
        // Readiness is read from what this launch writes, not an earlier one.
        let log_from = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--name=hygiene-test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=hygiene-test={peer}"))
            .arg("--heartbeat-interval=10")
            .arg("--election-timeout=100")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr");
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()));
            if let Some(ca) = &tls.client_ca {
                cmd.arg("--client-cert-auth")
                    .arg(format!("--trusted-ca-file={}", ca.display()));
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| etcd_err(format!("cannot start {}: {e}", self.bin.display())))?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(etcd_err(format!(
                    "{} exited ({status}): {}",
                    self.bin.display(),
                    tail(&self.log())
                )));
            }
            if self.ready(log_from).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(etcd_err(format!(
                    "{} did not answer on {client} within 30 s: {}",
                    self.bin.display(),
                    tail(&self.log())
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the server has a leader and serves its API: the log says
    /// it serves clients (etcd 3.4: "serving client traffic …"; later:
    /// "ready to serve client requests"), and its client port takes
    /// connections.
    async fn ready(&self, log_from: u64) -> bool {
        let all = self.log();
        let log = all
            .get(usize::try_from(log_from).unwrap_or(0)..)
            .unwrap_or("");
        (log.contains("serving client traffic") || log.contains("ready to serve client requests"))
            && tokio::net::TcpStream::connect(("127.0.0.1", self.client_port))
                .await
                .is_ok()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| etcd_err(format!("no free port: {e}")))
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}
