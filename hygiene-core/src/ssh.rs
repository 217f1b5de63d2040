//! [`SshCommand`]: runs a remote command on each target over the system's
//! OpenSSH client. The local `ssh` process goes through the same runner as
//! [`LocalCommand`](crate::LocalCommand), so it outlives a dead rollout,
//! leaves its output and exit status in files, and is killed at its time
//! limit.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use tokio::process::Command;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::executor::{ExecHandle, ExecOutcome, Executor, HandleSink, Preflight, Recovered};
use crate::local::{ChildEnv, Invocation, Runner};
use crate::target::Target;

/// How long a connection master stays after its last session: long enough
/// for a batch's preflight and maintenance to share one connection, short
/// enough not to leave connections open for long.
const CONTROL_PERSIST: &str = "60";

/// How long the host's `timeout` waits after its TERM before it kills.
const REMOTE_KILL_AFTER: u32 = 10;

/// Unix socket paths are limited (104 bytes on the BSDs and macOS, 108 on
/// Linux, with the final NUL).
const MAX_SOCKET_PATH: usize = 103;

/// What ssh adds to the directory for a control socket: `/`, `%C` (40 hex
/// digits), and the `.` + 16 random characters of the temporary name it
/// binds first.
const CONTROL_PATH_EXTRA: usize = 1 + 40 + 17;

/// Options a caller may not set through [`SshCommand::with_option`]: host
/// key checking and batch mode stay on, nothing is forwarded (agent, X11,
/// ports, tunnels: a compromised target would reach back through them),
/// and the host, user, port, identity, known hosts and time limits have
/// their own setters (validated there).
const RESERVED_OPTIONS: &[&str] = &[
    "forwardagent",
    "forwardx11",
    "forwardx11trusted",
    "clearallforwardings",
    "localforward",
    "remoteforward",
    "dynamicforward",
    "tunnel",
    "tunneldevice",
    "batchmode",
    "stricthostkeychecking",
    "userknownhostsfile",
    "globalknownhostsfile",
    "knownhostscommand",
    "hostname",
    "user",
    "port",
    "identityfile",
    "connecttimeout",
    "permitlocalcommand",
    "localcommand",
    "remotecommand",
    "requesttty",
    "sessiontype",
    "include",
];

/// Runs a remote command on each target over ssh, all targets of a batch at
/// once, with the system's OpenSSH client (`ssh`).
///
/// - **Host:** the target's address (never its id, which names a server in
///   a balancer and need not be a host name). It must be a host name, an
///   IPv4 or an IPv6 literal (brackets allowed): an empty address, a leading
///   `-` (an ssh option), whitespace or control characters make the target
///   not ready at [`preflight`](Executor::preflight), and fail its
///   maintenance at [`execute`](Executor::execute) without running ssh.
/// - **Safety:** `BatchMode=yes` (no prompt ever waits for an answer) and
///   `StrictHostKeyChecking=yes` (an unknown or changed host key refuses the
///   connection; keys come from the known-hosts file, by default the user's
///   own). Neither can be turned off. All options come before `--` and the
///   destination; options given on the command line win over
///   `~/.ssh/config`.
/// - **The target reaches the remote command** as the shell variables
///   `HYGIENE_TARGET_ID`, `HYGIENE_TARGET_ADDRESS` and `HYGIENE_TARGET_PORT`
///   (when it has a port), exported by a prefix of the remote command line
///   with each value quoted, so nothing of the target is interpreted by the
///   remote shell. (ssh does not forward the environment, and sshd accepts
///   only what its `AcceptEnv` allows.) The remote login shell must be a
///   POSIX shell; `sudo` drops these variables unless its `env_keep` keeps
///   them.
/// - **Nothing is forwarded:** `ForwardAgent=no`, `ForwardX11=no`,
///   `ClearAllForwardings=yes` and `Tunnel=no` (and `-a -x`) come first on
///   the command line, so neither `~/.ssh/config` nor
///   [`with_option`](SshCommand::with_option) can turn them back on.
/// - **Environment:** the local `ssh` starts from a cleared environment,
///   as [`LocalCommand`](crate::LocalCommand)'s program does (`PATH`,
///   `HOME`, `LANG`, `LC_*`, `TZ`, what the operator passes or sets), plus
///   `SSH_AUTH_SOCK` (an agent holding the key); so nothing of hygiene's
///   (the balancer's password, cloud credentials) reaches it, nor the host
///   through a `SendEnv` of the user's ssh config.
/// - **Connection reuse:** `ControlMaster=auto` with a socket under the
///   state directory and `ControlPersist` of a minute, so ssh runs to one
///   host within a minute of each other (a preflight and a short drain,
///   then the maintenance) share one connection. The master detaches into
///   its own session: neither a Ctrl-C nor a time limit's kill reaches it.
///   When the state directory's
///   path is too long for a unix socket (or has characters ssh would
///   split), each ssh connects on its own.
/// - **Time limit and output:** as [`LocalCommand`](crate::LocalCommand):
///   exit code 0 is success; the output's tail is kept; the local `ssh` runs
///   in its own process group, outlives a dead rollout (see
///   [`Executor::recover`]) and is killed at the time limit. Killing the
///   local client closes the connection, but sshd does not stop a remote
///   command that has no terminal, so the host enforces the same limit: the
///   command runs as `timeout -k 10 <limit> "$SHELL" -c '<command>'` when
///   the host has `timeout` (coreutils, or a recent busybox), and as
///   `"$SHELL" -c '<command>'` (unbounded there) when it has not.
/// - **Preflight** runs `true` on each host (a key restricted by
///   `command=` in `authorized_keys` runs its forced command instead).
#[derive(Debug, Clone)]
pub struct SshCommand {
    remote_command: String,
    user: Option<String>,
    port: Option<u16>,
    identity_file: Option<PathBuf>,
    known_hosts_file: Option<PathBuf>,
    timeout: Duration,
    connect_timeout: Duration,
    state_dir: Option<PathBuf>,
    ssh_program: PathBuf,
    options: Vec<(String, String)>,
    env: ChildEnv,
}

/// What the local ssh gets from hygiene's environment beyond the
/// allow-list: the agent's socket.
const SSH_ENV: &[&str] = &["SSH_AUTH_SOCK"];

impl SshCommand {
    /// Runs `remote_command` (a line for the remote shell, e.g.
    /// `sudo /usr/local/bin/patch`) on each target, with a 10-minute time
    /// limit and a 10-second connect timeout.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the command is empty or holds a NUL.
    pub fn new(remote_command: impl Into<String>) -> Result<Self> {
        let remote_command = remote_command.into();
        if remote_command.trim().is_empty() {
            return Err(Error::invalid_config(
                "ssh.command",
                "the remote command is empty; give the command the remote shell runs, e.g. \"sudo /usr/local/bin/patch\"",
            ));
        }
        if remote_command.contains('\0') {
            return Err(Error::invalid_config(
                "ssh.command",
                "the remote command holds a NUL byte; remove it",
            ));
        }
        Ok(Self {
            remote_command,
            user: None,
            port: None,
            identity_file: None,
            known_hosts_file: None,
            timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            state_dir: None,
            ssh_program: PathBuf::from("ssh"),
            options: Vec::new(),
            env: ChildEnv::new(SSH_ENV),
        })
    }

    /// Passes hygiene's own variable `name` to the local ssh (when set;
    /// e.g. `KRB5CCNAME`). The remote command gets it only if the ssh
    /// config sends it and sshd accepts it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `name` is not a variable name, is one
    /// of the target's, or is withheld.
    pub fn with_pass_env(mut self, name: &str) -> Result<Self> {
        self.env.pass("ssh.pass_env", name)?;
        Ok(self)
    }

    /// Sets `name` to `value` in the local ssh's environment.
    ///
    /// # Errors
    /// As [`with_pass_env`](Self::with_pass_env), and for a value with a NUL.
    pub fn with_env(mut self, name: &str, value: &str) -> Result<Self> {
        self.env.set("ssh.env", name, value)?;
        Ok(self)
    }

    /// Never gives hygiene's variable `name` to the local ssh (the one
    /// holding the balancer's password).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when it was passed or set already.
    pub fn withhold_env(mut self, name: &str) -> Result<Self> {
        self.env.withhold("ssh.password_env", name)?;
        Ok(self)
    }

    /// Logs in as `user` (`ssh -l`; default: ssh's own, from `~/.ssh/config`
    /// or the local user). Checked by [`validate`](Self::validate): no
    /// leading `-`, no whitespace or control characters.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Connects to this ssh port (default: ssh's own, usually 22). The
    /// target's port is the service's, not ssh's.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Authenticates with this private key only (`-i`, `IdentitiesOnly=yes`).
    pub fn with_identity_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.identity_file = Some(path.into());
        self
    }

    /// Checks host keys against this file (`UserKnownHostsFile`; default:
    /// ssh's own, `~/.ssh/known_hosts`). Host key checking is always strict.
    pub fn with_known_hosts_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.known_hosts_file = Some(path.into());
        self
    }

    /// Kills the local ssh after `timeout` (the whole maintenance; default
    /// 10 minutes).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Gives up connecting after `timeout` (`ConnectTimeout`, whole seconds,
    /// rounded up; default 10 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Where each run keeps its output and exit status until it is read,
    /// and where the connection sockets live (default: `exec/` under
    /// [`journal::default_dir`](crate::journal::default_dir)). Keep it short
    /// (at most 45 bytes) for connection reuse.
    pub fn with_state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// The OpenSSH client to run (default: `ssh` on the `PATH`).
    pub fn with_ssh_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.ssh_program = program.into();
        self
    }

    /// Adds `-o key=value` (e.g. `ProxyJump`, `ControlPersist`), before the
    /// executor's own options: ssh keeps the first value of each option, so
    /// this one wins over the defaults above.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the key is not a plain option name, is
    /// one with its own setter or one that would turn off a safety
    /// (`StrictHostKeyChecking`, `BatchMode`, `HostName`…), or the value is
    /// empty or holds control characters.
    pub fn with_option(mut self, key: &str, value: &str) -> Result<Self> {
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::invalid_config(
                "ssh.options",
                format!(
                    "{key:?} is not an ssh option name (letters and digits only, e.g. ProxyJump)"
                ),
            ));
        }
        if RESERVED_OPTIONS.contains(&key.to_ascii_lowercase().as_str()) {
            return Err(Error::invalid_config(
                "ssh.options",
                format!(
                    "the ssh option {key} cannot be set here: host key checking and batch mode stay on, \
                     and user, port, identity file, known hosts and timeouts have their own settings"
                ),
            ));
        }
        if value.trim().is_empty() || value.chars().any(char::is_control) {
            return Err(Error::invalid_config(
                "ssh.options",
                format!("the value of the ssh option {key} is empty or holds control characters: {value:?}"),
            ));
        }
        self.options.push((key.to_owned(), value.to_owned()));
        Ok(self)
    }

    /// Checks the settings; [`preflight`](Executor::preflight) and
    /// [`execute`](Executor::execute) call it first.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the setting and what to fix.
    pub fn validate(&self) -> Result<()> {
        if let Some(user) = &self.user {
            if user.is_empty()
                || user.starts_with('-')
                || user.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(Error::invalid_config(
                    "ssh.user",
                    format!("the ssh user {user:?} is empty, starts with '-' or holds whitespace or control characters; give a login name"),
                ));
            }
        }
        if let Some(path) = &self.known_hosts_file {
            // ssh splits this option's value at whitespace.
            let ok = path.to_str().is_some_and(|p| {
                !p.is_empty()
                    && !p
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\'')
            });
            if !ok {
                return Err(Error::invalid_config(
                    "ssh.known_hosts_file",
                    format!("the known hosts file {} must be a UTF-8 path without whitespace, quotes or control characters", path.display()),
                ));
            }
        }
        if let Some(path) = &self.identity_file {
            if path.as_os_str().is_empty() {
                return Err(Error::invalid_config(
                    "ssh.identity_file",
                    "the identity file is empty; give the path of a private key",
                ));
            }
        }
        if self.ssh_program.as_os_str().is_empty() {
            return Err(Error::invalid_config(
                "ssh.program",
                "the ssh program is empty; give the path of OpenSSH's ssh",
            ));
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::invalid_config(
                "ssh.timeout",
                "the ssh time limit and connect timeout must be more than zero",
            ));
        }
        Ok(())
    }

    fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| crate::journal::default_dir().join("exec"))
    }

    fn runner(&self) -> Runner {
        Runner {
            timeout: self.timeout,
            state_dir: self.state_dir(),
            env: self.env.clone(),
        }
    }

    /// The control socket path (`%C` is ssh's hash of the connection), when
    /// the state directory can hold one.
    fn control_path(&self) -> Option<String> {
        let dir = self.state_dir();
        let dir = dir.to_str()?;
        let usable = dir.len() + CONTROL_PATH_EXTRA <= MAX_SOCKET_PATH
            && !dir.chars().any(|c| {
                c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '%' | '$')
            });
        if !usable || crate::journal::private::private_dir(Path::new(dir)).is_err() {
            tracing::debug!(
                state_dir = dir,
                "no ssh connection reuse: state dir unusable for a socket"
            );
            return None;
        }
        Some(format!("{dir}/%C"))
    }

    /// ssh's arguments: every option, `--`, the host, the remote line.
    fn args(&self, host: &str, remote: &str, control: Option<&str>) -> Vec<OsString> {
        // No terminal, no agent forwarding, no X11 forwarding.
        let mut args: Vec<OsString> = vec!["-T".into(), "-a".into(), "-x".into()];
        let mut opt = |kv: String| {
            args.push("-o".into());
            args.push(kv.into());
        };
        // First: ssh keeps the first value of an option, and options on
        // the command line win over the user's ssh config.
        for hardening in [
            "ForwardAgent=no",
            "ForwardX11=no",
            "ClearAllForwardings=yes",
            "Tunnel=no",
        ] {
            opt(hardening.into());
        }
        for (k, v) in &self.options {
            opt(format!("{k}={v}"));
        }
        opt("BatchMode=yes".into());
        opt("StrictHostKeyChecking=yes".into());
        if let Some(path) = self.known_hosts_file.as_ref().and_then(|p| p.to_str()) {
            // ssh expands %-tokens in this option.
            opt(format!("UserKnownHostsFile={}", path.replace('%', "%%")));
        }
        opt(format!(
            "ConnectTimeout={}",
            ceil_secs(self.connect_timeout)
        ));
        // A host that died mid-maintenance is noticed in about a minute.
        opt("ServerAliveInterval=15".into());
        opt("ServerAliveCountMax=4".into());
        match control {
            Some(path) => {
                opt("ControlMaster=auto".into());
                opt(format!("ControlPersist={CONTROL_PERSIST}"));
                opt(format!("ControlPath={path}"));
            }
            None => {
                opt("ControlMaster=no".into());
                opt("ControlPath=none".into());
            }
        }
        if let Some(id) = &self.identity_file {
            opt("IdentitiesOnly=yes".into());
            args.push("-i".into());
            args.push(id.clone().into_os_string());
        }
        if let Some(port) = self.port {
            args.extend(["-p".into(), port.to_string().into()]);
        }
        if let Some(user) = &self.user {
            args.extend(["-l".into(), user.into()]);
        }
        args.extend(["--".into(), host.into(), remote.into()]);
        args
    }

    /// The remote command line: the target's variables, quoted, then the
    /// configured command.
    fn remote_line(
        &self,
        target: &Target,
        traceparent: Option<&str>,
    ) -> std::result::Result<String, String> {
        let mut vars = vec![
            ("HYGIENE_TARGET_ID", target.id.as_str().to_owned()),
            (
                "HYGIENE_TARGET_ADDRESS",
                target.address.clone().unwrap_or_default(),
            ),
        ];
        if let Some(port) = target.port {
            vars.push(("HYGIENE_TARGET_PORT", port.to_string()));
        }
        if let Some(tp) = traceparent {
            vars.push((crate::trace::TRACEPARENT, tp.to_owned()));
        }
        let mut line = String::from("export");
        for (k, v) in vars {
            let q = shlex::try_quote(&v).map_err(|e| {
                format!(
                    "target {}: its {k} {v:?} cannot be passed to a remote shell ({e}); fix the target",
                    target.id
                )
            })?;
            line.push_str(&format!(" {k}={q}"));
        }
        let command = shlex::try_quote(&self.remote_command)
            .map_err(|e| format!("the remote command cannot be quoted ({e}); fix it"))?;
        // The same time limit on the host: killing the local ssh does not
        // stop a remote command that has no terminal.
        let secs = ceil_secs(self.timeout);
        line.push_str(&format!(
            "; if command -v timeout >/dev/null 2>&1; \
             then exec timeout -k {REMOTE_KILL_AFTER} {secs} \"${{SHELL:-/bin/sh}}\" -c {command}; \
             else exec \"${{SHELL:-/bin/sh}}\" -c {command}; fi"
        ));
        Ok(line)
    }

    fn ssh_name(&self) -> String {
        self.ssh_program.display().to_string()
    }

    /// The words for a failed outcome, naming the host and what to check.
    fn explain(&self, mut o: ExecOutcome, host: &str) -> ExecOutcome {
        if o.success {
            return o;
        }
        let id = o.id.clone();
        o.message = Some(match o.exit_code {
            Some(255) => self.connect_failure(host, id.as_str(), &o.stderr_tail),
            Some(127) => format!(
                "on {host} (target {id}): exit code 127, a command was not found: the remote command on {host}, or {:?} here; see its stderr",
                self.ssh_name()
            ),
            Some(c) if c > 128 => format!(
                "on {host} (target {id}): exit code {c}: the remote command (or the local ssh) was killed by signal {}",
                c - 128
            ),
            Some(124) => format!(
                "on {host} (target {id}): exit code 124: the time limit of {:?} ran out on the host (`timeout` stopped the remote command)",
                self.timeout
            ),
            Some(c) => format!("on {host} (target {id}): the remote command exited with code {c}"),
            None if o.duration >= self.timeout => format!(
                "on {host} (target {id}): ran past its time limit of {:?}; the local ssh was killed, and the host's `timeout` stops \
                 the remote command (if {host} has no `timeout`, it may still run there: check)",
                self.timeout
            ),
            None => format!(
                "on {host} (target {id}): {}",
                o.message.as_deref().unwrap_or("ssh was killed by a signal")
            ),
        });
        o
    }

    /// Why ssh itself failed (exit 255), from its last words on stderr.
    fn connect_failure(&self, host: &str, target: &str, stderr: &str) -> String {
        let said = stderr
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no message");
        let known_hosts = self.known_hosts_file.as_ref().map_or_else(
            || "~/.ssh/known_hosts".to_owned(),
            |p| p.display().to_string(),
        );
        let port = self
            .port
            .map_or_else(|| "ssh's port".to_owned(), |p| format!("port {p}"));
        let hint = if stderr.contains("Host key verification failed")
            || stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || stderr.contains("No ED25519 host key is known")
            || stderr.contains("host key is known")
        {
            format!("the host key of {host} is unknown or changed: check its fingerprint out of band and add it to {known_hosts}")
        } else if stderr.contains("Permission denied") {
            "the login was refused: check the user, the identity file and the host's authorized_keys".to_owned()
        } else if stderr.contains("Connection refused")
            || stderr.contains("timed out")
            || stderr.contains("No route to host")
            || stderr.contains("Could not resolve")
            || stderr.contains("Network is unreachable")
        {
            format!("{host} cannot be reached on {port}: check the target's address, the port and that sshd runs")
        } else {
            "ssh failed, or the remote command exited with 255: see stderr".to_owned()
        };
        format!("ssh to {host} (target {target}) failed (exit 255): {said}; {hint}")
    }

    async fn preflight_one(&self, target: &Target, control: Option<&str>) -> Preflight {
        let host = match ssh_host(target) {
            Ok(h) => h,
            Err(why) => return Preflight::NotReady(why),
        };
        let mut cmd = Command::new(&self.ssh_program);
        self.env.apply(&mut cmd);
        cmd.args(self.args(&host, "true", control))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // ConnectTimeout covers the connection and the key exchange;
        // authentication gets as long again.
        let limit = self.connect_timeout * 2 + Duration::from_secs(5);
        match tokio::time::timeout(limit, cmd.output()).await {
            Err(_) => Preflight::NotReady(format!(
                "ssh to {host} (target {}) did not finish within {limit:?}: check that {host} answers ssh",
                target.id
            )),
            Ok(Err(e)) => Preflight::NotReady(format!(
                "cannot start {:?} to reach {host} (target {}): {e}; install OpenSSH's client or set the ssh program",
                self.ssh_name(),
                target.id
            )),
            Ok(Ok(out)) if out.status.success() => Preflight::Ready,
            Ok(Ok(out)) => {
                let stderr = crate::executor::tail(
                    &String::from_utf8_lossy(&out.stderr),
                    crate::executor::OUTPUT_TAIL_BYTES,
                );
                Preflight::NotReady(match out.status.code() {
                    Some(255) => self.connect_failure(&host, target.id.as_str(), &stderr),
                    code => format!(
                        "ssh to {host} (target {}) connected, but `true` failed there ({}): {}",
                        target.id,
                        code.map_or_else(|| "killed".to_owned(), |c| format!("exit code {c}")),
                        stderr.trim()
                    ),
                })
            }
        }
    }
}

#[async_trait]
impl Executor for SshCommand {
    fn name(&self) -> String {
        format!("ssh command {:?}", self.remote_command)
    }

    async fn preflight(&self, targets: &[Target]) -> Result<Vec<Preflight>> {
        self.validate()?;
        let control = self.control_path();
        Ok(join_all(
            targets
                .iter()
                .map(|t| self.preflight_one(t, control.as_deref())),
        )
        .await)
    }

    async fn execute(&self, targets: &[Target]) -> Result<Vec<ExecOutcome>> {
        self.execute_tracked(targets, &HandleSink::none()).await
    }

    async fn execute_tracked(
        &self,
        targets: &[Target],
        sink: &HandleSink,
    ) -> Result<Vec<ExecOutcome>> {
        self.validate()?;
        let runner = self.runner();
        let control = self.control_path();
        Ok(join_all(targets.iter().map(|t| {
            let runner = &runner;
            let control = control.as_deref();
            async move {
                let fail = |why| ExecOutcome::failure(t.id.clone(), Duration::ZERO, why);
                let host = match ssh_host(t) {
                    Ok(h) => h,
                    Err(why) => return fail(why),
                };
                let span = crate::trace::maintenance_span(&t.id);
                let traceparent = crate::trace::traceparent(&span);
                let line = match self.remote_line(t, traceparent.as_deref()) {
                    Ok(l) => l,
                    Err(why) => return fail(why),
                };
                let inv = Invocation::new(
                    self.ssh_program.clone().into_os_string(),
                    self.args(&host, &line, control),
                    t,
                );
                let o = runner.run(inv, t, sink).instrument(span).await;
                self.explain(o, &host)
            }
        }))
        .await)
    }

    async fn recover(&self, target: &Target, handle: &ExecHandle) -> Result<Recovered> {
        let host = ssh_host(target).unwrap_or_else(|_| target.id.to_string());
        Ok(match self.runner().recover(target, handle).await {
            Recovered::Finished(o) => Recovered::Finished(self.explain(o, &host)),
            Recovered::Unknown(why) => Recovered::Unknown(format!("on {host} over ssh: {why}")),
        })
    }
}

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The host to ssh to: the target's address, when it is a host name or an
/// IP literal (IPv6 without its brackets).
fn ssh_host(target: &Target) -> std::result::Result<String, String> {
    let id = &target.id;
    let Some(address) = target.address.as_deref() else {
        return Err(format!(
            "target {id} has no address: the ssh executor connects to the target's address; give the target the address of its host"
        ));
    };
    let bad = |why: &str| {
        Err(format!(
            "target {id}: its address {address:?} cannot be an ssh host ({why}); fix the target's address (a host name, an IPv4 or an IPv6 address)"
        ))
    };
    if address.is_empty() {
        return bad("it is empty");
    }
    if address.starts_with('-') {
        return bad("it starts with '-', which ssh would read as an option");
    }
    if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it holds whitespace or control characters");
    }
    let bare = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address);
    if bare.parse::<IpAddr>().is_ok() {
        return Ok(bare.to_owned());
    }
    if is_host_name(address) {
        Ok(address.to_owned())
    } else {
        bad("it is neither a host name nor an IP address")
    }
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1 to 63
/// characters, none starting with `-`; at most 253 in all.
fn is_host_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::TargetId;

    fn target(address: &str) -> Target {
        Target::new(TargetId::new("web-1").expect("id")).with_address(address)
    }

    #[test]
    fn hosts_are_names_or_ip_literals() {
        for ok in ["web-1", "web-1.example.com", "10.0.0.1", "::1", "host_1"] {
            assert_eq!(ssh_host(&target(ok)).as_deref(), Ok(ok), "{ok}");
        }
        assert_eq!(ssh_host(&target("[fe80::1]")).as_deref(), Ok("fe80::1"));
        for bad in [
            "",
            "-oProxyCommand=touch /tmp/x",
            "-p22",
            "a b",
            "a\nb",
            "user@host",
            "a..b",
            "ssh://h",
            "h;rm",
            "$(x)",
            "a.-b",
        ] {
            let got = ssh_host(&target(bad));
            assert!(
                matches!(&got, Err(why) if why.contains("web-1") && why.contains("fix the target")),
                "{bad:?}: {got:?}"
            );
        }
        let none = Target::new(TargetId::new("web-2").expect("id"));
        assert!(matches!(ssh_host(&none), Err(why) if why.contains("no address")));
    }

    #[test]
    fn options_come_before_the_destination_and_safety_stays_on() {
        let c = SshCommand::new("sudo patch")
            .expect("new")
            .with_user("deploy")
            .with_port(2222)
            .with_option("ControlPersist", "5")
            .expect("option");
        let args: Vec<String> = c
            .args("web-1", "line", Some("/s/%C"))
            .into_iter()
            .map(|a| a.into_string().expect("utf-8"))
            .collect();
        let dash = args.iter().position(|a| a == "--").expect("--");
        assert_eq!(&args[dash..], ["--", "web-1", "line"]);
        assert!(args.contains(&"BatchMode=yes".to_owned()));
        assert!(args.contains(&"StrictHostKeyChecking=yes".to_owned()));
        let mine = args.iter().position(|a| a == "ControlPersist=5");
        let default = args.iter().position(|a| a == "ControlPersist=60");
        assert!(mine < default, "ssh keeps the first value: {args:?}");
        for reserved in ["StrictHostKeyChecking", "batchmode", "HostName"] {
            assert!(c.clone().with_option(reserved, "no").is_err(), "{reserved}");
        }
        assert!(c.clone().with_option("Proxy Command", "x").is_err());
        assert!(c.clone().with_option("ProxyJump", "a\nb").is_err());
    }

    #[test]
    fn nothing_is_forwarded_whatever_the_user_config_or_options_say() {
        let c = SshCommand::new("patch")
            .expect("new")
            .with_option("ProxyJump", "bastion")
            .expect("option");
        for k in [
            "ForwardAgent",
            "forwardx11",
            "ClearAllForwardings",
            "LocalForward",
            "RemoteForward",
            "DynamicForward",
            "Tunnel",
        ] {
            assert!(c.clone().with_option(k, "yes").is_err(), "{k}");
        }
        let args = c.args("web-1", "true", None);
        // What ssh itself makes of them, with a user config that turns
        // every forwarding on (`ssh -G` prints the resulting settings).
        let tmp = tempfile::tempdir().expect("dir");
        let config = tmp.path().join("config");
        std::fs::write(
            &config,
            "Host *\n  ForwardAgent yes\n  ForwardX11 yes\n  ClearAllForwardings no\n  LocalForward 9999 127.0.0.1:22\n  Tunnel yes\n",
        )
        .expect("config");
        let out = match std::process::Command::new("ssh")
            .arg("-G")
            .arg("-F")
            .arg(&config)
            .args(&args)
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                eprintln!("no ssh client here ({e}): checking the arguments only");
                let a: Vec<String> = args
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                let first = a.iter().position(|x| x == "ForwardAgent=no");
                let user = a.iter().position(|x| x == "ProxyJump=bastion");
                assert!(first.is_some() && first < user, "{a:?}");
                return;
            }
        };
        let effective = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(
            out.status.success(),
            "{effective}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for want in [
            "forwardagent no",
            "forwardx11 no",
            "clearallforwardings yes",
            "tunnel false",
            "proxyjump bastion",
        ] {
            assert!(effective.lines().any(|l| l == want), "{want}: {effective}");
        }
        assert!(!effective.contains("localforward"), "{effective}");
    }

    #[test]
    fn settings_are_validated() {
        assert!(SshCommand::new(" ").is_err());
        let c = SshCommand::new("patch").expect("new");
        assert!(c.validate().is_ok());
        for user in ["-oX", "a b", ""] {
            assert!(c.clone().with_user(user).validate().is_err(), "{user:?}");
        }
        assert!(c
            .clone()
            .with_known_hosts_file("/a b/known_hosts")
            .validate()
            .is_err());
        assert!(c.clone().with_timeout(Duration::ZERO).validate().is_err());
    }

    #[test]
    fn the_remote_line_quotes_the_target() {
        let c = SshCommand::new("patch --now").expect("new");
        let t = Target::new(TargetId::new("a'b;$(x)").expect("id"))
            .with_address("h")
            .with_port(80);
        let line = c.remote_line(&t, None).expect("line");
        assert!(line.contains("-c 'patch --now'"), "{line}");
        assert!(line.contains("timeout -k 10 600 "), "{line}");
        assert!(line.contains("HYGIENE_TARGET_PORT=80"), "{line}");
        assert!(!line.contains("'a'b"), "{line}");
    }

    #[test]
    fn a_long_state_dir_turns_reuse_off() {
        let dir = tempfile::tempdir().expect("dir");
        let short = SshCommand::new("x")
            .expect("new")
            .with_state_dir(dir.path());
        assert!(short.control_path().is_some());
        let long = short.with_state_dir(dir.path().join("a".repeat(60)));
        assert!(long.control_path().is_none());
    }
}
