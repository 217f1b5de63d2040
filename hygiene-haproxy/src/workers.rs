//! The requests a node's old workers still finish, counted through the
//! master CLI (see the crate docs, "Reloads and the master socket").

use tracing::debug;

use crate::client::Client;
use crate::config::HostMatch;
use crate::error::HaproxyError;
use crate::parse;
use crate::reply::reply_error;
use crate::snapshot::Snapshot;

/// Adds the in-flight requests of the node's old workers (processes a
/// reload replaced, still finishing theirs) to each server's count,
/// from the master CLI: `show proc`, then `@!<pid> show stat` for each
/// old worker. A row counts for the entry of the same backend and
/// server name *and* for every entry pointing to the same address (a
/// reload may have renamed or renumbered servers): an overcount only
/// makes a drain wait for requests that really run. A worker whose
/// reply is not a `show stat` counts nothing only once a second `show
/// proc` no longer lists it; otherwise, as for a cut reply, the whole
/// count is unavailable (retried).
pub(crate) async fn add_old_workers(
    master: &Client,
    snap: &mut Snapshot,
) -> Result<(), HaproxyError> {
    let workers = old_workers(master).await?;
    let unavailable = |message: String| HaproxyError::Unavailable {
        node: master.name().to_owned(),
        message,
        source: None,
    };
    let mut rows: Vec<parse::StatRow> = Vec::new();
    let mut unanswered = Vec::new();
    for w in &workers {
        let pid = w.pid;
        let version = match &w.version {
            Some(v) => Some(v.clone()),
            None => {
                let info = master.send(&format!("@!{pid} show info")).await?;
                parse::info_version(&info)
            }
        };
        if let Some(v) = version.as_deref() {
            if parse::major_minor(v).is_some_and(|mm| mm < (2, 5)) {
                return Err(unavailable(format!(
                    "old worker {pid} runs HAProxy {v}: before 2.5 a worker that is stopping lists no server in `show stat` (haproxy issue 1307), so the requests it still finishes cannot be counted; retried until it exits"
                )));
            }
        }
        let line = format!("@!{pid} show stat -1 4 -1");
        let raw = master.send(&line).await?;
        if !raw.trim_start().starts_with("# pxname") {
            unanswered.push((pid, raw.trim().to_owned()));
            continue;
        }
        let parsed = parse::parse_stat(&raw).map_err(|e| unavailable(format!("the reply of old worker {pid} to `{line}` is cut or malformed ({e:?}): its in-flight requests cannot be counted")))?;
        if parsed.is_empty() {
            // A worker of the old configuration has servers; a header
            // alone is a worker that no longer reports them (HAProxy
            // before 2.5 while stopping), never "no request".
            return Err(unavailable(format!(
                "old worker {pid} (HAProxy {}) lists no server in `{line}`: the requests it still finishes cannot be counted; retried until it exits",
                version.as_deref().unwrap_or("of unknown version")
            )));
        }
        rows.extend(parsed.into_iter().filter(|r| r.connections > 0));
    }
    if !unanswered.is_empty() {
        let still: Vec<u32> = old_workers(master).await?.iter().map(|w| w.pid).collect();
        if let Some((pid, reply)) = unanswered.iter().find(|(p, _)| still.contains(p)) {
            return Err(unavailable(format!("old worker {pid} runs but did not answer `show stat` ({reply:?}): its in-flight requests cannot be counted")));
        }
        debug!(master = master.name(), gone = ?unanswered, "old workers ended");
    }
    let pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();
    if rows.is_empty() {
        return Ok(());
    }
    debug!(node = %snap.node, old_workers = ?pids, rows = rows.len(), "old workers still serve");
    let host_of = |addr: &str| -> Option<(String, Option<u16>)> {
        let (a, p) = addr.rsplit_once(':')?;
        let a = a.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = match snap.host_match {
            HostMatch::AddressAndPort => Some(p.parse().ok()?),
            HostMatch::Address => None,
        };
        Some((a, port))
    };
    let mut add: Vec<(usize, usize, u64)> = Vec::new();
    for r in &rows {
        let host = r.addr.as_deref().and_then(host_of);
        for (b, (backend, entries)) in snap.backends.iter().enumerate() {
            for (k, e) in entries.iter().enumerate() {
                let same_name = *backend == r.backend && e.state.server == r.server;
                let same_host = host.is_some() && snap.host(e) == host;
                if same_name || same_host {
                    add.push((b, k, r.connections));
                }
            }
        }
    }
    for (b, k, n) in add {
        if let Some(e) = snap.backends.get_mut(b).and_then(|(_, v)| v.get_mut(k)) {
            e.stat.connections = e.stat.connections.saturating_add(n);
        }
    }
    Ok(())
}

async fn old_workers(master: &Client) -> Result<Vec<parse::OldWorker>, HaproxyError> {
    let raw = master.send("show proc").await?;
    parse::parse_old_workers(&raw).map_err(|e| reply_error(master.name(), "show proc", None, e))
}
