//! A real sshd for the scenarios' ssh tests: its own configuration, host
//! and client keys in a temporary directory, a loopback port; killed by
//! pid when dropped.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::BoxResult;

/// sshd: `HYGIENE_SSHD_BIN`, else `sshd` on the PATH or in /usr/sbin
/// (absolute: sshd re-executes itself).
pub fn sshd_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HYGIENE_SSHD_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("sshd"))
        .find(|p| p.is_file() && p.is_absolute())
}

/// A running sshd accepting the client key in its directory.
#[derive(Debug)]
pub struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

fn keygen(path: &Path) -> BoxResult<()> {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "hygiene-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("ssh-keygen failed for {}", path.display()).into());
    }
    Ok(())
}

impl Sshd {
    /// Starts `bin` on a free port of 127.0.0.1 and waits until it listens.
    pub fn start(bin: &Path) -> BoxResult<Self> {
        Self::start_on(bin, &["127.0.0.1"])
    }

    /// Starts `bin` on one port of each of these loopback addresses
    /// (`127.0.0.2`: several hosts on one machine), with a known-hosts file
    /// naming each, and waits until it listens.
    pub fn start_on(bin: &Path, hosts: &[&str]) -> BoxResult<Self> {
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd")?;
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        keygen(&d.join("host_key"))?;
        keygen(&d.join("client_key"))?;
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen: String = hosts
            .iter()
            .map(|h| format!("ListenAddress {h}:{port}\n"))
            .collect();
        let config = format!(
            "{listen}HostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config)?;
        let host_pub = std::fs::read_to_string(d.join("host_key.pub"))?;
        let known: String = hosts
            .iter()
            .map(|h| format!("[{h}]:{port} {host_pub}"))
            .collect();
        std::fs::write(d.join("known_hosts"), known)?;
        let log = std::fs::File::create(d.join("sshd.log"))?;
        let child = Command::new(bin)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut sshd = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while hosts
            .iter()
            .any(|h| TcpStream::connect((*h, port)).is_err())
        {
            if let Some(status) = sshd.child.try_wait()? {
                return Err(format!("sshd exited with {status}: {}", sshd.log()).into());
            }
            if Instant::now() > deadline {
                return Err(format!("sshd did not listen within 10 s: {}", sshd.log()).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(sshd)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client's private key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// A known-hosts file holding its host key.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if self.child.kill().is_ok() {
            let _reaped = self.child.wait();
        }
    }
}
