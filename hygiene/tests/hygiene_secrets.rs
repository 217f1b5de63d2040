//! Secrets stay secret, end to end through the `hygiene` binary (issue
//! 20): neither the balancer's password nor a cloud credential of
//! hygiene's environment reaches a maintenance, the ssh client, the
//! journal or the report; only what the configuration names is passed.
#![cfg(feature = "nginx")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{hygiene, out};

/// The password the test server wants (`hygiene:Pw-7f3b9e-lc`), held in a
/// variable whose name is on the allow-list's `LC_*`: withheld all the same.
const PASSWORD: &str = "Pw-7f3b9e-lc";
const PASSWORD_ENV: &str = "LC_HYGIENE_PASSWORD";
/// A cloud credential in hygiene's environment.
const AWS_SECRET: &str = "aws-Zq81-secret-value";

async fn nginx() -> hygiene_nginx::testing::FakeNginx {
    use hygiene_nginx::testing::{FakeNginx, Kind, State};
    let srv = FakeNginx::start(State::standard()).await;
    srv.with(|s| {
        s.auth = Some("Basic aHlnaWVuZTpQdy03ZjNiOWUtbGM=".into());
        s.auto_check = Some(true);
        for (kind, name) in [(Kind::Http, "backend"), (Kind::Stream, "tcp")] {
            for p in &mut s.upstream_mut(kind, name).peers {
                p.server = match kind {
                    Kind::Http => format!("127.0.0.{}:8080", p.id + 1),
                    Kind::Stream => format!("127.0.0.{}:5432", p.id + 10),
                };
            }
        }
    });
    srv
}

/// `nginx.toml` pointed at the test server, with `executor` in place of
/// the example's.
fn nginx_config(dir: &Path, srv: &hygiene_nginx::testing::FakeNginx, executor: &str) -> PathBuf {
    let mut t = common::example_config("nginx.toml");
    common::replace(&mut t, "balancer.nginx", "api_urls", vec![srv.url()]);
    common::replace(&mut t, "balancer.nginx", "upstreams", vec!["backend"]);
    common::replace(&mut t, "balancer.nginx", "stream_upstreams", vec!["tcp"]);
    common::replace(&mut t, "balancer.nginx", "password_env", PASSWORD_ENV);
    common::replace(&mut t, "balancer.nginx", "timeout", "5s");
    t.remove("executor");
    t.insert(
        "executor".into(),
        executor.parse::<toml::Table>().expect("executor").into(),
    );
    common::write(dir, &t)
}

/// Every file under `dir`, as text.
fn all_text(dir: &Path) -> String {
    let mut text = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            text.push_str(&all_text(&p));
        } else {
            text.push_str(&String::from_utf8_lossy(
                &std::fs::read(&p).unwrap_or_default(),
            ));
        }
    }
    text
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(PASSWORD),
        "the balancer's password is in {what}:\n{text}"
    );
    assert!(
        !text.contains(AWS_SECRET),
        "a cloud credential is in {what}:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_neither_the_maintenance_nor_the_journal_nor_the_report() {
    let srv = nginx().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let cfg = nginx_config(
        dir.path(),
        &srv,
        r#"[local]
program = "/bin/sh"
args = ["-c", "env"]
pass_env = ["HYGIENE_SEC_PASSED"]
env = { MODE = "patch" }
"#,
    );
    let run = tokio::task::spawn_blocking(move || {
        let mut c = hygiene(&cfg, &state);
        c.args(["run", "--json", "--poll-interval", "20ms"])
            .env(PASSWORD_ENV, PASSWORD)
            .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
            .env("HYGIENE_SEC_PASSED", "passed-by-name");
        let (code, stdout, err) = out(c);
        (code, stdout, err, all_text(&state), cfg, state)
    });
    let (code, stdout, err, stored, cfg, state) = run.await.expect("run");
    assert_eq!(code, 0, "{stdout}{err}");
    // The child's `env` is in the report and the journal: what it saw.
    for (what, text) in [("the report", &stdout), ("the state dir", &stored)] {
        assert!(
            text.contains("HYGIENE_TARGET_ID=backend/0"),
            "{what}: {text}"
        );
        assert!(
            text.contains("HYGIENE_SEC_PASSED=passed-by-name"),
            "{what}: {text}"
        );
        assert!(text.contains("MODE=patch"), "{what}: {text}");
        assert_no_secret(what, text);
    }
    assert_no_secret("stderr", &err);

    // Passing the password's variable by name is refused, naming it.
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(
        &cfg,
        text.replace("\"HYGIENE_SEC_PASSED\"", &format!("\"{PASSWORD_ENV}\"")),
    )
    .expect("write");
    let mut c = hygiene(&cfg, &state);
    c.args(["validate", "--offline"])
        .env(PASSWORD_ENV, PASSWORD);
    let (code, stdout, err) = out(c);
    assert_eq!(code, 3, "{stdout}{err}");
    assert!(
        err.contains("executor.local.pass_env")
            && err.contains(PASSWORD_ENV)
            && err.contains("never"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_do_not_reach_the_ssh_client() {
    let srv = nginx().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    // An ssh that records its environment and succeeds (preflight and
    // maintenance alike).
    let seen = dir.path().join("seen");
    std::fs::create_dir(&seen).expect("mkdir");
    let fake_ssh = dir.path().join("ssh");
    std::fs::write(
        &fake_ssh,
        format!("#!/bin/sh\nenv > {}/env.$$\nexit 0\n", seen.display()),
    )
    .expect("write");
    std::fs::set_permissions(&fake_ssh, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cfg = nginx_config(
        dir.path(),
        &srv,
        &format!(
            r#"[ssh]
command = "true"
ssh_program = {:?}
pass_env = ["HYGIENE_SEC_PASSED"]
"#,
            fake_ssh.display().to_string()
        ),
    );
    let run = tokio::task::spawn_blocking(move || {
        let mut c = hygiene(&cfg, &state);
        c.args(["run", "--json", "--poll-interval", "20ms"])
            .env(PASSWORD_ENV, PASSWORD)
            .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
            .env("SSH_AUTH_SOCK", "/run/agent.sock")
            .env("HYGIENE_SEC_PASSED", "passed-by-name");
        let (code, stdout, err) = out(c);
        (code, stdout, err, all_text(&state))
    });
    let (code, stdout, err, stored) = run.await.expect("run");
    assert_eq!(code, 0, "{stdout}{err}");
    let envs = all_text(&seen);
    // Preflight and maintenance, four targets each.
    assert!(
        envs.matches("HYGIENE_SEC_PASSED=passed-by-name").count() >= 8,
        "{envs}"
    );
    assert!(envs.contains("SSH_AUTH_SOCK=/run/agent.sock"), "{envs}");
    for (what, text) in [
        ("the ssh client's environment", &envs),
        ("the report", &stdout),
        ("the state dir", &stored),
        ("stderr", &err),
    ] {
        assert_no_secret(what, text);
    }
}
