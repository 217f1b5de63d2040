//! One HAProxy node of the soak's HA pair: its own configuration, admin
//! socket, master socket and frontend; run in master-worker mode as
//! Debian's systemd unit runs it (`haproxy -W -S master.sock`), reloaded
//! the way `systemctl reload` does it (SIGUSR2 to the master: a new worker
//! takes over the listeners, the old one finishes its requests), killed
//! (the whole process group) and started again; read through the raw
//! runtime API, independently of the `hygiene-haproxy` crate.

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
    master: PathBuf,
    frontend: SocketAddr,
    checks: Checks,
    /// The master process (its pid is the process group's).
    child: Option<Child>,
    /// The current worker's pid.
    worker: Option<u32>,
    /// The worker a reload replaced: it finishes its requests, then exits.
    old_worker: Option<u32>,
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
            master: dir.join("master.sock"),
            frontend,
            checks,
            child: None,
            worker: None,
            old_worker: None,
            banked: HaCounters::default(),
            last: HaCounters::default(),
        };
        n.write_config(servers)?;
        n.spawn().await?;
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

    /// Its master CLI socket.
    pub fn master_socket(&self) -> &Path {
        &self.master
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

    /// Starts the master (which starts a worker) and waits for the worker.
    async fn spawn(&mut self) -> BoxResult<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("haproxy.log"))?;
        let _stale = std::fs::remove_file(&self.master);
        let child = Command::new(&self.bin)
            .arg("-W")
            .arg("-db")
            .arg("-S")
            .arg(&self.master)
            .arg("-f")
            .arg(self.cfg_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        self.worker = None;
        self.wait_new_worker(Duration::from_secs(10)).await
    }

    /// Waits until a worker other than the last one answers on the admin
    /// socket.
    async fn wait_new_worker(&mut self, within: Duration) -> BoxResult<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(info) = self.raw("show info").await {
                let pid = info
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("Pid: "))
                    .and_then(|p| p.trim().parse::<u32>().ok());
                if pid.is_some() && pid != self.worker {
                    self.old_worker = self.worker;
                    self.worker = pid;
                    return Ok(());
                }
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    self.child = None;
                    return Err(format!(
                        "{}: haproxy exited with {status}: {}",
                        self.name,
                        self.log()
                    )
                    .into());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{}: no new haproxy worker within {} ms",
                    self.name,
                    within.as_millis()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Sends `signal` to the master (`-USR2`) or, with `group`, to every
    /// process of the node (`-KILL`).
    fn signal(&self, signal: &str, group: bool) -> BoxResult<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .ok_or("the node is down")?;
        let target = if group {
            format!("-{pid}")
        } else {
            pid.to_string()
        };
        let ok = std::process::Command::new("kill")
            .arg(signal)
            .arg("--")
            .arg(&target)
            .status()?
            .success();
        if ok {
            Ok(())
        } else {
            Err(format!("kill {signal} {target} failed").into())
        }
    }

    /// The tail of the node's log.
    pub fn log(&self) -> String {
        let all = std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default();
        let start = all.len().saturating_sub(2000);
        all.get(start..).unwrap_or_default().to_owned()
    }

    /// Reloads with the current configuration file, as `systemctl reload`
    /// does: banks the counters first (the new worker starts from zero),
    /// then SIGUSR2 to the master; the old worker finishes its requests.
    pub async fn reload(&mut self) -> BoxResult<()> {
        self.bank().await;
        // Sent again if no new worker answers within 2 s (a master busy
        // starting may not act on it).
        for _ in 0..4 {
            self.signal("-USR2", false)?;
            if self.wait_new_worker(Duration::from_secs(2)).await.is_ok() {
                return Ok(());
            }
        }
        Err(format!("{}: SIGUSR2 gave no new worker: {}", self.name, self.log()).into())
    }

    /// The worker the last reload replaced: until it exits it finishes its
    /// requests and closes its idle keep-alive connections (a client
    /// sending on one just then sees a reset).
    pub fn old_worker(&self) -> Option<u32> {
        self.old_worker
    }

    /// Kills every process of the node (SIGKILL to its process group),
    /// after banking its counters.
    pub async fn kill(&mut self) {
        self.bank().await;
        self.kill_all().await;
        self.worker = None;
    }

    /// SIGKILL to the process group; the master alone if that fails.
    async fn kill_all(&mut self) {
        let group = self.signal("-KILL", true);
        if let Some(mut c) = self.child.take() {
            if group.is_err() {
                let _sent = c.start_kill();
            }
            let _status = c.wait().await;
        }
    }

    /// Starts a fresh node after [`Node::kill`].
    pub async fn restart(&mut self) -> BoxResult<()> {
        self.spawn().await
    }

    /// Stops every process of the node.
    pub async fn stop(&mut self) {
        self.kill_all().await;
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

/// Waits (at most `within`) until process `pid` has exited.
pub(super) async fn wait_gone(pid: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
