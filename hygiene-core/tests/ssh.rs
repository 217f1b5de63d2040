//! The ssh executor against a real sshd: each test starts its own on a
//! loopback port, with host and client keys made in a temporary directory,
//! and stops it by pid.
#![cfg(feature = "ssh")]

use std::net::TcpStream;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hygiene_core::{
    ExecHandle, Executor, HandleSink, Preflight, Recovered, SshCommand, Target, TargetId,
};

/// sshd: `HYGIENE_SSHD_BIN`, else `sshd` on the PATH or in /usr/sbin. Absolute,
/// as sshd re-executes itself. `None` (after a loud skip message) when
/// missing; panics instead when `HYGIENE_REQUIRE_INTEGRATION=1`.
fn sshd_bin() -> Option<PathBuf> {
    let found = match std::env::var_os("HYGIENE_SSHD_BIN") {
        Some(bin) => Some(PathBuf::from(bin)).filter(|p| p.is_file()),
        None => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
                .map(|d| d.join("sshd"))
                .find(|p| p.is_file() && p.is_absolute())
        }
    };
    let available = hygiene_core::conformance::integration_available(
        "sshd",
        found.is_some(),
        "apt-get install -y openssh-server, or set HYGIENE_SSHD_BIN",
    );
    found.filter(|_| available)
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "hygiene-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("run ssh-keygen");
    assert!(status.success(), "ssh-keygen failed for {}", path.display());
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A running sshd, killed by pid when dropped.
struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Sshd {
    fn start() -> Option<Self> {
        let bin = sshd_bin()?;
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))
            .expect("authorized_keys");
        let port = free_port();
        let config = format!(
            "ListenAddress 127.0.0.1:{port}\n\
             HostKey {d}/host_key\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             PidFile {d}/sshd.pid\n\
             StrictModes no\n\
             UsePAM no\n\
             PermitRootLogin prohibit-password\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             LogLevel VERBOSE\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).expect("sshd_config");
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).expect("host key");
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {host_pub}"),
        )
        .expect("known_hosts");
        std::fs::write(d.join("empty_known_hosts"), "").expect("empty known_hosts");
        let log = std::fs::File::create(d.join("sshd.log")).expect("log");
        let child = Command::new(&bin)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        let mut sshd = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = sshd.child.try_wait().expect("sshd status");
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "sshd did not start ({exited:?}): {}",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(sshd)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
    }

    /// An executor for this sshd, keeping its state in the temp dir.
    fn command(&self, remote: &str) -> SshCommand {
        SshCommand::new(remote)
            .expect("command")
            .with_port(self.port)
            .with_identity_file(self.path("client_key"))
            .with_known_hosts_file(self.path("known_hosts"))
            .with_state_dir(self.path("state"))
            .with_connect_timeout(Duration::from_secs(5))
            // Connection masters outlive the test only briefly.
            .with_option("ControlPersist", "3")
            .expect("option")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
    }
}

fn target(id: &str, address: &str) -> Target {
    Target::new(TargetId::new(id).expect("id"))
        .with_address(address)
        .with_port(8080)
}

/// A sink keeping the handles it is told.
type Kept = Arc<Mutex<Vec<ExecHandle>>>;

fn keeper() -> (HandleSink, Kept) {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let k = Arc::clone(&kept);
    let sink = HandleSink::new(move |_, h| k.lock().expect("lock").push(h));
    (sink, kept)
}

#[tokio::test]
async fn runs_the_remote_command_with_the_targets_variables_inert() {
    let Some(sshd) = Sshd::start() else { return };
    let marker = sshd.path("injected");
    // Shell metacharacters in the id must reach the command as text.
    let id = format!(
        "web'1;touch${{IFS}}{m}\"$(touch${{IFS}}{m})`touch${{IFS}}{m}`",
        m = marker.display()
    );
    let c = sshd.command(
        "echo \"$HYGIENE_TARGET_ID|$HYGIENE_TARGET_ADDRESS|$HYGIENE_TARGET_PORT\"; echo to-stderr >&2",
    );
    let out = c
        .execute(&[target(&id, "127.0.0.1")])
        .await
        .expect("execute");
    assert!(out[0].success, "{:?}\nsshd: {}", out[0], sshd.log());
    assert_eq!(out[0].exit_code, Some(0));
    assert_eq!(out[0].stdout_tail.trim(), format!("{id}|127.0.0.1|8080"));
    assert!(out[0].stderr_tail.contains("to-stderr"), "{:?}", out[0]);
    assert!(
        !marker.exists(),
        "the target id was run by the remote shell"
    );
}

#[tokio::test]
async fn a_non_zero_exit_code_is_reported_with_the_host() {
    let Some(sshd) = Sshd::start() else { return };
    let out = sshd
        .command("echo patched; echo broke >&2; exit 7")
        .execute(&[target("web-1", "127.0.0.1")])
        .await
        .expect("execute");
    let o = &out[0];
    assert!(!o.success);
    assert_eq!(o.exit_code, Some(7), "{o:?}");
    assert_eq!(o.stdout_tail.trim(), "patched");
    assert_eq!(o.stderr_tail.trim(), "broke");
    let msg = o.message.as_deref().unwrap_or_default();
    assert!(
        msg.contains("127.0.0.1") && msg.contains("web-1") && msg.contains("code 7"),
        "{msg}"
    );
}

#[tokio::test]
async fn an_unknown_host_key_is_refused_and_nothing_runs() {
    let Some(sshd) = Sshd::start() else { return };
    let marker = sshd.path("ran");
    let c = sshd
        .command(&format!("touch {}", marker.display()))
        .with_known_hosts_file(sshd.path("empty_known_hosts"));
    let t = target("web-1", "127.0.0.1");
    let pre = c
        .preflight(std::slice::from_ref(&t))
        .await
        .expect("preflight");
    assert!(
        matches!(&pre[0], Preflight::NotReady(why) if why.contains("host key") && why.contains("127.0.0.1")),
        "{pre:?}"
    );
    let out = c.execute(&[t]).await.expect("execute");
    let o = &out[0];
    assert!(!o.success);
    assert_eq!(o.exit_code, Some(255), "{o:?}");
    let msg = o.message.as_deref().unwrap_or_default();
    assert!(
        msg.contains("Host key verification failed") && msg.contains("empty_known_hosts"),
        "{msg}"
    );
    assert!(
        !marker.exists(),
        "the remote command ran on an unknown host"
    );
}

#[tokio::test]
async fn option_injection_through_the_address_is_rejected() {
    let Some(sshd) = Sshd::start() else { return };
    let marker = sshd.path("proxy-command-ran");
    let c = sshd.command("true");
    let t = target(
        "web-1",
        &format!("-oProxyCommand=touch {}", marker.display()),
    );
    let pre = c
        .preflight(std::slice::from_ref(&t))
        .await
        .expect("preflight");
    assert!(
        matches!(&pre[0], Preflight::NotReady(why) if why.contains("web-1") && why.contains("'-'")),
        "{pre:?}"
    );
    let out = c.execute(&[t]).await.expect("execute");
    assert!(!out[0].success);
    assert!(
        out[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("fix the target's address"),
        "{:?}",
        out[0]
    );
    // One without a leading '-' but with whitespace, for good measure.
    let spaced = target("web-2", "127.0.0.1 -oProxyCommand=x");
    assert!(matches!(
        &c.preflight(&[spaced]).await.expect("preflight")[0],
        Preflight::NotReady(_)
    ));
    assert!(!marker.exists(), "ssh read the address as an option");
}

#[tokio::test]
async fn preflight_is_ready_for_the_host_and_not_for_a_closed_port() {
    let Some(sshd) = Sshd::start() else { return };
    let t = [target("web-1", "127.0.0.1")];
    let ok = sshd.command("true").preflight(&t).await.expect("preflight");
    assert_eq!(ok, vec![Preflight::Ready], "sshd: {}", sshd.log());
    // The connection stays open for the maintenance to reuse.
    let socket = std::fs::read_dir(sshd.path("state"))
        .expect("state dir")
        .filter_map(std::result::Result::ok)
        .any(|e| e.file_type().is_ok_and(|t| t.is_socket()));
    assert!(socket, "no control socket in the state dir after preflight");
    let closed = sshd
        .command("true")
        .with_port(free_port())
        .preflight(&t)
        .await
        .expect("preflight");
    assert!(
        matches!(&closed[0], Preflight::NotReady(why) if why.contains("127.0.0.1") && why.contains("cannot be reached")),
        "{closed:?}"
    );
}

#[tokio::test]
async fn the_time_limit_kills_a_hanging_remote_command() {
    let Some(sshd) = Sshd::start() else { return };
    let started = Instant::now();
    // sshd runs on this machine: the pid the remote shell prints is local.
    let out = sshd
        .command("echo $$; exec sleep 60")
        .with_timeout(Duration::from_secs(2))
        .execute(&[target("web-1", "127.0.0.1")])
        .await
        .expect("execute");
    let o = &out[0];
    assert!(!o.success);
    assert_eq!(o.exit_code, None, "{o:?}");
    let msg = o.message.as_deref().unwrap_or_default();
    assert!(
        msg.contains("time limit") && msg.contains("127.0.0.1"),
        "{msg}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let pid: u32 = o.stdout_tail.trim().parse().expect("the remote pid");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(
            Instant::now() < deadline,
            "the remote command (pid {pid}) outlived the time limit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_new_process_recovers_a_maintenance_whose_runner_died() {
    let Some(sshd) = Sshd::start() else { return };
    let c = sshd.command("sleep 1; echo done; exit 3");
    let t = target("web-1", "127.0.0.1");
    let (sink, kept) = keeper();
    let run = {
        let (c, t) = (c.clone(), t.clone());
        tokio::spawn(async move { c.execute_tracked(&[t], &sink).await })
    };
    while kept.lock().expect("lock").is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The run that started it is gone, as a killed process would be.
    run.abort();
    let handle = kept.lock().expect("lock")[0].clone();
    let got = sshd
        .command("something else")
        .recover(&t, &handle)
        .await
        .expect("recover");
    let Recovered::Finished(o) = got else {
        panic!("{got:?}");
    };
    assert!(!o.success);
    assert_eq!(o.exit_code, Some(3), "{o:?}");
    assert_eq!(o.stdout_tail.trim(), "done");
    assert!(
        o.message
            .as_deref()
            .unwrap_or_default()
            .contains("127.0.0.1"),
        "{o:?}"
    );
}
