//! A reload during a drain, HAProxy in master-worker mode (`-W -S`, as
//! Debian's systemd unit runs it): the new worker forgets the drain and
//! does not count the requests the old worker is still finishing. Given the
//! master socket, the balancer counts them, so the drain is not seen as
//! finished while a request is still in flight on the server. Real HAProxy.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{
    eventually, free_port, get, haproxy_bin, quick_retry, Backend, FakeReply, FakeSocket, Haproxy,
    Layout,
};
use hygiene_core::{LoadBalancer, TargetId, TargetState};
use hygiene_haproxy::{HaproxyBalancer, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// HAProxy in master-worker mode, killed (whole process group) on drop.
struct MasterWorker {
    master: Child,
    dir: tempfile::TempDir,
    frontend: std::net::SocketAddr,
}

impl MasterWorker {
    async fn start(bin: &Path, server: std::net::SocketAddr) -> Self {
        Self::start_named(bin, server, "s1").await
    }

    /// Rewrites the configuration with the server named `name`.
    fn rename(&self, server: std::net::SocketAddr, name: &str) {
        std::fs::write(
            self.dir.path().join("haproxy.cfg"),
            Self::config(&self.admin(), self.frontend, server, name),
        )
        .expect("write config");
    }

    fn config(
        admin: &Path,
        frontend: std::net::SocketAddr,
        server: std::net::SocketAddr,
        name: &str,
    ) -> String {
        format!(
            "global\n  stats socket {} level admin expose-fd listeners\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  retries 0\n\
             frontend fe\n  bind {frontend}\n  default_backend web\n\
             backend web\n  server {name} {server}\n",
            admin.display()
        )
    }

    async fn start_named(bin: &Path, server: std::net::SocketAddr, name: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let frontend: std::net::SocketAddr =
            format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let cfg = Self::config(&dir.path().join("admin.sock"), frontend, server, name);
        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg).expect("write config");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("log");
        let master = Command::new(bin)
            .arg("-W")
            .arg("-db")
            .arg("-S")
            .arg(dir.path().join("master.sock"))
            .arg("-f")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn haproxy -W");
        let h = Self {
            master,
            dir,
            frontend,
        };
        h.worker_pid().await;
        h
    }

    fn admin(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    fn master_sock(&self) -> PathBuf {
        self.dir.path().join("master.sock")
    }

    async fn raw(&self, cmd: &str) -> std::io::Result<String> {
        let mut s = UnixStream::connect(self.admin()).await?;
        s.write_all(format!("{cmd}\n").as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// The current worker's pid, once its admin socket answers.
    async fn worker_pid(&self) -> u32 {
        eventually(Duration::from_secs(10), "the worker answers", || async {
            let info = self.raw("show info").await.ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("Pid: "))
                .and_then(|p| p.trim().parse().ok())
        })
        .await
    }

    /// `systemctl reload`: SIGUSR2 to the master; returns once a new
    /// worker answers. Sent again each second: a master still starting up
    /// may not act on the first one (seen once under load).
    async fn reload(&self) {
        let old = self.worker_pid().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ok = Command::new("kill")
                .arg("-USR2")
                .arg(self.master.id().to_string())
                .status()
                .expect("kill")
                .success();
            assert!(ok, "SIGUSR2 to the master");
            let until = tokio::time::Instant::now() + Duration::from_secs(1);
            while tokio::time::Instant::now() < until {
                if self.worker_pid().await != old {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no new worker after SIGUSR2: {}",
                std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
            );
        }
    }
}

impl Drop for MasterWorker {
    fn drop(&mut self) {
        // SIGTERM to the master stops its workers too.
        let _term = Command::new("kill")
            .arg(self.master.id().to_string())
            .status();
        let _wait = self.master.wait();
    }
}

fn balancer(h: &MasterWorker, master: bool) -> HaproxyBalancer {
    let mut node = Node::unix(h.admin()).named("lb-a");
    if master {
        node = node.master_socket(h.master_sock());
    }
    HaproxyBalancer::builder()
        .node(node)
        .backend("web")
        .retry(quick_retry())
        .build()
        .expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_during_a_drain_does_not_hide_the_old_workers_requests() {
    let Some(bin) = haproxy_bin() else { return };
    let s1 = Backend::start("s1").await;
    let h = MasterWorker::start(&bin, s1.addr).await;
    let with = balancer(&h, true);
    let without = balancer(&h, false);
    let id = TargetId::new("web/s1").expect("id");
    let ids = std::slice::from_ref(&id);

    let frontend = h.frontend;
    let held = tokio::spawn(async move { get(frontend, "/hold").await });
    eventually(Duration::from_secs(5), "a request in flight", || async {
        (s1.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    with.drain(ids).await.expect("drain");
    let st = with.status(ids).await.expect("status")[0].clone();
    assert_eq!((st.state, st.connections), (TargetState::Draining, Some(1)));

    h.reload().await;
    // The new worker forgot the drain; the engine's guard drains again.
    with.drain(ids).await.expect("drain again");
    let blind = without.status(ids).await.expect("status")[0].clone();
    assert_eq!(
        blind.connections,
        Some(0),
        "the new worker does not count the old worker's request: {blind:?}"
    );
    let st = with.status(ids).await.expect("status")[0].clone();
    assert_eq!(
        (st.state, st.connections),
        (TargetState::Draining, Some(1)),
        "with the master socket, the old worker's request keeps the drain open"
    );

    s1.release(1);
    let body = held
        .await
        .expect("join")
        .expect("the held request succeeded");
    assert_eq!(body, "s1");
    // Once the old worker's request is done, the drain ends.
    eventually(Duration::from_secs(5), "drained", || async {
        let st = with.status(ids).await.ok()?[0].clone();
        (st.state == TargetState::Draining && st.connections == Some(0)).then_some(())
    })
    .await;
    with.enable(ids).await.expect("enable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_socket_given_as_the_master_is_a_clear_error() {
    let Some(bin) = haproxy_bin() else { return };
    let s1 = Backend::start("s1").await;
    let h = MasterWorker::start(&bin, s1.addr).await;
    let lb = HaproxyBalancer::builder()
        .node(Node::unix(h.admin()).named("lb-a").master_socket(h.admin()))
        .backend("web")
        .retry(quick_retry())
        .build()
        .expect("valid");
    // A listing goes on without the old workers' count (logged)…
    assert_eq!(lb.list().await.expect("list").len(), 1);
    let id = TargetId::new("web/s1").expect("id");
    // …a status never reads it as 0: it fails, naming node and command…
    let e = lb
        .status(std::slice::from_ref(&id))
        .await
        .expect_err("not a master socket");
    let msg = e.to_string();
    assert!(
        msg.contains("lb-a") && msg.contains("show proc"),
        "names the node and the command: {msg}"
    );
    // …and changes never ask the master: a drain and an enable still work.
    lb.drain(std::slice::from_ref(&id)).await.expect("drain");
    lb.enable(std::slice::from_ref(&id)).await.expect("enable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_renamed_by_the_reload_is_still_counted_by_its_address() {
    let Some(bin) = haproxy_bin() else { return };
    let s1 = Backend::start("s1").await;
    let h = MasterWorker::start(&bin, s1.addr).await;
    let frontend = h.frontend;
    let held = tokio::spawn(async move { get(frontend, "/hold").await });
    eventually(Duration::from_secs(5), "a request in flight", || async {
        (s1.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    // The reload renames web/s1 to web/app-1 (same address).
    h.rename(s1.addr, "app-1");
    h.reload().await;
    let lb = balancer(&h, true);
    let id = TargetId::new("web/app-1").expect("id");
    lb.drain(std::slice::from_ref(&id)).await.expect("drain");
    let st = lb.status(std::slice::from_ref(&id)).await.expect("status")[0].clone();
    assert_eq!(
        (st.state, st.connections),
        (TargetState::Draining, Some(1)),
        "the old worker's request on web/s1 runs on the same host"
    );
    s1.release(1);
    held.await
        .expect("join")
        .expect("the held request succeeded");
    eventually(Duration::from_secs(5), "drained", || async {
        let st = lb.status(std::slice::from_ref(&id)).await.ok()?[0].clone();
        (st.connections == Some(0)).then_some(())
    })
    .await;
}

const SHOW_PROC: &str =
    "#<PID>          <type>          <reloads>       <uptime>        <version>\n\
1               master          1 [failed: 0]   0d00h01m00s     2.6.12\n\
# workers\n\
2               worker          0               0d00h00m10s     2.6.12\n\
# old workers\n\
4242            worker          1               0d00h01m00s     2.6.12\n\
# programs\n\n";

/// A real HAProxy (web: s1, s2) whose master socket is a fake answering
/// `show proc` with one old worker, 4242, and `@!4242 …` with `stat`.
async fn with_fake_master(
    stat: impl Fn(&[Arc<Backend>]) -> String,
) -> (Haproxy, FakeSocket, HaproxyBalancer, Vec<Arc<Backend>>) {
    with_fake_master_of(SHOW_PROC, None, stat).await
}

/// As [`with_fake_master`], with this `show proc` reply, and this `@!4242
/// show info` reply if any.
async fn with_fake_master_of(
    show_proc: &str,
    info: Option<&str>,
    stat: impl Fn(&[Arc<Backend>]) -> String,
) -> (Haproxy, FakeSocket, HaproxyBalancer, Vec<Arc<Backend>>) {
    let bin = haproxy_bin().expect("haproxy");
    let b = vec![Backend::start("s1").await, Backend::start("s2").await];
    let stat = stat(&b);
    let h = Haproxy::start(&bin, &Layout::web(&[&b[0], &b[1]])).await;
    let mut replies = vec![("show proc".to_owned(), show_proc.as_bytes().to_vec())];
    if let Some(info) = info {
        replies.push(("@!4242 show info".into(), info.as_bytes().to_vec()));
    }
    replies.push(("@!4242 ".into(), stat.as_bytes().to_vec()));
    let fake = FakeSocket::start(FakeReply::ByPrefix(replies));
    let lb = HaproxyBalancer::builder()
        .node(h.node("lb-a").master_socket(&fake.path))
        .backend("web")
        .retry(quick_retry())
        .build()
        .expect("valid");
    (h, fake, lb, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_worker_that_runs_and_does_not_answer_is_never_read_as_zero() {
    if haproxy_bin().is_none() {
        return;
    }
    let (_h, fake, lb, _b) =
        with_fake_master(|_| "Can't connect to the target CLI!\n".to_owned()).await;
    let ids = [TargetId::new("web/s1").expect("id")];
    let e = lb.status(&ids).await.expect_err("the count is unknown");
    assert!(
        e.is_retryable() && e.to_string().contains("4242"),
        "retryable, names the worker: {e}"
    );
    // It asked `show proc` again before saying so.
    let asked = fake.received.lock().expect("lock").clone();
    assert!(
        asked.iter().filter(|l| l.starts_with("show proc")).count() >= 2,
        "{asked:?}"
    );
    assert_eq!(lb.list().await.expect("a listing goes on").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_workers_row_without_an_address_counts_for_its_server_by_name() {
    if haproxy_bin().is_none() {
        return;
    }
    // HAProxy before 1.9 has no `addr` column: the name decides.
    let stat = "# pxname,svname,qcur,qmax,scur,smax,status,check_status,\n\
web,s1,1,1,2,2,UP,L4OK,\n\
web,s2,0,0,0,0,UP,L4OK,\n\
other,s2,0,0,5,5,UP,L4OK,\n\n";
    let (_h, _fake, lb, _b) = with_fake_master(|_| stat.to_owned()).await;
    let ids = [
        TargetId::new("web/s1").expect("id"),
        TargetId::new("web/s2").expect("id"),
    ];
    let st = lb.status(&ids).await.expect("status");
    assert_eq!(st[0].connections, Some(3), "scur 2 + qcur 1 on web/s1");
    assert_eq!(
        st[1].connections,
        Some(0),
        "web/s2 is not other/s2, nor web/s1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_workers_row_counts_for_the_server_at_its_address_only() {
    if haproxy_bin().is_none() {
        return;
    }
    // The old worker called s1's host `old-name`.
    let (_h, _fake, lb, _b) = with_fake_master(|b| {
        format!(
            "# pxname,svname,qcur,qmax,scur,smax,status,check_status,addr\n\
web,old-name,0,0,4,4,UP,L4OK,{}\n\n",
            b[0].addr
        )
    })
    .await;
    let ids = [
        TargetId::new("web/s1").expect("id"),
        TargetId::new("web/s2").expect("id"),
    ];
    let st = lb.status(&ids).await.expect("status");
    assert_eq!(st[0].connections, Some(4), "web/s1 is at that address");
    assert_eq!(st[1].connections, Some(0), "web/s2 is not");
}

/// An old worker's `show stat` rows with nothing in flight.
fn idle_rows(b: &[Arc<Backend>]) -> String {
    format!(
        "# pxname,svname,qcur,qmax,scur,smax,status,check_status,addr\n\
web,s1,0,0,0,0,UP,L4OK,{}\n\
web,s2,0,0,0,0,UP,L4OK,{}\n\n",
        b[0].addr, b[1].addr
    )
}

// HAProxy before 2.5: a stopping worker's `show stat` is header-only
// (haproxy issue 1307), so its count is unknown, never 0; whatever its
// reply, the old worker's own version (`show proc`) says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_worker_before_2_5_is_an_unknown_count_never_0() {
    if haproxy_bin().is_none() {
        return;
    }
    let v24 = SHOW_PROC.replace("2.6.12", "2.4.22");
    let ids = [TargetId::new("web/s1").expect("id")];
    let (_h, _fake, lb, _b) = with_fake_master_of(&v24, None, idle_rows).await;
    let e = lb.status(&ids).await.expect_err("unknown count");
    assert!(
        e.is_retryable() && e.to_string().contains("2.4.22") && e.to_string().contains("4242"),
        "retryable, names the worker and its version: {e}"
    );
    // The header alone, as 2.4 answers while stopping.
    let (_h, _fake, lb, _b) = with_fake_master_of(&v24, None, |_| {
        "# pxname,svname,qcur,qmax,scur,smax,status,check_status,addr\n\n".to_owned()
    })
    .await;
    assert!(lb.status(&ids).await.expect_err("unknown").is_retryable());
    // No `<version>` column: the worker's `show info` says it.
    let bare = "#<PID>          <type>\n1 master\n# workers\n2 worker\n# old workers\n4242 worker\n# programs\n\n";
    let (_h, fake, lb, _b) = with_fake_master_of(
        bare,
        Some("Name: HAProxy\nVersion: 2.4.22\nRelease_date: 2023/02/14\n\n"),
        idle_rows,
    )
    .await;
    let e = lb.status(&ids).await.expect_err("unknown count");
    assert!(e.to_string().contains("2.4.22"), "{e}");
    let asked = fake.received.lock().expect("lock").clone();
    assert!(
        asked.iter().any(|l| l.starts_with("@!4242 show info")),
        "{asked:?}"
    );
    // A listing goes on without the count.
    assert_eq!(lb.list().await.expect("list").len(), 2);
    // 2.5 and later: counted.
    let (_h, _fake, lb, _b) =
        with_fake_master_of(&SHOW_PROC.replace("2.6.12", "2.5.0"), None, idle_rows).await;
    assert_eq!(
        lb.status(&ids).await.expect("status")[0].connections,
        Some(0)
    );
}

// Whatever the version, an old worker listing no server at all says
// nothing about its requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_worker_listing_no_server_is_an_unknown_count() {
    if haproxy_bin().is_none() {
        return;
    }
    let (_h, _fake, lb, _b) = with_fake_master(|_| {
        "# pxname,svname,qcur,qmax,scur,smax,status,check_status,addr\n\n".to_owned()
    })
    .await;
    let e = lb
        .status(&[TargetId::new("web/s1").expect("id")])
        .await
        .expect_err("unknown count");
    assert!(
        e.is_retryable() && e.to_string().contains("no server"),
        "{e}"
    );
}
