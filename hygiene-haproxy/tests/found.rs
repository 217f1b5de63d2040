//! What was found is what is put back: agent checks that would end a
//! drain, entries of a host that an operator keeps out (`disabled`, MAINT,
//! DRAIN), servers of the same name at different addresses, and servers
//! that are no capacity (backup, weight 0). Real HAProxy.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, haproxy_bin, Agent, Backend, Haproxy};
use hygiene_core::{
    Amount, LoadBalancer, LocalCommand, Rollout, RolloutConfig, TargetId, TargetState,
};

fn id(s: &str) -> TargetId {
    TargetId::new(s).expect("id")
}

const CHK: &str = "check inter 100ms rise 2 fall 2";

/// `web/s1` with an agent check answering `up ready` every 100 ms.
async fn with_agent(
    bin: &std::path::Path,
    extra: impl Fn(&[Arc<Backend>], &Agent) -> String,
) -> (Vec<Arc<Backend>>, Agent, Haproxy) {
    let b = vec![Backend::start("s1").await, Backend::start("s2").await];
    let agent = Agent::start("up ready").await;
    let cfg = format!(
        "backend web\n  server s1 {} {CHK} agent-check agent-port {} agent-inter 100ms\n  server s2 {} {CHK}\n",
        b[0].addr,
        agent.addr.port(),
        b[1].addr
    ) + &extra(&b, &agent);
    let h = Haproxy::start_raw(bin, "web", &cfg).await;
    (b, agent, h)
}

// Measured on 2.6.12: an agent answering `ready` ends a drain within one
// agent interval. The drain stops the agent first; the enable starts it
// again once the server is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_answering_ready_cannot_end_the_drain_and_runs_again_after_enable() {
    let Some(bin) = haproxy_bin() else { return };
    let (_b, _agent, h) = with_agent(&bin, |_, _| String::new()).await;
    assert_ne!(h.agent_state("web", "s1").await & 4, 0, "the agent runs");
    let lb = h.balancer(&["web"]);
    let listed = lb.list().await.expect("list");
    assert_eq!(
        listed[0].target.meta.get("agents").map(String::as_str),
        Some("web/s1"),
        "validate names the servers with an agent"
    );
    assert_eq!(listed[1].target.meta.get("agents"), None);
    let s1 = [id("web/s1")];
    lb.drain(&s1).await.expect("drain");
    // Five agent intervals.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        h.server("web", "s1").await.1,
        8,
        "still draining: the agent's `ready` must not have ended the drain"
    );
    assert_eq!(h.agent_state("web", "s1").await & 4, 0, "agent stopped");
    assert_eq!(
        lb.status(&s1).await.expect("status")[0].state,
        TargetState::Draining
    );
    lb.disable(&s1).await.expect("disable");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.server("web", "s1").await.1 & 1, 1, "still in MAINT");
    lb.enable(&s1).await.expect("enable");
    eventually(
        Duration::from_secs(3),
        "s1 up with its agent running",
        || async {
            let up = h.server("web", "s1").await == ("UP".to_owned(), 0);
            (up && h.agent_state("web", "s1").await & 4 != 0).then_some(())
        },
    )
    .await;
    assert!(lb.status(&s1).await.expect("status")[0].is_serving_healthy());
}

// A new process (resume, restore) learns from the journal's plan which
// agents ran: it starts those again, and only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_starts_again_the_agents_that_ran_and_only_those() {
    let Some(bin) = haproxy_bin() else { return };
    // `api/a1`, at s1's address, has an agent an operator stopped.
    let (_b, _agent, h) = with_agent(&bin, |b, agent| {
        format!(
            "backend api\n  server a1 {} {CHK} agent-check agent-port {} agent-inter 100ms\n",
            b[0].addr,
            agent.addr.port()
        )
    })
    .await;
    h.raw("disable agent api/a1").await.expect("raw");
    let s1 = [id("web/s1")];
    let plan = {
        let lb = h.balancer(&["web"]);
        let listed = lb.list().await.expect("list");
        lb.drain(&s1).await.expect("drain");
        listed.into_iter().map(|l| l.target).collect::<Vec<_>>()
        // The process dies here.
    };
    assert_eq!(h.agent_state("web", "s1").await & 4, 0);
    let lb = h.balancer(&["web"]);
    lb.list().await.expect("the new process lists first");
    lb.adopt(&plan).await.expect("adopt");
    lb.enable(&s1).await.expect("enable");
    eventually(
        Duration::from_secs(3),
        "web/s1 up, agent running",
        || async {
            let up = h.server("web", "s1").await == ("UP".to_owned(), 0);
            (up && h.agent_state("web", "s1").await & 4 != 0).then_some(())
        },
    )
    .await;
    eventually(Duration::from_secs(3), "api/a1 up", || async {
        (h.server("api", "a1").await == ("UP".to_owned(), 0)).then_some(())
    })
    .await;
    assert_eq!(
        h.agent_state("api", "a1").await & 4,
        0,
        "the agent the operator stopped stays stopped"
    );
    // A plan whose record is garbled is refused, naming the target.
    let mut bad = plan.clone();
    bad[0]
        .meta
        .insert("found".into(), r#"{"lb-a":{"web/s1":"sideways"}}"#.into());
    let e = h.balancer(&["web"]).adopt(&bad).await.expect_err("garbled");
    assert!(e.to_string().contains("web/s1"), "{e}");
}

/// `web`: s1 at A, s2 at B; `api`: a1 at A `disabled`, a2 at A drained by
/// an operator.
async fn shared(bin: &std::path::Path) -> (Vec<Arc<Backend>>, Haproxy) {
    let b = vec![Backend::start("s1").await, Backend::start("s2").await];
    let cfg = format!(
        "backend web\n  server s1 {a} {CHK}\n  server s2 {} {CHK}\n\
         backend api\n  server a1 {a} {CHK} disabled\n  server a2 {a} {CHK}\n",
        b[1].addr,
        a = b[0].addr,
    );
    let h = Haproxy::start_raw(bin, "web", &cfg).await;
    h.raw("set server api/a2 state drain").await.expect("raw");
    (b, h)
}

// The field report: `api/a1 … disabled`, sharing an address with
// `web/s1`, was UP and serving after `web/s1`'s rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_puts_back_only_what_the_drain_took_out() {
    let Some(bin) = haproxy_bin() else { return };
    let (_b, h) = shared(&bin).await;
    let lb = h.balancer(&["web"]);
    let listed = lb.list().await.expect("list");
    assert!(
        listed[0].status.is_serving_healthy(),
        "entries out as found say nothing of the host: {:?}",
        listed[0].status
    );
    let s1 = [id("web/s1")];
    lb.drain(&s1).await.expect("drain");
    assert_eq!(h.server("web", "s1").await.1, 8);
    lb.enable(&s1).await.expect("enable");
    eventually(Duration::from_secs(3), "web/s1 up", || async {
        (h.server("web", "s1").await == ("UP".to_owned(), 0)).then_some(())
    })
    .await;
    assert_eq!(h.server("api", "a1").await.1, 5, "a1 stays `disabled`");
    assert_eq!(h.server("api", "a2").await.1, 8, "a2 stays drained");
    eventually(Duration::from_secs(3), "web/s1 healthy", || async {
        lb.status(&s1).await.expect("status")[0]
            .is_serving_healthy()
            .then_some(())
    })
    .await;
    // The hint puts back exactly that too.
    let hint = lb.enable_hint(&s1[0]);
    assert!(hint.contains("set server web/s1 state ready"), "{hint}");
    assert!(hint.contains("set server api/a2 state drain"), "{hint}");
    assert!(!hint.contains("api/a1"), "{hint}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_puts_back_only_what_the_dead_run_took_out() {
    let Some(bin) = haproxy_bin() else { return };
    let (_b, h) = shared(&bin).await;
    let s1 = [id("web/s1")];
    let plan = {
        let lb = h.balancer(&["web"]);
        let listed = lb.list().await.expect("list");
        lb.disable(&s1).await.expect("disable");
        listed.into_iter().map(|l| l.target).collect::<Vec<_>>()
    };
    assert_eq!(h.server("api", "a2").await.1 & 1, 1, "a2 in MAINT now");
    let lb = h.balancer(&["web"]);
    lb.list().await.expect("list");
    lb.adopt(&plan).await.expect("adopt");
    lb.enable(&s1).await.expect("enable");
    eventually(Duration::from_secs(3), "web/s1 up", || async {
        (h.server("web", "s1").await == ("UP".to_owned(), 0)).then_some(())
    })
    .await;
    assert_eq!(h.server("api", "a1").await.1, 5, "a1 stays `disabled`");
    assert_eq!(h.server("api", "a2").await.1, 8, "a2 back to its drain");
}

// `server-template srv 1-2` in two pool backends: `web/srv1` and
// `api/srv1` are different hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_names_at_different_addresses_are_different_hosts() {
    let Some(bin) = haproxy_bin() else { return };
    let b = [
        Backend::start("w1").await,
        Backend::start("w2").await,
        Backend::start("a1").await,
        Backend::start("a2").await,
    ];
    let cfg = format!(
        "backend web\n  server srv1 {} {CHK}\n  server srv2 {} {CHK}\n\
         backend api\n  server srv1 {} {CHK}\n  server srv2 {} {CHK}\n",
        b[0].addr, b[1].addr, b[2].addr, b[3].addr
    );
    let h = Haproxy::start_raw(&bin, "web", &cfg).await;
    let lb = h.balancer(&["web", "api"]);
    let ids: Vec<String> = lb
        .list()
        .await
        .expect("list")
        .iter()
        .map(|l| l.target.id.to_string())
        .collect();
    assert_eq!(ids, ["web/srv1", "web/srv2", "api/srv1", "api/srv2"]);
    lb.drain(&[id("web/srv1")]).await.expect("drain");
    assert_eq!(h.server("web", "srv1").await.1, 8);
    assert_eq!(h.server("api", "srv1").await.1, 0, "another host");
    let st = lb
        .status(&[id("web/srv1"), id("api/srv1")])
        .await
        .expect("status");
    assert_eq!(st[0].state, TargetState::Draining);
    assert_eq!(st[1].state, TargetState::InService);
}

// A backup server takes requests only once every active one is down, and
// a server at weight 0 takes none: neither is capacity for min_healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_weight_0_servers_are_not_capacity() {
    let Some(bin) = haproxy_bin() else { return };
    let b = [
        Backend::start("s1").await,
        Backend::start("s2").await,
        Backend::start("s3").await,
    ];
    let cfg = format!(
        "backend web\n  server s1 {} {CHK}\n  server s2 {} {CHK}\n  server s3 {} {CHK} backup\n",
        b[0].addr, b[1].addr, b[2].addr
    );
    let h = Haproxy::start_raw(&bin, "web", &cfg).await;
    let lb = h.balancer(&["web"]);
    let listed = lb.list().await.expect("list");
    let standby: Vec<bool> = listed.iter().map(|l| l.status.standby).collect();
    assert_eq!(standby, [false, false, true], "{listed:?}");
    assert!(
        listed[2].status.is_serving_healthy(),
        "healthy all the same"
    );
    // Two must stay serving: only s1 and s2 serve, so neither can go.
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .min_healthy(Amount::Count(2))
        .capacity_timeout(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(50))
        .health_timeout(Duration::from_secs(5))
        .build()
        .expect("config");
    let exec = LocalCommand::new("true", Vec::<String>::new()).expect("command");
    let report = Rollout::new(lb.clone(), exec, config.clone())
        .run()
        .await
        .expect("rollout");
    assert!(!report.is_success(), "{}", report.to_json_pretty());
    assert!(
        report.to_json_pretty().contains("capacity"),
        "{}",
        report.to_json_pretty()
    );
    assert_eq!(
        h.server("web", "s1").await,
        ("UP".to_owned(), 0),
        "never drained"
    );
    // Weight 0: up, and no capacity either.
    h.raw("set weight web/s2 0").await.expect("raw");
    let listed = lb.list().await.expect("list");
    assert!(listed[1].status.standby, "{listed:?}");
}

// The whole rollout, through the engine (its listings during the run
// included): the host's entries an operator keeps out stay out, the
// agent that ran runs again, and nothing the run did not take out is put
// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_restores_every_entry_as_found() {
    let Some(bin) = haproxy_bin() else { return };
    let (_b, _agent, h) = with_agent(&bin, |b, agent| {
        format!(
            "backend api\n  server a1 {a} {CHK} disabled\n  server a2 {a} {CHK}\n  server a3 {a} {CHK} agent-check agent-port {} agent-inter 100ms\n",
            agent.addr.port(),
            a = b[0].addr,
        )
    })
    .await;
    h.raw("set server api/a2 state drain").await.expect("raw");
    h.raw("disable agent api/a3").await.expect("raw");
    let lb = h.balancer(&["web"]);
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .min_healthy(Amount::Count(1))
        .poll_interval(Duration::from_millis(50))
        .health_timeout(Duration::from_secs(10))
        .build()
        .expect("config");
    let exec = LocalCommand::new("true", Vec::<String>::new()).expect("command");
    let report = Rollout::new(lb.clone(), exec, config)
        .run()
        .await
        .expect("rollout");
    assert!(report.is_success(), "{}", report.to_json_pretty());
    // The report carries what was found, for the way back.
    assert!(
        report.targets[0].meta.get("found").is_some_and(
            |f| f.contains("\"api/a1\":\"maint\"") && f.contains("\"web/s1\":\"ready+agent\"")
        ),
        "{:?}",
        report.targets[0].meta
    );
    assert_eq!(h.server("web", "s1").await, ("UP".to_owned(), 0));
    assert_ne!(h.agent_state("web", "s1").await & 4, 0, "agent runs again");
    assert_eq!(h.server("api", "a1").await.1, 5, "a1 stays `disabled`");
    assert_eq!(h.server("api", "a2").await.1, 8, "a2 stays drained");
    assert_eq!(h.server("api", "a3").await.1, 0, "a3 back in service");
    assert_eq!(
        h.agent_state("api", "a3").await & 4,
        0,
        "its stopped agent stays stopped"
    );
}

// The process dies during web/s1's maintenance; a new process restores
// from the journal (the engine's plan, adopted by a fresh balancer): the
// host's entries come back exactly as the dead run found them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_after_a_crash_puts_back_what_the_dead_run_found() {
    let Some(bin) = haproxy_bin() else { return };
    let (_b, _agent, h) = with_agent(&bin, |b, _| {
        format!(
            "backend api\n  server a1 {a} {CHK} disabled\n  server a2 {a} {CHK}\n",
            a = b[0].addr,
        )
    })
    .await;
    h.raw("set server api/a2 state drain").await.expect("raw");
    let journal = hygiene_core::journal::MemoryJournal::new();
    let config = RolloutConfig::builder()
        .batch_size(Amount::Count(1))
        .min_healthy(Amount::Count(0))
        .poll_interval(Duration::from_millis(50))
        .health_timeout(Duration::from_secs(10))
        .build()
        .expect("config");
    let slow = LocalCommand::new("sleep", ["3"]).expect("command");
    let run = Rollout::new(h.balancer(&["web"]), slow, config.clone())
        .with_journal(journal.clone())
        .run();
    // Killed while web/s1 is out for its maintenance.
    let killed = tokio::time::timeout(Duration::from_millis(1500), run).await;
    assert!(killed.is_err(), "the run ended before it was killed");
    assert_ne!(
        h.server("web", "s1").await.1 & 9,
        0,
        "web/s1 left out (drained, then in MAINT for its maintenance)"
    );
    assert_eq!(h.agent_state("web", "s1").await & 4, 0, "its agent stopped");
    let exec = LocalCommand::new("true", Vec::<String>::new()).expect("command");
    let report = Rollout::new(h.balancer(&["web"]), exec, config)
        .with_journal(journal)
        .restore()
        .await
        .expect("restore");
    let t = report.target(&id("web/s1")).expect("web/s1 in the report");
    assert!(
        matches!(t.result, hygiene_core::TargetResult::Restored { .. }),
        "{}",
        report.to_json_pretty()
    );
    eventually(
        Duration::from_secs(5),
        "web/s1 up, agent running",
        || async {
            let up = h.server("web", "s1").await == ("UP".to_owned(), 0);
            (up && h.agent_state("web", "s1").await & 4 != 0).then_some(())
        },
    )
    .await;
    assert_eq!(h.server("api", "a1").await.1, 5, "a1 stays `disabled`");
    assert_eq!(h.server("api", "a2").await.1, 8, "a2 stays drained");
}
