//! A real Caddy (Debian's 2.6.2, `HYGIENE_CADDY_BIN`) on loopback, for the
//! Caddy tests and `bench-caddy-reloads`: server `web` on a free port, one
//! route to the `reverse_proxy` handler `@id: web` over the given dials,
//! active health checks on `/health` every 300 ms, no retries (Caddy hides
//! no error), its admin API on another free port, no autosave.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::BoxResult;

/// The Caddy binary: `HYGIENE_CADDY_BIN` or `/usr/bin/caddy`, if it runs.
#[must_use]
pub fn caddy_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("HYGIENE_CADDY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/caddy"));
    Command::new(&bin)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        .then_some(bin)
}

/// Linux's `net.ipv4.tcp_migrate_req` (`None` where it cannot be read).
///
/// Caddy (2.6 and later) opens a new `SO_REUSEPORT` listener at every
/// configuration change and closes the old one: without this setting the
/// kernel resets the connections still waiting in the old listener's
/// accept queue; with it (1, Linux 5.14 and later) it hands them to the
/// new listener.
#[must_use]
pub fn tcp_migrate_req() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn free_port() -> BoxResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running Caddy, killed on drop.
#[derive(Debug)]
pub struct Caddy {
    /// The admin API's base URL (`http://127.0.0.1:port`).
    pub admin: String,
    /// Where server `web` listens.
    pub http: std::net::SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Caddy {
    /// Starts `bin` in front of `dials` and waits (up to 5 s) for its admin
    /// API to answer.
    ///
    /// # Errors
    /// Caddy did not start or did not answer.
    pub async fn start(bin: &Path, dials: &[String]) -> BoxResult<Self> {
        Self::start_with(bin, dials, serde_json::Map::new()).await
    }

    /// As [`start`](Self::start), with more keys in the `http` app
    /// (`grace_period`, `shutdown_delay`).
    ///
    /// # Errors
    /// Caddy did not start or did not answer.
    pub async fn start_with(
        bin: &Path,
        dials: &[String],
        http_app: serde_json::Map<String, Value>,
    ) -> BoxResult<Self> {
        let dir = tempfile::tempdir()?;
        let admin = format!("127.0.0.1:{}", free_port()?);
        let http: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let cfg = json!({
            "admin": {"listen": admin, "config": {"persist": false}},
            "logging": {"logs": {"default": {"level": "ERROR"}}},
            "apps": {"http": {"servers": {"web": {
                "listen": [http.to_string()],
                "automatic_https": {"disable": true},
                "routes": [{"handle": [{
                    "@id": "web",
                    "handler": "reverse_proxy",
                    "upstreams": dials.iter().map(|d| json!({"dial": d})).collect::<Vec<_>>(),
                    "health_checks": {"active": {"uri": "/health", "interval": "300ms", "timeout": "250ms"}},
                }]}],
            }}}},
        });
        let mut cfg = cfg;
        if let Some(app) = cfg["apps"]["http"].as_object_mut() {
            app.extend(http_app);
        }
        let path = dir.path().join("caddy.json");
        std::fs::write(&path, cfg.to_string())?;
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&path)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let caddy = Self {
            admin: format!("http://{admin}"),
            http,
            child,
            _dir: dir,
        };
        for _ in 0..100 {
            if caddy.config().await.is_some() {
                return Ok(caddy);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("caddy did not answer on {}", caddy.admin).into())
    }

    /// The whole running configuration (`GET /config/`), or `None` when
    /// the admin API does not answer.
    pub async fn config(&self) -> Option<Value> {
        let admin = self.admin.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new("curl")
                .args(["-sf", &format!("{admin}/config/")])
                .output()
                .ok()?;
            serde_json::from_slice(&out.stdout).ok()
        })
        .await
        .ok()
        .flatten()
    }

    /// `PATCH`es `value` at `path` under `/config/` (a reload of Caddy's
    /// HTTP app, as every change through the admin API is).
    ///
    /// # Errors
    /// curl could not run, or the admin API refused the change.
    pub async fn patch(&self, path: &str, value: Value) -> BoxResult<()> {
        let url = format!("{}/config/{path}", self.admin);
        let status = tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args([
                    "-sf",
                    "-X",
                    "PATCH",
                    "-H",
                    "Content-Type: application/json",
                    &url,
                ])
                .arg("-d")
                .arg(value.to_string())
                .status()
        })
        .await??;
        if status.success() {
            Ok(())
        } else {
            Err(format!("caddy refused the change at {path}: {status}").into())
        }
    }
}
