//! One HAProxy node of the soak's HA pair: its own configuration, admin
//! socket and frontend; reloaded the way an operator does it (`-x` to take
//! over the listeners, `-sf` to let the old process finish), killed and
//! started again; read through the raw runtime API, independently of the
//! `hygiene-haproxy` crate.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use crate::haproxy::Checks;
use crate::BoxResult;

/// HAProxy's own error counters of backend `web` (`show stat`, `BACKEND` row).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HaCounters {
    /// HTTP 5xx responses.
    pub hrsp_5xx: u64,
    /// Connection errors to a server.
    pub econ: u64,
    /// Response errors from a server.
    pub eresp: u64,
    /// Transfers aborted by the server.
    pub srv_abrt: u64,
}

impl HaCounters {
    /// Adds `other`.
    pub fn add(&mut self, other: &Self) {
        self.hrsp_5xx += other.hrsp_5xx;
        self.econ += other.econ;
        self.eresp += other.eresp;
        self.srv_abrt += other.srv_abrt;
    }

    /// `self - earlier`, per counter (0 where a counter went back).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            hrsp_5xx: self.hrsp_5xx.saturating_sub(earlier.hrsp_5xx),
            econ: self.econ.saturating_sub(earlier.econ),
            eresp: self.eresp.saturating_sub(earlier.eresp),
            srv_abrt: self.srv_abrt.saturating_sub(earlier.srv_abrt),
        }
    }

    /// Sum of the counters.
    pub fn total(&self) -> u64 {
        self.hrsp_5xx + self.econ + self.eresp + self.srv_abrt
    }
}

/// One server as a node shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView {
    /// The server's name.
    pub name: String,
    /// `srv_admin_state` (0: in rotation; drain 0x08, maint 0x01, …).
    pub admin: u32,
    /// `show stat` status (`UP`, `DOWN`, `DRAIN`, `MAINT`, `UP 1/2`, …).
    pub status: String,
}

impl ServerView {
    /// Out of rotation by an administrative state (drain or maintenance).
    pub fn is_out(&self) -> bool {
        self.admin != 0
    }

    /// In rotation and up (a plain `UP`: no check pending).
    pub fn is_serving(&self) -> bool {
        self.admin == 0 && self.status == "UP"
    }
}

/// A HAProxy node.
#[derive(Debug)]
pub struct Node {
    name: String,
    bin: PathBuf,
    dir: PathBuf,
    socket: PathBuf,
    frontend: SocketAddr,
    checks: Checks,
    child: Option<Child>,
    /// Processes a reload replaced, finishing their connections.
    old: Vec<Child>,
    /// Counters of processes gone, plus the last reading of this one.
    banked: HaCounters,
    last: HaCounters,
}

impl Node {
    /// Writes the configuration for `servers` into `dir` and starts HAProxy.
    pub async fn start(
        name: &str,
        bin: &Path,
        dir: &Path,
        servers: &[(String, SocketAddr)],
        checks: Checks,
    ) -> BoxResult<Self> {
        std::fs::create_dir_all(dir)?;
        let frontend = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut n = Self {
            name: name.to_owned(),
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            socket: dir.join("admin.sock"),
            frontend,
            checks,
            child: None,
            old: Vec::new(),
            banked: HaCounters::default(),
            last: HaCounters::default(),
        };
        n.write_config(servers)?;
        n.spawn(None).await?;
        Ok(n)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its admin socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its frontend.
    pub fn frontend(&self) -> SocketAddr {
        self.frontend
    }

    /// Whether a process runs.
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    fn cfg_path(&self) -> PathBuf {
        self.dir.join("haproxy.cfg")
    }

    /// Writes the configuration: `retries 0`, no redispatch, checks on.
    pub fn write_config(&self, servers: &[(String, SocketAddr)]) -> BoxResult<()> {
        let mut cfg = String::new();
        writeln!(
            cfg,
            "global\n    stats socket {} mode 600 level admin expose-fd listeners\n    maxconn 4000\n",
            self.socket.display()
        )?;
        writeln!(
            cfg,
            "defaults\n    mode http\n    log stdout format raw local0\n    option httplog\n    option dontlog-normal\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    timeout http-keep-alive 10s\n    retries 0\n"
        )?;
        writeln!(
            cfg,
            "frontend fe\n    bind {}\n    default_backend web\n",
            self.frontend
        )?;
        writeln!(
            cfg,
            "backend web\n    balance roundrobin\n    option httpchk GET /health\n    default-server check inter {}ms fall {} rise {}",
            self.checks.inter.as_millis(),
            self.checks.fall,
            self.checks.rise
        )?;
        for (name, addr) in servers {
            writeln!(cfg, "    server {name} {addr}")?;
        }
        std::fs::write(self.cfg_path(), cfg)?;
        Ok(())
    }

    /// Starts a process; with `replace`, as a reload of that pid.
    async fn spawn(&mut self, replace: Option<u32>) -> BoxResult<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("haproxy.log"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-db").arg("-f").arg(self.cfg_path());
        if let Some(pid) = replace {
            cmd.arg("-x")
                .arg(&self.socket)
                .arg("-sf")
                .arg(pid.to_string());
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        let pid = child.id().ok_or("haproxy exited at once")?;
        let mut child = child;
        let deadline = Instant::now() + Duration::from_secs(10);
        let want = format!("Pid: {pid}");
        loop {
            if let Ok(info) = self.raw("show info").await {
                if info.lines().any(|l| l.trim() == want) {
                    break;
                }
            }
            if let Some(status) = child.try_wait()? {
                return Err(format!(
                    "{}: haproxy exited with {status}: {}",
                    self.name,
                    self.log()
                )
                .into());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{}: haproxy pid {pid} did not answer within 10 s",
                    self.name
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some(prev) = self.child.replace(child) {
            self.old.push(prev);
        }
        self.old.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        Ok(())
    }

    /// The tail of the node's log.
    pub fn log(&self) -> String {
        let all = std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default();
        let start = all.len().saturating_sub(2000);
        all.get(start..).unwrap_or_default().to_owned()
    }

    /// Reloads with the current configuration file: banks the counters
    /// first (the new process starts from zero), then starts a process
    /// that takes over the listeners and tells the old one to finish.
    pub async fn reload(&mut self) -> BoxResult<()> {
        self.bank().await;
        let old = self
            .child
            .as_ref()
            .and_then(Child::id)
            .ok_or("reload of a node that is down")?;
        self.spawn(Some(old)).await
    }

    /// Kills the process (SIGKILL), after banking its counters.
    pub async fn kill(&mut self) {
        self.bank().await;
        if let Some(mut c) = self.child.take() {
            if c.start_kill().is_ok() {
                let _status = c.wait().await;
            }
        }
    }

    /// Starts a fresh process after [`Node::kill`].
    pub async fn restart(&mut self) -> BoxResult<()> {
        self.spawn(None).await
    }

    /// Stops every process of the node.
    pub async fn stop(&mut self) {
        for mut c in self.child.take().into_iter().chain(self.old.drain(..)) {
            if c.start_kill().is_ok() {
                let _status = c.wait().await;
            }
        }
    }

    /// Adds the current process's counters to the bank and forgets them
    /// (before a reload or a kill resets them).
    async fn bank(&mut self) {
        if let Ok(now) = self.read_counters().await {
            self.last = now;
        }
        self.banked.add(&self.last);
        self.last = HaCounters::default();
    }

    /// Every error counter since the node started, across reloads and
    /// restarts (the running process's read now).
    pub async fn counters(&mut self) -> HaCounters {
        if self.child.is_some() {
            if let Ok(now) = self.read_counters().await {
                self.last = now;
            }
        }
        let mut c = self.banked;
        c.add(&self.last);
        c
    }

    async fn read_counters(&self) -> BoxResult<HaCounters> {
        let stat = self.raw("show stat").await?;
        let mut lines = stat.lines();
        let header: Vec<&str> = lines
            .next()
            .ok_or("empty show stat")?
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let row = lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|r| r.first() == Some(&"web") && r.get(1) == Some(&"BACKEND"))
            .ok_or("no web BACKEND row")?;
        let get = |name: &str| -> u64 {
            col(name)
                .and_then(|i| row.get(i))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(HaCounters {
            hrsp_5xx: get("hrsp_5xx"),
            econ: get("econ"),
            eresp: get("eresp"),
            srv_abrt: get("srv_abrt"),
        })
    }

    /// Every server of backend `web` as this node shows it.
    pub async fn servers(&self) -> BoxResult<Vec<ServerView>> {
        let out = self
            .raw("show servers state web;show stat web 4 -1")
            .await?;
        let mut views = Vec::new();
        let mut state_cols: Vec<String> = Vec::new();
        let mut stat_cols: Vec<String> = Vec::new();
        for line in out.lines() {
            if let Some(h) = line.strip_prefix("# be_id ") {
                state_cols = std::iter::once("be_id")
                    .chain(h.split_whitespace())
                    .map(str::to_owned)
                    .collect();
            } else if let Some(h) = line.strip_prefix("# pxname,") {
                stat_cols = std::iter::once("pxname")
                    .chain(h.split(','))
                    .map(str::to_owned)
                    .collect();
            } else if !stat_cols.is_empty() && line.starts_with("web,") {
                let f: Vec<&str> = line.split(',').collect();
                let at = |n: &str| stat_cols.iter().position(|c| c == n).and_then(|i| f.get(i));
                if let (Some(name), Some(status)) = (at("svname"), at("status")) {
                    if let Some(v) = views.iter_mut().find(|v: &&mut ServerView| v.name == *name) {
                        v.status = (*status).to_owned();
                    }
                }
            } else if !state_cols.is_empty() && stat_cols.is_empty() && !line.starts_with('#') {
                let f: Vec<&str> = line.split_whitespace().collect();
                let at = |n: &str| {
                    state_cols
                        .iter()
                        .position(|c| c == n)
                        .and_then(|i| f.get(i))
                };
                if let (Some(name), Some(admin)) = (at("srv_name"), at("srv_admin_state")) {
                    views.push(ServerView {
                        name: (*name).to_owned(),
                        admin: admin
                            .parse()
                            .map_err(|_| format!("bad admin state {admin:?}"))?,
                        status: String::new(),
                    });
                }
            }
        }
        if state_cols.is_empty() || stat_cols.is_empty() {
            return Err(format!("{}: unexpected reply: {out}", self.name).into());
        }
        Ok(views)
    }

    /// One raw runtime API exchange.
    pub async fn raw(&self, cmd: &str) -> BoxResult<String> {
        let io = async {
            let mut s = UnixStream::connect(&self.socket).await?;
            s.write_all(format!("{cmd}\n").as_bytes()).await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        Ok(tokio::time::timeout(Duration::from_secs(5), io)
            .await
            .map_err(|_| format!("{}: runtime API timed out", self.name))??)
    }
}
