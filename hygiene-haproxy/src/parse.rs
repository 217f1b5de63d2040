//! Parsers of runtime API replies: framing of `;`-joined replies, `show
//! servers state`, `show stat` CSV (by header name, with the `csv` crate),
//! and classification of error lines. Pure functions: they never panic, on
//! any input (a proptest checks it).

use hygiene_core::{Health, TargetState};

/// `srv_admin_state` bits (HAProxy `SRV_ADMF_MAINT`): forced, inherited
/// (via a tracked server), DNS-resolution and hostname maintenance. The
/// configuration bit 0x04 (`disabled` in the config) is left out, as in
/// HAProxy: it stays set after `state ready` has put the server in service
/// (measured on 2.6: admin state 5 → 4, status `UP`).
const ADMF_ANY_MAINT: u32 = 0x01 | 0x02 | 0x20 | 0x40;
/// Forced and inherited drain.
const ADMF_ANY_DRAIN: u32 = 0x08 | 0x10;
/// The admin bits `set server … state ready` clears (forced maint, forced drain).
pub(crate) const ADMF_FORCED: u32 = 0x01 | 0x08;
/// Inherited maintenance: the server tracks another one that is in maint.
const ADMF_INHERITED_MAINT: u32 = 0x02;
/// `srv_check_state` bit `CHK_ST_ENABLED`: the health check is configured
/// *and* running (0x02 `CHK_ST_CONFIGURED` alone is a check stopped with
/// `disable health`; 0x08 `CHK_ST_PAUSED` is added during maintenance).
/// Measured on 2.6: `check` → 6, in MAINT → 14, `disable health` → 2, no
/// `check` (and tracking servers) → 0.
const CHK_ST_ENABLED: u32 = 0x04;
/// `srv_check_state` / `srv_agent_state` bit `CHK_ST_CONFIGURED`: the check
/// (or agent check) is in the configuration, running or stopped. Measured
/// on 2.6: `agent-check` → `srv_agent_state` 22 (0x16, with `CHK_ST_AGENT`
/// 0x10 and `CHK_ST_ENABLED`), 18 after `disable agent`, 0 without one.
const CHK_ST_CONFIGURED: u32 = 0x02;

/// An error line HAProxy answered instead of the expected reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReplyError {
    /// `No such backend.`, `Can't find backend.`, `No such proxy.`
    NoSuchBackend,
    /// `No such server.`
    NoSuchServer,
    /// `Permission denied`: the socket is not `level admin`.
    PermissionDenied,
    /// `Unknown command…`
    UnknownCommand(String),
    /// Anything else (first line, shortened).
    Other(String),
}

/// Why a reply could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// HAProxy answered with an error line.
    Reply(ReplyError),
    /// Truncated, garbled, or not in the expected format.
    Format(String),
}

fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    let line = s.lines().next().unwrap_or_default();
    if line.len() <= MAX {
        return line.to_owned();
    }
    let mut end = MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

/// Splits the reply to `count` `;`-joined commands into one body per
/// command. Each reply is its body followed by one empty line, so a `set
/// server` that worked is just `"\n"`. A reply that ends early is truncated;
/// bytes after the last reply are garbage: both are errors.
pub(crate) fn split_replies(raw: &str, count: usize) -> Result<Vec<&str>, String> {
    let mut out = Vec::with_capacity(count);
    let mut pos = 0;
    for i in 0..count {
        let start = pos;
        loop {
            let Some(nl) = raw[pos..].find('\n').map(|n| pos + n) else {
                return Err(format!(
                    "truncated reply: {} of {count} replies complete, {} bytes in all",
                    i,
                    raw.len()
                ));
            };
            let line_empty = nl == pos;
            pos = nl + 1;
            if line_empty {
                out.push(raw[start..nl].trim_end_matches('\n'));
                break;
            }
        }
    }
    if pos != raw.len() {
        return Err(format!(
            "unexpected data after the last of {count} replies: {:?}",
            shorten(&raw[pos..])
        ));
    }
    Ok(out)
}

/// Reads an error line, if the body is one. `None` for an empty body (the
/// success of a `set` command).
pub(crate) fn classify(body: &str) -> Option<ReplyError> {
    let first = body.lines().next()?.trim();
    if body.trim().is_empty() {
        return None;
    }
    Some(match first {
        "No such backend." | "Can't find backend." | "No such proxy." => ReplyError::NoSuchBackend,
        "No such server." => ReplyError::NoSuchServer,
        s if s.starts_with("Permission denied") => ReplyError::PermissionDenied,
        s if s.starts_with("Unknown command") => ReplyError::UnknownCommand(shorten(s)),
        s => ReplyError::Other(shorten(s)),
    })
}

/// One row of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerState {
    pub(crate) backend: String,
    pub(crate) server: String,
    pub(crate) addr: String,
    pub(crate) port: Option<u16>,
    /// 0 stopped, 1 starting, 2 running, 3 stopping.
    pub(crate) op_state: u8,
    /// `SRV_ADMF_*` bits.
    pub(crate) admin_state: u32,
    /// `srv_check_state`: `CHK_ST_*` bits of the health check, when the
    /// column is there (it is in every 2.x and 3.x).
    pub(crate) check_state: Option<u32>,
    /// `srv_agent_state`: the same bits for the agent check (`agent-check`).
    pub(crate) agent_state: Option<u32>,
}

impl ServerState {
    /// In service, draining or out of service, from the admin bits alone:
    /// whether the server is *up* is health, not state.
    pub(crate) fn state(&self) -> TargetState {
        if self.admin_state & ADMF_ANY_MAINT != 0 {
            TargetState::OutOfService
        } else if self.admin_state & ADMF_ANY_DRAIN != 0 {
            TargetState::Draining
        } else {
            TargetState::InService
        }
    }

    /// Whether HAProxy runs a health check on this server. `None` when
    /// `srv_check_state` is missing (not seen on 2.x / 3.x).
    pub(crate) fn checks_enabled(&self) -> Option<bool> {
        self.check_state.map(|c| c & CHK_ST_ENABLED != 0)
    }

    /// An agent check is configured (`agent-check`), running or stopped.
    pub(crate) fn has_agent(&self) -> bool {
        self.agent_state.is_some_and(|a| a & CHK_ST_CONFIGURED != 0)
    }

    /// The agent check runs: its replies (`ready`, `drain`, `maint`, a
    /// weight) change the server's admin state and weight.
    pub(crate) fn agent_enabled(&self) -> bool {
        self.agent_state
            .is_some_and(|a| a & CHK_ST_CONFIGURED != 0 && a & CHK_ST_ENABLED != 0)
    }

    /// In maintenance inherited from a tracked server.
    pub(crate) fn inherits_maint(&self) -> bool {
        self.admin_state & ADMF_INHERITED_MAINT != 0
    }
}

fn not_expected(what: &str, body: &str) -> ParseError {
    match classify(body) {
        Some(ReplyError::Other(_)) | None => {
            ParseError::Format(format!("expected {what}, got {:?}", shorten(body)))
        }
        Some(e) => ParseError::Reply(e),
    }
}

/// Turns a `# `-prefixed header line plus rows into a csv reader.
fn csv_reader(header: &str, rows: &str, delimiter: u8) -> csv::Reader<std::io::Cursor<String>> {
    let text = format!("{header}\n{rows}");
    csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .flexible(false)
        .quoting(false)
        .from_reader(std::io::Cursor::new(text))
}

fn column(headers: &csv::StringRecord, name: &str, what: &str) -> Result<usize, ParseError> {
    headers
        .iter()
        .position(|h| h == name)
        .ok_or_else(|| ParseError::Format(format!("{what} has no `{name}` column")))
}

fn number<T: std::str::FromStr>(
    row: &csv::StringRecord,
    idx: usize,
    name: &str,
) -> Result<T, ParseError> {
    let v = row.get(idx).unwrap_or_default();
    v.parse().map_err(|_| {
        ParseError::Format(format!(
            "`{name}` is {v:?}, not a number, in row {:?}",
            row.iter().take(4).collect::<Vec<_>>()
        ))
    })
}

/// Parses the body of `show servers state [<backend>]` (format version 1,
/// the same in HAProxy 2.x and 3.x): a `1` line, a `# ` header, one row of
/// space-separated fields per server, read by header name.
pub(crate) fn parse_servers_state(body: &str) -> Result<Vec<ServerState>, ParseError> {
    let mut lines = body.splitn(3, '\n');
    let version = lines.next().unwrap_or_default().trim();
    if version != "1" {
        return Err(not_expected("`show servers state` version line `1`", body));
    }
    let header = lines.next().unwrap_or_default();
    let Some(header) = header.strip_prefix("# ") else {
        return Err(ParseError::Format(format!(
            "`show servers state` header missing: {:?}",
            shorten(header)
        )));
    };
    let rows = lines.next().unwrap_or_default();
    let mut rdr = csv_reader(header.trim_end(), rows, b' ');
    let what = "`show servers state`";
    let headers = rdr
        .headers()
        .map_err(|e| ParseError::Format(format!("{what} header: {e}")))?
        .clone();
    let be = column(&headers, "be_name", what)?;
    let srv = column(&headers, "srv_name", what)?;
    let addr = column(&headers, "srv_addr", what)?;
    let op = column(&headers, "srv_op_state", what)?;
    let admin = column(&headers, "srv_admin_state", what)?;
    let port = headers.iter().position(|h| h == "srv_port");
    let check_state = headers.iter().position(|h| h == "srv_check_state");
    let agent_state = headers.iter().position(|h| h == "srv_agent_state");
    let mut out = Vec::new();
    for row in rdr.records() {
        let row = row.map_err(|e| ParseError::Format(format!("{what} row: {e}")))?;
        let get = |i: usize| row.get(i).unwrap_or_default().to_owned();
        out.push(ServerState {
            backend: get(be),
            server: get(srv),
            addr: get(addr),
            port: port.and_then(|i| row.get(i)).and_then(|p| p.parse().ok()),
            op_state: number(&row, op, "srv_op_state")?,
            admin_state: number(&row, admin, "srv_admin_state")?,
            check_state: match check_state {
                Some(i) => Some(number(&row, i, "srv_check_state")?),
                None => None,
            },
            agent_state: match agent_state {
                Some(i) => Some(number(&row, i, "srv_agent_state")?),
                None => None,
            },
        });
    }
    Ok(out)
}

/// Parses the body of `show backend`: a `# name` header, one backend a line.
pub(crate) fn parse_backends(body: &str) -> Result<Vec<String>, ParseError> {
    let mut lines = body.lines();
    match lines.next().map(str::trim) {
        Some(h) if h.starts_with("# name") => {}
        _ => return Err(not_expected("`show backend` header `# name`", body)),
    }
    Ok(lines
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// An old worker listed by the master's `show proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OldWorker {
    pub(crate) pid: u32,
    /// Its own HAProxy version (the `<version>` column, last on the line;
    /// after an upgrade the old worker runs the old binary).
    pub(crate) version: Option<String>,
}

/// `major.minor` of an HAProxy version string (`2.6.12-1+deb12u4` →
/// `(2, 6)`); `None` when it does not start that way.
pub(crate) fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim().split(['.', '-', '+', ' ']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The `Version:` line of a `show info` reply.
pub(crate) fn info_version(reply: &str) -> Option<String> {
    reply
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The old workers in a master CLI's `show proc` reply: the lines under
/// `# old workers` (processes a reload replaced, finishing their
/// connections): pid (first column) and version (last column, when the
/// header ends with `<version>`).
pub(crate) fn parse_old_workers(reply: &str) -> Result<Vec<OldWorker>, ParseError> {
    if !reply.trim_start().starts_with("#<PID>") {
        return Err(classify(reply).map_or_else(
            || ParseError::Format("`show proc` reply does not start with `#<PID>` (is this the master CLI socket, `haproxy -W -S`?)".into()),
            ParseError::Reply,
        ));
    }
    let has_version = reply
        .lines()
        .next()
        .is_some_and(|h| h.trim_end().ends_with("<version>"));
    let mut out = Vec::new();
    let mut in_old = false;
    for line in reply.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            in_old = line == "# old workers";
            continue;
        }
        if in_old && !line.is_empty() {
            let mut words = line.split_whitespace();
            let pid = words.next().unwrap_or_default();
            let version = words.last().filter(|_| has_version).map(str::to_owned);
            out.push(OldWorker {
                pid: pid.parse().map_err(|_| {
                    ParseError::Format(format!("`show proc`: bad pid {pid:?} in {line:?}"))
                })?,
                version,
            });
        }
    }
    Ok(out)
}

/// One server row of `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatRow {
    pub(crate) backend: String,
    pub(crate) server: String,
    /// `scur + qcur`: requests in flight on the server plus queued for it.
    pub(crate) connections: u64,
    pub(crate) status: String,
    pub(crate) check_status: String,
    /// `tracked`: the `backend/server` this server tracks (`track` in the
    /// configuration), empty when it runs its own check or none.
    pub(crate) tracked: String,
    /// `addr`: `ip:port` the server points to (HAProxy 1.9+).
    pub(crate) addr: Option<String>,
    /// `bck`: a `backup` server.
    pub(crate) backup: bool,
    /// `weight`: the effective weight (0: takes no new load-balanced
    /// traffic, e.g. `set weight … 0` or an agent's `0%`).
    pub(crate) weight: Option<u64>,
}

impl StatRow {
    /// Up, but not serving capacity while the backend's other servers
    /// serve: a `backup` server (HAProxy sends it requests only once no
    /// active server is usable), `NOLB` (`http-check disable-on-404`: up,
    /// refusing new load-balanced requests) or weight 0.
    pub(crate) fn standby(&self) -> bool {
        self.backup || self.status.trim() == "NOLB" || self.weight == Some(0)
    }

    /// Health from the status and check columns.
    ///
    /// - `MAINT…`: checks are paused, any result is stale → `Unknown`.
    /// - `no check` or an empty `check_status` → `Unknown`, except on a
    ///   server that `track`s another one: it has no check of its own (empty
    ///   `check_status`) and its status is the tracked server's checked one.
    /// - `UP`, `NOLB` (up, refusing new sessions), `DRAIN` with a check →
    ///   `Healthy`.
    /// - `UP n/m` (up, but the last checks failed: going down), `DOWN`,
    ///   `DOWN n/m` (down, not yet risen) → `Unhealthy`.
    pub(crate) fn health(&self) -> Health {
        let status = self.status.trim();
        if status.starts_with("MAINT")
            || status == "no check"
            || (self.check_status.trim().is_empty() && self.tracked.trim().is_empty())
        {
            return Health::Unknown;
        }
        match status {
            "UP" | "NOLB" => Health::Healthy,
            s if s.starts_with("DRAIN") => Health::Healthy,
            s if s.starts_with("UP ") || s.starts_with("DOWN") => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }
}

/// Parses the body of `show stat` (any filter): CSV with a `# ` header,
/// columns found by name. Frontend and backend summary rows are skipped.
pub(crate) fn parse_stat(body: &str) -> Result<Vec<StatRow>, ParseError> {
    let (header, rows) = body.split_once('\n').unwrap_or((body, ""));
    let Some(header) = header.strip_prefix("# ") else {
        return Err(not_expected("`show stat` CSV header", body));
    };
    let what = "`show stat`";
    let mut rdr = csv_reader(header.trim_end(), rows, b',');
    let headers = rdr
        .headers()
        .map_err(|e| ParseError::Format(format!("{what} header: {e}")))?
        .clone();
    let px = column(&headers, "pxname", what)?;
    let sv = column(&headers, "svname", what)?;
    let qcur = column(&headers, "qcur", what)?;
    let scur = column(&headers, "scur", what)?;
    let status = column(&headers, "status", what)?;
    let check = column(&headers, "check_status", what)?;
    let tracked = headers.iter().position(|h| h == "tracked");
    let addr = headers.iter().position(|h| h == "addr");
    let bck = headers.iter().position(|h| h == "bck");
    let weight = headers.iter().position(|h| h == "weight");
    let mut out = Vec::new();
    for row in rdr.records() {
        let row = row.map_err(|e| ParseError::Format(format!("{what} row: {e}")))?;
        let server = row.get(sv).unwrap_or_default();
        if server == "FRONTEND" || server == "BACKEND" {
            continue;
        }
        let s: u64 = number(&row, scur, "scur")?;
        let q: u64 = number(&row, qcur, "qcur")?;
        out.push(StatRow {
            backend: row.get(px).unwrap_or_default().to_owned(),
            server: server.to_owned(),
            connections: s.saturating_add(q),
            status: row.get(status).unwrap_or_default().to_owned(),
            check_status: row.get(check).unwrap_or_default().to_owned(),
            tracked: tracked
                .and_then(|i| row.get(i))
                .unwrap_or_default()
                .to_owned(),
            addr: addr
                .and_then(|i| row.get(i))
                .filter(|a| !a.is_empty())
                .map(str::to_owned),
            backup: bck.and_then(|i| row.get(i)) == Some("1"),
            weight: weight.and_then(|i| row.get(i)).and_then(|w| w.parse().ok()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_workers_from_show_proc() {
        // HAProxy 2.6.12, master CLI, during a reload's soft stop.
        let v26 =
            "#<PID>          <type>          <reloads>       <uptime>        <version>      \n\
11542           master          2 [failed: 0]   0d00h20m18s     2.6.12-1+deb12u4\n\
# workers\n\
12451           worker          0               0d00h00m01s     2.6.12-1+deb12u4\n\
# old workers\n\
12276           worker          1               0d00h00m12s     2.6.12-1+deb12u4\n\
12001           worker          2               0d00h00m30s     2.6.12-1+deb12u4\n\
# programs\n\n\n";
        let old = parse_old_workers(v26).expect("parses");
        assert_eq!(
            old.iter().map(|w| w.pid).collect::<Vec<_>>(),
            [12276, 12001]
        );
        assert_eq!(old[0].version.as_deref(), Some("2.6.12-1+deb12u4"));
        // 2.4's columns (a relative pid), no old worker.
        let v24 = "#<PID>          <type>          <relative PID>  <reloads>       <uptime>        <version>\n\
1162            master          0               5               0d00h02m07s     2.4.0\n\
# workers\n\
1271            worker          1               0               0d00h00m00s     2.4.0\n\
# old workers\n\
1200            worker          2               1               0d00h01m00s     2.4.0\n\
# programs\n\n";
        let old = parse_old_workers(v24).expect("parses");
        assert_eq!(old.len(), 1);
        assert_eq!(
            (old[0].pid, old[0].version.as_deref()),
            (1200, Some("2.4.0"))
        );
        // Without a `<version>` column, no version.
        let old = parse_old_workers("#<PID> <type>\n# old workers\n7 worker\n").expect("parses");
        assert_eq!(old[0].version, None);
        // A worker's stats socket given as the master.
        assert!(matches!(
            parse_old_workers("Unknown command: 'show proc'\n\n"),
            Err(ParseError::Reply(ReplyError::UnknownCommand(_)))
        ));
        assert!(matches!(
            parse_old_workers("#<PID> x\n# old workers\nabc worker\n"),
            Err(ParseError::Format(m)) if m.contains("abc")
        ));
    }

    const STATE_26: &str = include_str!("../tests/data/haproxy-2.6/show_servers_state.txt");
    const STAT_26: &str = include_str!("../tests/data/haproxy-2.6/show_stat.csv");
    const STATE_26_MIXED: &str =
        include_str!("../tests/data/haproxy-2.6/show_servers_state_mixed.txt");
    const STAT_26_MIXED: &str = include_str!("../tests/data/haproxy-2.6/show_stat_mixed.csv");
    const STATE_30: &str = include_str!("../tests/data/haproxy-3.0/show_servers_state.txt");
    const STAT_30: &str = include_str!("../tests/data/haproxy-3.0/show_stat.csv");

    fn one(raw: &str) -> &str {
        split_replies(raw, 1).expect("one reply")[0]
    }

    #[test]
    fn versions() {
        assert_eq!(major_minor("2.6.12-1+deb12u4"), Some((2, 6)));
        assert_eq!(major_minor("2.4.0"), Some((2, 4)));
        assert_eq!(major_minor("3.0.11"), Some((3, 0)));
        assert_eq!(major_minor("2.10-dev3"), Some((2, 10)));
        assert_eq!(major_minor("dev"), None);
        assert_eq!(
            info_version("Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nRelease_date: x\n").as_deref(),
            Some("2.6.12-1+deb12u4")
        );
        assert_eq!(info_version("Unknown command\n"), None);
    }

    #[test]
    fn agent_state_column() {
        // 2.6.12: `agent-check` → 22, after `disable agent` → 18, none → 0.
        let body = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_check_state srv_agent_state\n\
3 web 1 s1 127.0.0.1 2 0 6 22\n3 web 2 s2 127.0.0.1 2 8 6 18\n3 web 3 s3 127.0.0.1 2 0 6 0";
        let rows = parse_servers_state(body).expect("parses");
        assert!(rows[0].has_agent() && rows[0].agent_enabled());
        assert!(rows[1].has_agent() && !rows[1].agent_enabled());
        assert!(!rows[2].has_agent() && !rows[2].agent_enabled());
        let rows = parse_servers_state(
            &body
                .replace(" srv_agent_state", "")
                .replace(" 22\n", "\n")
                .replace(" 18\n", "\n")
                .replace(" 6 0", " 6"),
        )
        .expect("parses");
        assert!(!rows[0].has_agent(), "no column, no agent");
    }

    #[test]
    fn framing() {
        assert_eq!(split_replies("\n", 1), Ok(vec![""]));
        assert_eq!(split_replies("\n\n", 2), Ok(vec!["", ""]));
        assert_eq!(
            split_replies("No such server.\n\n\n", 2),
            Ok(vec!["No such server.", ""])
        );
        assert!(split_replies("", 1).is_err(), "empty");
        assert!(split_replies("1\n# be_id\n3 web", 1).is_err(), "truncated");
        assert!(split_replies("\n", 2).is_err(), "one reply missing");
        assert!(split_replies("\nextra", 1).is_err(), "garbage after");
        let two = format!("{STATE_26}{STAT_26}");
        let parts = split_replies(&two, 2).expect("two replies");
        assert!(parts[0].starts_with("1\n# be_id") && parts[1].starts_with("# pxname"));
    }

    #[test]
    fn error_lines() {
        assert_eq!(classify(""), None);
        assert_eq!(
            classify(one("No such backend.\n\n")),
            Some(ReplyError::NoSuchBackend)
        );
        assert_eq!(
            classify(one("Can't find backend.\n\n")),
            Some(ReplyError::NoSuchBackend)
        );
        assert_eq!(
            classify(one("No such proxy.\n\n")),
            Some(ReplyError::NoSuchBackend)
        );
        assert_eq!(
            classify(one("No such server.\n\n")),
            Some(ReplyError::NoSuchServer)
        );
        assert_eq!(
            classify(one("Permission denied\n\n")),
            Some(ReplyError::PermissionDenied)
        );
        let unknown = include_str!("../tests/data/haproxy-2.6/unknown_command.txt");
        assert!(matches!(
            classify(one(unknown)),
            Some(ReplyError::UnknownCommand(_))
        ));
        let bad_state = "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n\n";
        assert!(
            matches!(classify(one(bad_state)), Some(ReplyError::Other(m)) if m.contains("expects"))
        );
    }

    #[test]
    fn servers_state_26() {
        let rows = parse_servers_state(one(STATE_26)).expect("parses");
        assert_eq!(rows.len(), 5);
        assert_eq!(
            rows[0],
            ServerState {
                backend: "web".into(),
                server: "s1".into(),
                addr: "127.0.0.1".into(),
                port: Some(18081),
                op_state: 2,
                admin_state: 0,
                check_state: Some(6),
                agent_state: Some(0),
            }
        );
        assert!(rows.iter().all(|r| r.state() == TargetState::InService));
        assert_eq!(rows[3].backend, "api");
    }

    #[test]
    fn servers_state_26_admin_bits() {
        let rows = parse_servers_state(one(STATE_26_MIXED)).expect("parses");
        let st = |b: &str, s: &str| {
            rows.iter()
                .find(|r| r.backend == b && r.server == s)
                .map(ServerState::state)
                .expect("row")
        };
        assert_eq!(st("web", "s1"), TargetState::OutOfService, "forced maint");
        assert_eq!(st("web", "s2"), TargetState::Draining, "forced drain");
        assert_eq!(
            st("web", "s5"),
            TargetState::InService,
            "down but admin-ready is in service (unhealthy)"
        );
        assert_eq!(
            st("api", "s1"),
            TargetState::OutOfService,
            "maint via tracked web/s1"
        );
        assert_eq!(st("api", "s2"), TargetState::InService);
        let row = |b: &str, s: &str| {
            rows.iter()
                .find(|r| r.backend == b && r.server == s)
                .expect("row")
        };
        assert_eq!(
            row("web", "s1").check_state,
            Some(14),
            "checks paused in MAINT"
        );
        assert_eq!(row("web", "s1").checks_enabled(), Some(true));
        assert!(row("api", "s1").inherits_maint());
    }

    #[test]
    fn configured_disabled_bit_alone_is_in_service() {
        // `server s1 … disabled` starts with admin state 5; after `state
        // ready` HAProxy 2.6 serves it with admin state 4.
        let body = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n2 web 1 s1 127.0.0.1 0 5\n2 web 2 s2 127.0.0.1 2 4";
        let rows = parse_servers_state(body).expect("parses");
        assert_eq!(rows[0].state(), TargetState::OutOfService);
        assert_eq!(rows[1].state(), TargetState::InService);
    }

    #[test]
    fn stat_26() {
        let rows = parse_stat(one(STAT_26)).expect("parses");
        assert_eq!(rows.len(), 5, "server rows only");
        assert_eq!(rows[0].backend, "web");
        assert_eq!(rows[0].health(), Health::Healthy);
        assert_eq!(rows[0].addr.as_deref(), Some("127.0.0.1:18081"));
        assert_eq!(rows[2].server, "s3");
        assert_eq!(rows[2].health(), Health::Unknown, "no check");
    }

    #[test]
    fn stat_26_mixed() {
        let rows = parse_stat(one(STAT_26_MIXED)).expect("parses");
        let row = |b: &str, s: &str| {
            rows.iter()
                .find(|r| r.backend == b && r.server == s)
                .expect("row")
                .clone()
        };
        assert_eq!(
            row("web", "s1").connections,
            1,
            "a request still in flight on a server in MAINT"
        );
        assert_eq!(row("web", "s1").health(), Health::Unknown);
        assert_eq!(
            row("web", "s2").health(),
            Health::Healthy,
            "DRAIN with a passing check"
        );
        assert_eq!(row("web", "s5").health(), Health::Unhealthy);
        assert_eq!(row("api", "s1").status, "MAINT (via web/s1)");
        assert_eq!(row("api", "s1").health(), Health::Unknown);
        assert_eq!(row("api", "s1").tracked, "web/s1");
        assert_eq!(row("web", "s1").tracked, "");
    }

    #[test]
    fn transitional_statuses() {
        let r = |status: &str, check: &str| StatRow {
            backend: "b".into(),
            server: "s".into(),
            connections: 0,
            status: status.into(),
            check_status: check.into(),
            tracked: String::new(),
            addr: None,
            backup: false,
            weight: Some(1),
        };
        assert_eq!(r("UP 1/3", "L4CON").health(), Health::Unhealthy);
        // Up but not capacity: NOLB, backup, weight 0.
        assert!(r("NOLB", "L7STS").standby());
        assert!(!r("UP", "L4OK").standby());
        assert!(StatRow {
            backup: true,
            ..r("UP", "L4OK")
        }
        .standby());
        assert!(StatRow {
            weight: Some(0),
            ..r("UP", "L4OK")
        }
        .standby());
        assert_eq!(r("DOWN 1/2", "L7OK").health(), Health::Unhealthy);
        assert_eq!(r("NOLB", "L7STS").health(), Health::Healthy);
        assert_eq!(r("DRAIN (agent)", "L7OK").health(), Health::Healthy);
        assert_eq!(r("MAINT (resolution)", "").health(), Health::Unknown);
        assert_eq!(r("UP", "").health(), Health::Unknown);
        let tracking = |status: &str| StatRow {
            tracked: "web/s1".into(),
            ..r(status, "")
        };
        assert_eq!(tracking("UP").health(), Health::Healthy, "tracked UP");
        assert_eq!(tracking("DOWN").health(), Health::Unhealthy);
        assert_eq!(tracking("MAINT (via web/s1)").health(), Health::Unknown);
    }

    #[test]
    fn haproxy_30_samples() {
        let rows = parse_servers_state(one(STATE_30)).expect("3.0 servers state");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].state(), TargetState::Draining);
        assert_eq!(rows[2].state(), TargetState::OutOfService);
        let stat = parse_stat(one(STAT_30)).expect("3.0 stat");
        assert_eq!(stat.len(), 3);
        assert_eq!(stat[1].connections, 3, "scur 2 + qcur 1");
        assert_eq!(stat[1].status, "DRAIN");
        assert_eq!(stat[0].health(), Health::Healthy);
    }

    #[test]
    fn errors_instead_of_data() {
        assert_eq!(
            parse_servers_state("Can't find backend."),
            Err(ParseError::Reply(ReplyError::NoSuchBackend))
        );
        assert_eq!(
            parse_stat("No such proxy."),
            Err(ParseError::Reply(ReplyError::NoSuchBackend))
        );
        assert_eq!(
            parse_stat("Permission denied"),
            Err(ParseError::Reply(ReplyError::PermissionDenied))
        );
        assert!(matches!(parse_stat("hello"), Err(ParseError::Format(_))));
        assert!(matches!(
            parse_servers_state("2\n# be_name\n"),
            Err(ParseError::Format(_))
        ));
    }

    #[test]
    fn garbled_rows_are_errors() {
        let header = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n";
        assert!(matches!(
            parse_servers_state(&format!("{header}3 web 1 s1 127.0.0.1 2")),
            Err(ParseError::Format(_))
        ));
        assert!(matches!(
            parse_servers_state(&format!("{header}3 web 1 s1 127.0.0.1 two 0")),
            Err(ParseError::Format(_))
        ));
        assert!(
            matches!(parse_servers_state("1\n# be_name srv_name\nweb s1"), Err(ParseError::Format(m)) if m.contains("srv_addr"))
        );
        let stat = "# pxname,svname,qcur,scur,status,check_status,\nweb,s1,0,x,UP,L4OK,";
        assert!(matches!(parse_stat(stat), Err(ParseError::Format(m)) if m.contains("scur")));
        let stat = "# pxname,svname,qcur,scur,status,check_status,\nweb,s1,0,1";
        assert!(matches!(parse_stat(stat), Err(ParseError::Format(_))));
    }

    mod prop {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #[test]
            fn parsers_never_panic(s in "\\PC*|[0-9# a-z_,.\n]*") {
                let _ = split_replies(&s, 2);
                let _ = classify(&s);
                let _ = parse_servers_state(&s);
                let _ = parse_stat(&s);
            }

            #[test]
            fn parsers_never_panic_on_mangled_replies(cut in 0usize..4000, junk in "[\\PC\n,]{0,8}") {
                for sample in [super::STATE_26_MIXED, super::STAT_26_MIXED, super::STATE_30, super::STAT_30] {
                    let mut s: String = sample.chars().take(cut).collect();
                    s.push_str(&junk);
                    s.push_str(&sample.chars().skip(cut + junk.len()).collect::<String>());
                    if let Ok(parts) = split_replies(&s, 1) {
                        let _ = parse_servers_state(parts[0]);
                        let _ = parse_stat(parts[0]);
                    }
                }
            }
        }
    }
}
