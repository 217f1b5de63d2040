//! What HAProxy itself shows, sampled every 20 ms from its runtime API
//! (`show stat`), beside whether each service runs: the outside view a
//! benchmark measures the rollout against, independent of the engine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use crate::hello::HelloService;
use crate::BoxResult;

/// One server in one sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// HAProxy's `status` column (`UP`, `DRAIN`, `MAINT`, `DOWN 1/2`, …).
    pub status: String,
    /// `scur + qcur`.
    pub conns: u64,
    /// The service process answers (the maintenance has not stopped it).
    pub running: bool,
}

/// One sample of every server.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was read.
    pub at: Instant,
    /// By server name.
    pub servers: BTreeMap<String, Seen>,
}

/// A running monitor.
#[derive(Debug)]
pub struct Monitor {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    sampler: Sampler,
}

/// One reading of the socket and the services.
#[derive(Debug, Clone)]
struct Sampler {
    socket: PathBuf,
    backend: String,
    services: Vec<Arc<HelloService>>,
}

impl Sampler {
    async fn sample(&self) -> Option<Sample> {
        let mut servers = read(&self.socket, &self.backend).await.ok()?;
        for s in &self.services {
            if let Some(seen) = servers.get_mut(s.name()) {
                seen.running = s.is_running();
            }
        }
        Some(Sample {
            at: Instant::now(),
            servers,
        })
    }
}

/// Per server, the phases as HAProxy and the service showed them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    /// First shown `DRAIN` or `MAINT`.
    pub out: Option<Instant>,
    /// First shown out with no connection left.
    pub drained: Option<Instant>,
    /// The service stopped (the maintenance began).
    pub stopped: Option<Instant>,
    /// The service answered again (the maintenance ended).
    pub started: Option<Instant>,
    /// First shown back (neither `DRAIN` nor `MAINT`) after that.
    pub enabled: Option<Instant>,
    /// First shown plain `UP` after that (a fresh check passed).
    pub up: Option<Instant>,
}

impl Phases {
    /// Drain (shown out → no connection) + maintenance (stopped → started)
    /// + return (shown back → `UP`): the time the physics takes.
    pub fn ideal(&self) -> Option<Duration> {
        Some(
            self.drained?.saturating_duration_since(self.out?)
                + self.started?.saturating_duration_since(self.stopped?)
                + self.up?.saturating_duration_since(self.enabled?),
        )
    }
}

impl Monitor {
    /// Samples `backend` on the admin socket every `every`.
    pub fn start(
        socket: &Path,
        backend: &str,
        services: &[Arc<HelloService>],
        every: Duration,
    ) -> Self {
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let stop = CancellationToken::new();
        let sampler = Sampler {
            socket: PathBuf::from(socket),
            backend: backend.to_owned(),
            services: services.to_vec(),
        };
        let (out, token, s) = (Arc::clone(&samples), stop.clone(), sampler.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = token.cancelled() => return,
                }
                if let Some(sample) = s.sample().await {
                    out.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(sample);
                }
            }
        });
        Self {
            samples,
            stop,
            task,
            sampler,
        }
    }

    /// Stops sampling and returns the samples.
    /// Takes one last sample first: on a busy machine the 20 ms ticks
    /// may not have run between the last server showing `UP` (which ended
    /// the run) and now.
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.cancel();
        let _ended = self.task.await;
        let last = self.sampler.sample().await;
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        samples.extend(last);
        samples
    }
}

/// The phases of `server` in `samples`: its first maintenance cycle.
pub fn phases(samples: &[Sample], server: &str) -> Phases {
    let mut p = Phases::default();
    for s in samples {
        let Some(seen) = s.servers.get(server) else {
            continue;
        };
        let out = seen.status.starts_with("DRAIN") || seen.status.starts_with("MAINT");
        if p.out.is_none() {
            if out {
                p.out = Some(s.at);
            } else {
                continue;
            }
        }
        if p.drained.is_none() {
            if out && seen.conns == 0 {
                p.drained = Some(s.at);
            }
            if p.drained.is_none() {
                continue;
            }
        }
        if p.stopped.is_none() {
            if !seen.running {
                p.stopped = Some(s.at);
            }
            continue;
        }
        if p.started.is_none() {
            if seen.running {
                p.started = Some(s.at);
            } else {
                continue;
            }
        }
        if p.enabled.is_none() {
            if !out {
                p.enabled = Some(s.at);
            } else {
                continue;
            }
        }
        if p.up.is_none() && seen.status == "UP" {
            p.up = Some(s.at);
            break;
        }
    }
    p
}

/// The rows of a `show stat` command, each as column name → value.
pub async fn show_stat(socket: &Path, command: &str) -> BoxResult<Vec<BTreeMap<String, String>>> {
    let mut s = UnixStream::connect(socket).await?;
    s.write_all(format!("{command}\n").as_bytes()).await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    let (header, rows) = text.split_once('\n').ok_or("empty `show stat` reply")?;
    let csv_text = format!("{}\n{rows}", header.trim_start_matches("# "));
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(csv_text.as_bytes());
    let cols = rdr.headers()?.clone();
    let mut out = Vec::new();
    for row in rdr.records() {
        let row = row?;
        out.push(
            cols.iter()
                .zip(row.iter())
                .map(|(c, v)| (c.to_owned(), v.to_owned()))
                .collect(),
        );
    }
    Ok(out)
}

/// A number column of a `show stat` row (0 when empty).
pub fn number(row: &BTreeMap<String, String>, column: &str) -> u64 {
    row.get(column).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// One `show stat <backend> 4 -1`, by server.
async fn read(socket: &Path, backend: &str) -> BoxResult<BTreeMap<String, Seen>> {
    let mut out = BTreeMap::new();
    for row in show_stat(socket, &format!("show stat {backend} 4 -1")).await? {
        let text = |c: &str| row.get(c).cloned().unwrap_or_default();
        out.insert(
            text("svname"),
            Seen {
                status: text("status"),
                conns: number(&row, "qcur") + number(&row, "scur"),
                running: true,
            },
        );
    }
    Ok(out)
}
