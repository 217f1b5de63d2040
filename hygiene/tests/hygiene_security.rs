//! Trust boundaries, end to end through the `hygiene` binary (issue 20):
//! a journal is data, not orders (forged handles are refused and
//! reported, nothing else is signalled or deleted); the state is private
//! and never followed through a symlink; what targets print reaches a
//! terminal escaped. Secrets: `hygiene_secrets.rs`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{have_haproxy, hygiene, out};
use examples::scenario::{Scenario, ScenarioConfig};
use hygiene_core::journal::{FileJournal, Record};
use hygiene_core::{LoadBalancer as _, TargetId, TargetState};

async fn start_scenario(servers: usize) -> Scenario {
    let mut tries = 0;
    loop {
        match Scenario::start(ScenarioConfig {
            servers,
            ..ScenarioConfig::default()
        })
        .await
        {
            Ok(s) => return s,
            Err(e) if tries < 3 && e.to_string().contains("in use") => tries += 1,
            Err(e) => panic!("scenario: {e}"),
        }
    }
}

/// A configuration over the scenario's HAProxy with a local executor
/// running `sh -c script`.
fn config(dir: &Path, scn: &Scenario, script: &str, extra: &str) -> PathBuf {
    let path = dir.join("hygiene.toml");
    let text = format!(
        r#"pool = "web"

[balancer.haproxy]
nodes = [{sock:?}]
backends = ["web"]

[executor.local]
program = "/bin/sh"
args = ["-c", {script:?}]
timeout = "60s"
{extra}
[rollout]
batch_size = 1
poll_interval = "50ms"
drain_timeout = "20s"
health_timeout = "20s"
"#,
        sock = scn.haproxy.socket().display().to_string(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A process of its own process group that is not hygiene's: what a
/// forged journal would have hygiene kill.
struct Bystander(Child);

impl Bystander {
    fn start() -> Self {
        let child = Command::new("sleep")
            .arg("300")
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn bystander");
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _killed = self.0.kill();
        let _reaped = self.0.wait();
    }
}

/// `/proc/<pid>/stat` field 22: the start time a real handle records.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..i + 3].to_owned()))
        .is_some_and(|state| state != "Z")
}

/// The `started` record's handle in the journal, once it is there.
fn wait_for_handle(journal: &Path, child: &mut Child) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = FileJournal::read(journal).unwrap_or_default();
        if let Some(h) = records.iter().find_map(|r| match r {
            Record::Started { handle, .. } => Some(handle.0.clone()),
            _ => None,
        }) {
            return h;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the run ended early"
        );
        assert!(Instant::now() < deadline, "no maintenance started");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Replaces the `started` record's handle of the journal (by hand, as an
/// attacker or a confused operator would).
fn forge(journal: &Path, handle: &serde_json::Value) {
    let text = std::fs::read_to_string(journal).expect("journal");
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("json line");
            if v["record"] == "started" {
                v["handle"] = handle.clone();
            }
            v.to_string()
        })
        .collect();
    std::fs::write(journal, lines.join("\n") + "\n").expect("write journal");
}

/// Kills the process group a real handle names (the test's own clean-up).
fn kill_group(pid: u32) {
    assert!(pid > 1);
    let _status = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

/// A directory outside `exec/` that a forged handle names, with what a
/// finished maintenance leaves (old hygiene deleted it).
fn precious(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).expect("mkdir");
    std::fs::write(p.join("status"), "0\n").expect("write");
    std::fs::write(p.join("data"), "keep me\n").expect("write");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_journal_handles_are_refused_reported_and_acted_on_never() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario(2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), &scn, "sleep 20", "");
    let mut bystander = Bystander::start();
    let here = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_owned();
    let uuid = "0123456789abcdef0123456789abcdef";
    let outside = precious(dir.path(), &format!("web_s1-{uuid}"));

    type Forgery = Box<dyn Fn(&serde_json::Value) -> serde_json::Value>;
    let with = |f: fn(&mut serde_json::Value, &Path, u32)| -> Forgery {
        let outside = outside.clone();
        let pid = bystander.pid();
        Box::new(move |real: &serde_json::Value| {
            let mut h = real.clone();
            // Long past its time limit: a trusted handle gets its group killed.
            h["started_at"] = "2020-01-01T00:00:00Z".into();
            f(&mut h, &outside, pid);
            h
        })
    };
    let cases: Vec<(&str, Forgery, &str)> = vec![
        (
            "pid 1",
            with(|h, _, _| {
                h["pid"] = 1.into();
                h["start_ticks"] = start_ticks(1).into();
            }),
            "pid 1 is not a process",
        ),
        (
            "an unrelated pid without start_ticks",
            with(|h, _, pid| {
                h["pid"] = pid.into();
                h.as_object_mut().expect("object").remove("start_ticks");
            }),
            "no start time",
        ),
        (
            "an unrelated pid with its start_ticks",
            with(|h, _, pid| {
                h["pid"] = pid.into();
                h["start_ticks"] = start_ticks(pid).into();
            }),
            "was not started for",
        ),
        (
            "a dir outside exec/",
            with(|h, outside, _| h["dir"] = outside.display().to_string().into()),
            "is not in this state directory's",
        ),
        (
            "a symlinked dir",
            with(|h, outside, _| {
                let real = PathBuf::from(h["dir"].as_str().expect("dir"));
                let link = real.with_file_name("web_s1-fedcba9876543210fedcba9876543210");
                let _fresh = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(outside, &link).expect("symlink");
                h["dir"] = link.display().to_string().into();
            }),
            "is a symlink",
        ),
        (
            "another host's handle",
            with(|h, _, _| h["host"] = "build-7.elsewhere".into()),
            "not on this one",
        ),
    ];
    let mut failures: Vec<String> = Vec::new();
    for mode in ["resume", "restore"] {
        for (name, forgery, why) in &cases {
            // A state directory of its own: one run in each journal.
            let state = dir
                .path()
                .join(format!("state-{mode}-{}", name.replace(' ', "-")));
            let journal = state.join("web.jsonl");
            let mut c = hygiene(&cfg, &state);
            c.arg("run").stdout(Stdio::null()).stderr(Stdio::null());
            let mut run = c.spawn().expect("spawn run");
            let real = wait_for_handle(&journal, &mut run);
            run.kill().expect("SIGKILL");
            run.wait().expect("reap");
            assert_eq!(real["host"], here.as_str(), "{real}");
            let maintenance = u32::try_from(real["pid"].as_u64().expect("pid")).expect("pid");
            let real_dir = PathBuf::from(real["dir"].as_str().expect("dir"));
            forge(&journal, &forgery(&real));

            let mut c = hygiene(&cfg, &state);
            c.args([mode, "--json"]);
            let (code, stdout, err) = out(c);
            let report = stdout.lines().last().unwrap_or_default();
            // Every case is checked, and every broken promise listed.
            let mut broken = |what: &str| failures.push(format!("{mode} with {name}: {what}"));
            if !report.contains("was refused, nothing was signalled or deleted")
                || !report.contains(why)
            {
                broken(&format!(
                    "the refusal ({why}) is not in the report: exit {code}\n{stdout}\n{err}"
                ));
            }
            if name.contains("host") && !report.contains("build-7.elsewhere") {
                broken("the other host is not named");
            }
            if !bystander.alive() {
                broken("the bystander was killed");
            }
            if !running(maintenance) {
                broken("a refused handle's process was signalled");
            }
            if !real_dir.is_dir() {
                broken("its exec dir was deleted on a refused handle");
            }
            if std::fs::read_to_string(outside.join("data"))
                .ok()
                .as_deref()
                != Some("keep me\n")
            {
                broken("a directory outside exec/ was deleted");
            }
            let records = FileJournal::read(&journal).expect("journal");
            if !records.iter().any(
                |r| matches!(r, Record::Result { error: Some(e), .. } if e.contains("refused")),
            ) {
                broken("the journal does not record the refusal");
            }
            kill_group(maintenance);
            // resume keeps the target out (its maintenance is unknown);
            // put it back for the next case.
            scn.balancer
                .enable(&[TargetId::new("web/s1").expect("id")])
                .await
                .expect("enable");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let listed = scn.balancer.list().await.expect("list");
    assert!(listed
        .iter()
        .all(|l| l.status.state == TargetState::InService));
    scn.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_start_time_is_past_its_limit() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario(2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), &scn, "sleep 50", "");
    let mut bystander = Bystander::start();
    for mode in ["resume", "restore"] {
        let state = dir.path().join(format!("state-{mode}"));
        let journal = state.join("web.jsonl");
        let mut c = hygiene(&cfg, &state);
        c.arg("run").stdout(Stdio::null()).stderr(Stdio::null());
        let mut run = c.spawn().expect("spawn run");
        let mut h = wait_for_handle(&journal, &mut run);
        run.kill().expect("SIGKILL");
        run.wait().expect("reap");
        let maintenance = u32::try_from(h["pid"].as_u64().expect("pid")).expect("pid");
        let real_dir = PathBuf::from(h["dir"].as_str().expect("dir"));
        h["started_at"] = "not a time".into();
        forge(&journal, &h);

        let started = Instant::now();
        let mut c = hygiene(&cfg, &state);
        c.args([mode, "--json"]);
        let (code, stdout, err) = out(c);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{mode}: waited for a time it cannot read"
        );
        assert!(
            stdout.contains("ran past its timeout") && stdout.contains("killed"),
            "{mode}: exit {code}\n{stdout}\n{err}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while running(maintenance) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !running(maintenance),
            "{mode}: its own maintenance was killed"
        );
        assert!(
            !real_dir.exists(),
            "{mode}: its own exec dir was cleaned up"
        );
        assert!(bystander.alive());
        scn.balancer
            .enable(&[TargetId::new("web/s1").expect("id")])
            .await
            .expect("enable");
    }
    scn.stop().await;
}

// ------------------------------------------------------- private state

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_private_and_refused_when_others_can_plant_a_journal() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario(2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), &scn, "exit 0", "");
    let state = dir.path().join("state");
    let body = {
        let (cfg, state, root) = (cfg.clone(), state.clone(), dir.path().to_owned());
        move || {
            // A loose umask: what hygiene creates is private all the same.
            let mut c = hygiene(&cfg, &state);
            c.arg("run");
            c.stdout(Stdio::null());
            with_umask_000(&mut c);
            let (code, stdout, err) = out(c);
            assert_eq!(code, 0, "{stdout}{err}");
            assert_eq!(mode(&state), 0o700, "the state dir");
            assert_eq!(mode(&state.join("exec")), 0o700, "exec/");
            assert_eq!(mode(&state.join("web.jsonl")), 0o600, "the journal");

            // Writable by others, or another user's: refused, with the fix,
            // before anything is changed.
            for m in [0o777, 0o770] {
                std::fs::set_permissions(&state, std::fs::Permissions::from_mode(m))
                    .expect("chmod");
                let mut c = hygiene(&cfg, &state);
                c.arg("run");
                let (code, stdout, err) = out(c);
                assert_eq!(code, 5, "{stdout}{err}");
                assert!(
                    err.contains(&format!("chmod 700 {}", state.display())),
                    "{err}"
                );
            }
            std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            let mut c = hygiene(&cfg, &state);
            c.args(["validate", "--offline"]);
            let (code, stdout, err) = out(c);
            assert_eq!(code, 0, "{stdout}{err}");
            assert!(
                stdout.contains("problem: the state directory")
                    && stdout.contains(&format!("chmod 700 {}", state.display())),
                "validate warns about a state dir others can read: {stdout}"
            );
            std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))
                .expect("chmod");
            let me = std::fs::metadata(&root).expect("meta");
            if std::os::unix::fs::chown(&state, Some(65534), None).is_ok() {
                let mut c = hygiene(&cfg, &state);
                c.arg("resume");
                let (code, stdout, err) = out(c);
                assert_eq!(code, 5, "{stdout}{err}");
                let uid = std::os::unix::fs::MetadataExt::uid(&me);
                assert!(
                    err.contains(&format!("chown {uid} {}", state.display()))
                        && err.contains("65534"),
                    "{err}"
                );
            }

            // A journal that is a symlink: refused; its target neither
            // created nor written.
            let state2 = root.join("state2");
            std::fs::create_dir(&state2).expect("mkdir");
            std::fs::set_permissions(&state2, std::fs::Permissions::from_mode(0o700))
                .expect("chmod");
            let victim = root.join("victim");
            std::os::unix::fs::symlink(&victim, state2.join("web.jsonl")).expect("symlink");
            let mut c = hygiene(&cfg, &state2);
            c.arg("run");
            let (code, stdout, err) = out(c);
            assert_eq!(code, 5, "{stdout}{err}");
            assert!(err.contains("symlink"), "{err}");
            assert!(!victim.exists(), "the link's target was created");
            std::fs::write(&victim, "precious\n").expect("write");
            let mut c = hygiene(&cfg, &state2);
            c.arg("run");
            let (code, _, err) = out(c);
            assert_eq!(code, 5, "{err}");
            assert_eq!(
                std::fs::read_to_string(&victim).expect("read"),
                "precious\n"
            );
        }
    };
    tokio::task::spawn_blocking(body).await.expect("test body");
    let listed = scn.balancer.list().await.expect("list");
    assert!(listed
        .iter()
        .all(|l| l.status.state == TargetState::InService));
    scn.stop().await;
}

/// Runs the command under `umask 000` (through `sh`, no unsafe code).
fn with_umask_000(c: &mut Command) {
    let program = c.get_program().to_owned();
    let args: Vec<_> = c.get_args().map(ToOwned::to_owned).collect();
    let mut sh = Command::new("/bin/sh");
    sh.arg("-c")
        .arg("umask 000; exec \"$@\"")
        .arg("sh")
        .arg(program)
        .args(args);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh.stdin(Stdio::null()).stdout(Stdio::null());
    *c = sh;
}

#[cfg(feature = "nginx")]
#[test]
fn validate_warns_about_secret_files_others_can_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("nginx.password");
    std::fs::write(&secret, "hunter2\n").expect("write");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut t = common::example_config("nginx.toml");
    let n = common::section(&mut t, "balancer.nginx");
    n.remove("password_env");
    n.insert("password_file".into(), secret.display().to_string().into());
    let cfg = common::write(dir.path(), &t);
    let mut c = hygiene(&cfg, &dir.path().join("state"));
    c.args(["validate", "--offline"]);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("balancer.nginx.password_file")
            && stdout.contains(&format!("chmod 600 {}", secret.display())),
        "{stdout}"
    );
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut c = hygiene(&cfg, &dir.path().join("state"));
    c.args(["validate", "--offline"]);
    let (_, stdout, _) = out(c);
    assert!(!stdout.contains("password_file"), "{stdout}");
}

// ------------------------------------------------- terminal escapes

/// A configuration whose ssh's preflight succeeds and whose maintenance
/// fails (as ssh itself, exit 255) with a last stderr line that writes the
/// clipboard (OSC 52), moves the cursor up and erases the line.
fn evil_ssh_config(dir: &Path, scn: &Scenario) -> PathBuf {
    let fake_ssh = dir.join("ssh");
    std::fs::write(
        &fake_ssh,
        "#!/bin/sh\nfor a; do last=$a; done\n[ \"$last\" = true ] && exit 0\nprintf 'ssh: \\033]52;c;cm0gLXJmIC8=\\007\\033[1A\\033[2Kall good\\n' >&2\nexit 255\n",
    )
    .expect("write");
    std::fs::set_permissions(&fake_ssh, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cfg = dir.join("hygiene.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"pool = "web"

[balancer.haproxy]
nodes = [{sock:?}]
backends = ["web"]

[executor.ssh]
command = "patch"
ssh_program = {ssh:?}

[rollout]
poll_interval = "50ms"
health_timeout = "20s"
"#,
            sock = scn.haproxy.socket().display().to_string(),
            ssh = fake_ssh.display().to_string(),
        ),
    )
    .expect("config");
    cfg
}

/// What the target said, escaped as hygiene shows it to a person.
const ESCAPED: &str = "\\u{1b}]52;c;cm0gLXJmIC8=\\u{7}\\u{1b}[1A\\u{1b}[2Kall good";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_view_on_a_terminal_escapes_what_a_target_prints() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario(2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let cfg = evil_ssh_config(dir.path(), &scn);
    // `script` gives hygiene a terminal: the live view is drawn (with its
    // own escapes), and the target's words must reach it escaped.
    let line = format!(
        "{} -c {} --state-dir {} run --yes",
        env!("CARGO_BIN_EXE_hygiene"),
        cfg.display(),
        state.display()
    );
    let body = move || {
        let mut c = Command::new("script");
        c.args(["-qec", &line, "/dev/null"]).stdin(Stdio::null());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("HYGIENE_") {
                c.env_remove(k);
            }
        }
        c.output()
    };
    let o = match tokio::task::spawn_blocking(body).await.expect("test body") {
        Ok(o) => o,
        Err(e) => {
            eprintln!("no `script` here ({e}): the live view is not checked");
            scn.stop().await;
            return;
        }
    };
    let seen = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        seen.contains("FAILED web/s1"),
        "the live view ran: {seen:?}"
    );
    assert!(
        !seen.contains("\u{1b}]52"),
        "OSC 52 reached the terminal: {seen:?}"
    );
    assert!(
        !seen.contains("\u{1b}[2Kall good"),
        "the erase-line reached the terminal: {seen:?}"
    );
    assert!(seen.contains(ESCAPED), "{seen:?}");
    scn.balancer
        .enable(&[TargetId::new("web/s1").expect("id")])
        .await
        .expect("enable");
    scn.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_target_prints_reaches_the_terminal_escaped() {
    if !have_haproxy() {
        return;
    }
    let scn = start_scenario(2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let cfg = evil_ssh_config(dir.path(), &scn);
    let body = move || {
        let mut c = hygiene(&cfg, &state);
        c.arg("run");
        let (code, summary, err) = out(c);
        let mut c = hygiene(&cfg, &state);
        c.arg("status");
        let (_, status, _) = out(c);
        let mut c = hygiene(&cfg, &state);
        c.args(["status", "--json"]);
        let (_, json, _) = out(c);
        (code, summary, err, status, json)
    };
    let (code, summary, err, status, json) =
        tokio::task::spawn_blocking(body).await.expect("test body");
    assert_eq!(
        code, 11,
        "the target failed and is kept out: {summary}{err}"
    );
    for (what, text) in [
        ("the summary", &summary),
        ("status", &status),
        ("stderr", &err),
    ] {
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "a terminal escape reached {what}: {text:?}"
        );
    }
    for (what, text) in [("the summary", &summary), ("status", &status)] {
        assert!(
            text.contains(ESCAPED),
            "{what} shows what the target said, escaped: {text}"
        );
    }
    // JSON keeps the text exactly (escaped the JSON way).
    let st: serde_json::Value = serde_json::from_str(json.trim()).expect("status json");
    assert!(
        st.to_string().contains("\\u001b]52;c;cm0gLXJmIC8=\\u0007"),
        "{st}"
    );
    scn.balancer
        .enable(&[TargetId::new("web/s1").expect("id")])
        .await
        .expect("enable");
    scn.stop().await;
}
