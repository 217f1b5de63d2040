//! What each entry of a host was found as before this balancer took it
//! out, and the commands that take it out and put back exactly that.
//!
//! A host's entries include servers of other backends and servers an
//! operator keeps out (`disabled` in the configuration, `MAINT`, `DRAIN`,
//! an agent check stopped with `disable agent`). The run must put back
//! what it took out and nothing more (DESIGN invariant 8), so the state of
//! every entry is recorded when the pool is listed, kept while the target
//! is out, carried in the target's `meta["found"]` (the engine journals
//! the listed targets before the first change and gives them back through
//! [`LoadBalancer::adopt`](hygiene_core::LoadBalancer::adopt) on resume and
//! restore), and restored by `enable`.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::parse::ADMF_FORCED;
use crate::snapshot::Entry;

/// Forced maintenance (`set server … state maint`; also set by `disabled`
/// in the configuration).
pub(crate) const ADMF_FORCED_MAINT: u32 = 0x01;

/// The meta key holding what was found (JSON: node → `backend/server` →
/// state).
pub(crate) const META_FOUND: &str = "found";

/// An entry's admin state as found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admin {
    /// In service (no forced maintenance or drain).
    Ready,
    /// Forced drain.
    Drain,
    /// Forced maintenance (`MAINT`, or `disabled` in the configuration).
    Maint,
}

/// What one entry was found as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) admin: Admin,
    /// Its agent check was running.
    pub(crate) agent: bool,
    /// A server without a check of its own, forced down (`set server …
    /// health down`): nothing but `health up` raises it, so `enable`
    /// leaves it down.
    pub(crate) down: bool,
}

impl Found {
    pub(crate) fn of(e: &Entry) -> Self {
        let a = e.state.admin_state;
        Self {
            admin: if a & ADMF_FORCED_MAINT != 0 {
                Admin::Maint
            } else if a & ADMF_FORCED != 0 {
                Admin::Drain
            } else {
                Admin::Ready
            },
            agent: e.state.agent_enabled(),
            down: !e.checked() && e.state.op_state == 0,
        }
    }

    fn text(self) -> String {
        let mut s = match self.admin {
            Admin::Ready => "ready",
            Admin::Drain => "drain",
            Admin::Maint => "maint",
        }
        .to_owned();
        if self.agent {
            s.push_str("+agent");
        }
        if self.down {
            s.push_str("+down");
        }
        s
    }

    fn parse(s: &str) -> Option<Self> {
        let mut words = s.split('+');
        let admin = match words.next()? {
            "ready" => Admin::Ready,
            "drain" => Admin::Drain,
            "maint" => Admin::Maint,
            _ => return None,
        };
        let mut f = Self {
            admin,
            agent: false,
            down: false,
        };
        for w in words {
            match w {
                "agent" => f.agent = true,
                "down" => f.down = true,
                _ => return None,
            }
        }
        Some(f)
    }

    /// The entry is out as it was found (an operator's drain or
    /// maintenance, not ours to end): its state and health say nothing
    /// about the target, only its requests still count.
    pub(crate) fn left_out(self, e: &Entry) -> bool {
        self.admin != Admin::Ready && e.state.state() != hygiene_core::TargetState::InService
    }
}

/// Records of what was found, per entry (`(node, "backend/server")`), and
/// which targets are out because of this balancer.
#[derive(Debug, Default)]
pub(crate) struct Records {
    found: HashMap<(String, String), Found>,
    /// Targets taken out and not yet put back: their records stay as they
    /// were when the target was first listed (a later listing sees our
    /// own drain).
    held: HashSet<String>,
    /// Targets adopted from a journal that recorded nothing (written
    /// before records existed): `enable` puts every entry that is out back
    /// in service, as it did then, and leaves agent checks alone.
    unknown: HashSet<String>,
}

fn entry_key(node: &str, backend: &str, e: &Entry) -> (String, String) {
    (node.to_owned(), format!("{backend}/{}", e.state.server))
}

impl Records {
    /// A listing saw these entries of target `id`: records them, unless
    /// the target is out because of this balancer.
    pub(crate) fn listed(&mut self, id: &str, node: &str, parts: &[(&str, &Entry)]) {
        if self.held.contains(id) {
            return;
        }
        for (b, e) in parts {
            self.found.insert(entry_key(node, b, e), Found::of(e));
        }
    }

    /// Target `id` is about to be taken out: entries without a record (a
    /// drain without a listing first, an entry that appeared since) are
    /// recorded as they are now, and the target's records are kept until
    /// it is put back. What the last listing recorded stands: it is what
    /// the engine journaled.
    pub(crate) fn taking_out(&mut self, id: &str, node: &str, parts: &[(&str, &Entry)]) {
        for (b, e) in parts {
            self.found
                .entry(entry_key(node, b, e))
                .or_insert_with(|| Found::of(e));
        }
        self.held.insert(id.to_owned());
    }

    /// Target `id` is back as found.
    pub(crate) fn put_back(&mut self, id: &str) {
        self.held.remove(id);
        self.unknown.remove(id);
    }

    /// What entry `backend/server` of target `id` on `node` was found as
    /// when last listed (or as the journal says); `None` when not recorded.
    pub(crate) fn get(&self, id: &str, node: &str, backend: &str, e: &Entry) -> Option<Found> {
        let (node, entry) = entry_key(node, backend, e);
        self.get_named(id, &node, &entry)
    }

    /// As [`get`](Self::get), by `backend/server`.
    pub(crate) fn get_named(&self, id: &str, node: &str, entry: &str) -> Option<Found> {
        if self.unknown.contains(id) {
            return None;
        }
        self.found
            .get(&(node.to_owned(), entry.to_owned()))
            .copied()
    }

    /// What `enable` restores the entry to: what it was found as, for a
    /// target this balancer took out (or learned from a journal) and has
    /// not put back. `None` otherwise: an `enable` of a target this
    /// balancer did not take out is a request to put it back in service
    /// (an operator's, a test's), and every entry that is out comes back.
    pub(crate) fn to_restore(
        &self,
        id: &str,
        node: &str,
        backend: &str,
        e: &Entry,
    ) -> Option<Found> {
        if !self.held.contains(id) {
            return None;
        }
        self.get(id, node, backend, e)
    }

    /// The `meta["found"]` value of target `id`: its entries on every node.
    pub(crate) fn meta(&self, parts: &[(&str, &str, &Entry)]) -> String {
        let mut out: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
        for (node, b, e) in parts {
            if let Some(f) = self.found.get(&entry_key(node, b, e)) {
                out.entry(node)
                    .or_default()
                    .insert(format!("{b}/{}", e.state.server), f.text());
            }
        }
        serde_json::to_string(&out).unwrap_or_default()
    }

    /// Learns what an earlier process found for target `id` (its
    /// `meta["found"]`, or `None` when its journal recorded nothing).
    ///
    /// # Errors
    /// A description of what is wrong with a value that is not what
    /// [`meta`](Self::meta) writes.
    pub(crate) fn adopt(&mut self, id: &str, meta: Option<&str>) -> Result<(), String> {
        self.held.insert(id.to_owned());
        let Some(meta) = meta else {
            self.unknown.insert(id.to_owned());
            return Ok(());
        };
        let parsed: BTreeMap<String, BTreeMap<String, String>> =
            serde_json::from_str(meta).map_err(|e| format!("not a JSON map of maps: {e}"))?;
        let mut found = Vec::new();
        for (node, entries) in parsed {
            for (entry, state) in entries {
                let f = Found::parse(&state)
                    .ok_or_else(|| format!("{entry} on {node}: unknown state {state:?}"))?;
                found.push(((node.clone(), entry), f));
            }
        }
        self.found.extend(found);
        self.unknown.remove(id);
        Ok(())
    }
}

/// The commands that drain one server of backend `b`: `disable agent`
/// first where its agent check runs (an agent answering `ready` would end
/// the drain within one agent interval: measured on 2.6.12), then `state
/// drain` — not where it is in forced maintenance: HAProxy's `state drain`
/// would take it *out* of maintenance.
pub(crate) fn drain_commands(b: &str, e: &Entry) -> Vec<String> {
    let s = &e.state.server;
    let mut cmds = Vec::new();
    if e.state.agent_enabled() {
        cmds.push(format!("disable agent {b}/{s}"));
    }
    if e.state.admin_state & ADMF_FORCED_MAINT == 0 {
        cmds.push(format!("set server {b}/{s} state drain"));
    }
    cmds
}

/// The commands that take one server of backend `b` out hard: `disable
/// agent` where its agent runs (its `ready` ends a `MAINT` too), `state
/// maint`.
pub(crate) fn disable_commands(b: &str, e: &Entry) -> Vec<String> {
    let s = &e.state.server;
    let mut cmds = Vec::new();
    if e.state.agent_enabled() {
        cmds.push(format!("disable agent {b}/{s}"));
    }
    cmds.push(format!("set server {b}/{s} state maint"));
    cmds
}

/// The commands that put one server of backend `b` back as it was found.
///
/// - Found **ready**: see [`ready_commands`]; its agent check, if it ran,
///   is started again (`enable agent`) after the server is made ready —
///   an agent's `up` cannot raise a server whose health check is forced
///   down (measured on 2.6.12: `state drain; health down; state ready;
///   enable agent` with the backend dead stays `DOWN`).
/// - Found **drained** (an operator's drain): back to `DRAIN` if it is in
///   maintenance now (from our `disable`), else left alone.
/// - Found in **maintenance** (`MAINT`, or `disabled` in the
///   configuration): left in maintenance (put back in it if only drained
///   now).
/// - An agent check that did not run when found is never started.
/// - Nothing recorded (a journal written before records existed, an entry
///   that appeared since): put back in service if it is out, as earlier
///   versions did; the agent is left alone.
pub(crate) fn enable_commands(b: &str, e: &Entry, found: Option<Found>) -> Vec<String> {
    let s = &e.state.server;
    let Some(f) = found else {
        return ready_commands(b, e, false);
    };
    let a = e.state.admin_state;
    let mut cmds = match f.admin {
        Admin::Ready => ready_commands(b, e, f.down),
        Admin::Drain if a & ADMF_FORCED_MAINT != 0 => {
            vec![format!("set server {b}/{s} state drain")]
        }
        Admin::Maint if a & ADMF_FORCED_MAINT == 0 && a & ADMF_FORCED != 0 => {
            vec![format!("set server {b}/{s} state maint")]
        }
        Admin::Drain | Admin::Maint => Vec::new(),
    };
    if f.agent && e.state.has_agent() && !e.state.agent_enabled() {
        cmds.push(format!("enable agent {b}/{s}"));
    }
    cmds
}

/// The commands that put one server found in service back in service,
/// from what the snapshot says about it now (measured on HAProxy 2.6.12,
/// see the crate README, "Fresh health after enable"):
///
/// - **Own health check** (`check`), out (forced maint or drain):
///   `[state drain;] health down; state ready`. `health down` forces the
///   server `DOWN`, so HAProxy sends it nothing and shows it `DOWN`, then
///   `DOWN 1/2`…, until `rise` checks made after the enable have passed.
///   Leaving `MAINT` resets the check's health counter (the server is `UP`
///   at once with the check result from before the maintenance), which
///   would undo a `health down` sent while in `MAINT`: so a server in forced
///   maintenance is first moved to `DRAIN` (which leaves `MAINT` and takes
///   no new traffic), then forced down, then made ready.
/// - **Tracking server** (`track b/s`): `state ready` only; HAProxy
///   refuses `health` on it, and its health is the tracked server's.
/// - **No health check** (no `check`, or `disable health`): `state ready`,
///   and `health up` when it is down, unless it was found forced down
///   (`keep_down`): nothing would ever raise a server without a check that
///   someone forced down.
/// - Already in service (and, without a check, up): nothing. Forcing the
///   health of a serving server down would take it out of service.
pub(crate) fn ready_commands(b: &str, e: &Entry, keep_down: bool) -> Vec<String> {
    let s = &e.state.server;
    let out = e.state.admin_state & ADMF_FORCED != 0;
    let mut cmds = Vec::new();
    if e.tracking() {
        if out {
            cmds.push(format!("set server {b}/{s} state ready"));
        }
    } else if e.own_checks() {
        if out {
            if e.state.admin_state & ADMF_FORCED_MAINT != 0 {
                cmds.push(format!("set server {b}/{s} state drain"));
            }
            cmds.push(format!("set server {b}/{s} health down"));
            cmds.push(format!("set server {b}/{s} state ready"));
        }
    } else {
        if out {
            cmds.push(format!("set server {b}/{s} state ready"));
        }
        if e.state.op_state == 0 && !keep_down {
            cmds.push(format!("set server {b}/{s} health up"));
        }
    }
    cmds
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::entry;

    #[test]
    fn ready_commands_per_kind_of_server() {
        let cmds = |e: Entry| ready_commands("web", &e, false);
        // Checked, in forced MAINT (check state 14 while paused): leave
        // MAINT through DRAIN, force down, then ready.
        assert_eq!(
            cmds(entry(1, 0, 14, "")),
            [
                "set server web/s1 state drain",
                "set server web/s1 health down",
                "set server web/s1 state ready"
            ]
        );
        // Checked, draining.
        assert_eq!(
            cmds(entry(8, 2, 6, "")),
            [
                "set server web/s1 health down",
                "set server web/s1 state ready"
            ]
        );
        // Checked and in service: untouched, even when down.
        assert!(cmds(entry(0, 2, 6, "")).is_empty());
        assert!(cmds(entry(0, 0, 6, "")).is_empty());
        // Config `disabled` (5): as forced MAINT.
        assert_eq!(cmds(entry(5, 0, 14, "")).len(), 3);
        // No check (0), or a check stopped by `disable health` (2): never
        // `health down`; `health up` when down.
        assert_eq!(cmds(entry(8, 2, 0, "")), ["set server web/s1 state ready"]);
        assert_eq!(cmds(entry(8, 2, 2, "")), ["set server web/s1 state ready"]);
        assert_eq!(
            cmds(entry(1, 0, 0, "")),
            [
                "set server web/s1 state ready",
                "set server web/s1 health up"
            ]
        );
        assert_eq!(cmds(entry(0, 0, 0, "")), ["set server web/s1 health up"]);
        assert!(cmds(entry(0, 2, 0, "")).is_empty());
        // ... unless it was found forced down.
        assert_eq!(
            ready_commands("web", &entry(1, 0, 0, ""), true),
            ["set server web/s1 state ready"]
        );
        // Tracking: `state ready` only, and only where forced out.
        assert_eq!(
            cmds(entry(3, 0, 0, "web/s0")),
            ["set server web/s1 state ready"]
        );
        assert!(cmds(entry(2, 0, 0, "web/s0")).is_empty());
        assert!(cmds(entry(0, 0, 0, "web/s0")).is_empty());
        // Checks: a tracking server counts as checked, no check does not.
        assert!(entry(0, 2, 0, "web/s0").checked());
        assert!(entry(0, 2, 6, "").checked());
        assert!(!entry(0, 2, 2, "").checked());
    }

    fn with_agent(mut e: Entry, agent_state: u32) -> Entry {
        e.state.agent_state = Some(agent_state);
        e
    }

    #[test]
    fn agents_are_stopped_for_the_drain_and_started_only_where_they_ran() {
        let running = with_agent(entry(0, 2, 6, ""), 22);
        assert_eq!(
            drain_commands("web", &running),
            ["disable agent web/s1", "set server web/s1 state drain"]
        );
        assert_eq!(
            disable_commands("web", &running),
            ["disable agent web/s1", "set server web/s1 state maint"]
        );
        let found = Found::of(&running);
        assert_eq!(found.text(), "ready+agent");
        // Drained by us, agent stopped by us: ready, then the agent.
        let now = with_agent(entry(8, 2, 6, ""), 18);
        assert_eq!(
            enable_commands("web", &now, Some(found)),
            [
                "set server web/s1 health down",
                "set server web/s1 state ready",
                "enable agent web/s1"
            ]
        );
        // An agent an operator had stopped stays stopped.
        let stopped = Found::of(&with_agent(entry(0, 2, 6, ""), 18));
        assert!(!stopped.agent);
        assert_eq!(
            enable_commands("web", &now, Some(stopped)),
            [
                "set server web/s1 health down",
                "set server web/s1 state ready"
            ]
        );
        // Nothing recorded: as before, no agent command.
        assert_eq!(enable_commands("web", &now, None).len(), 2);
    }

    #[test]
    fn entries_found_out_stay_out() {
        let maint = Found::of(&entry(5, 0, 14, ""));
        assert_eq!(maint.admin, Admin::Maint);
        assert!(enable_commands("api", &entry(5, 0, 14, ""), Some(maint)).is_empty());
        assert_eq!(
            enable_commands("api", &entry(8, 0, 6, ""), Some(maint)),
            ["set server api/s1 state maint"]
        );
        let drain = Found::of(&entry(8, 2, 6, ""));
        assert_eq!(drain.admin, Admin::Drain);
        assert!(enable_commands("api", &entry(8, 2, 6, ""), Some(drain)).is_empty());
        assert_eq!(
            enable_commands("api", &entry(9, 0, 14, ""), Some(drain)),
            ["set server api/s1 state drain"]
        );
        // Put back in service meanwhile by someone else: left so.
        assert!(enable_commands("api", &entry(0, 2, 6, ""), Some(drain)).is_empty());
        assert!(maint.left_out(&entry(5, 0, 14, "")));
        assert!(!maint.left_out(&entry(4, 2, 6, "")), "in service again");
    }

    #[test]
    fn records_follow_list_take_out_put_back_and_adopt() {
        let e = entry(0, 2, 6, "");
        let mut r = Records::default();
        r.listed("web/s1", "lb-a", &[("web", &e)]);
        assert_eq!(
            r.get("web/s1", "lb-a", "web", &e).map(|f| f.admin),
            Some(Admin::Ready)
        );
        r.taking_out("web/s1", "lb-a", &[("web", &e)]);
        // A listing while it is out does not overwrite what was found.
        let drained = entry(8, 2, 6, "");
        r.listed("web/s1", "lb-a", &[("web", &drained)]);
        assert_eq!(
            r.get("web/s1", "lb-a", "web", &e).map(|f| f.admin),
            Some(Admin::Ready)
        );
        let meta = r.meta(&[("lb-a", "web", &e)]);
        assert_eq!(meta, r#"{"lb-a":{"web/s1":"ready"}}"#);
        assert_eq!(
            r.to_restore("web/s1", "lb-a", "web", &e).map(|f| f.admin),
            Some(Admin::Ready)
        );
        r.put_back("web/s1");
        assert_eq!(
            r.to_restore("web/s1", "lb-a", "web", &e),
            None,
            "not out because of this balancer: an enable puts it back"
        );
        r.listed("web/s1", "lb-a", &[("web", &drained)]);
        assert_eq!(
            r.get("web/s1", "lb-a", "web", &e).map(|f| f.admin),
            Some(Admin::Drain)
        );
        // Adopted from a journal: wins over what this process listed.
        let mut r = Records::default();
        r.listed("web/s1", "lb-a", &[("web", &drained)]);
        r.adopt("web/s1", Some(&meta)).expect("adopt");
        assert_eq!(
            r.get("web/s1", "lb-a", "web", &e).map(|f| f.admin),
            Some(Admin::Ready)
        );
        r.listed("web/s1", "lb-a", &[("web", &drained)]);
        assert_eq!(
            r.get("web/s1", "lb-a", "web", &e).map(|f| f.admin),
            Some(Admin::Ready)
        );
        // A journal without records: nothing is known.
        r.adopt("web/s1", None).expect("adopt");
        assert_eq!(r.get("web/s1", "lb-a", "web", &e), None);
        let err = r.adopt("web/s1", Some(r#"{"lb-a":{"web/s1":"sideways"}}"#));
        assert!(err.is_err_and(|m| m.contains("sideways")));
        assert!(r.adopt("web/s1", Some("[1]")).is_err());
    }
}
