//! Direct checks of a target before it is put back: a broken target never
//! re-enters rotation even when the balancer's own health check is lax.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::target::Target;

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeVerdict {
    /// The target answered as expected.
    Pass,
    /// It did not; the text says how.
    Fail(String),
}

/// A direct check of one target.
///
/// `Err` means the probe cannot be made at all (the target has no address):
/// a configuration problem, not a verdict.
#[async_trait]
pub trait Probe: Send + Sync + Debug + 'static {
    /// Checks the target once.
    async fn check(&self, target: &Target) -> Result<ProbeVerdict>;
}

fn endpoint(target: &Target, port: Option<u16>) -> Result<(String, u16)> {
    let host = target.address.clone().ok_or_else(|| {
        Error::invalid_config("probe", format!("target {} has no address to probe; give the balancer addresses or remove the probe", target.id))
    })?;
    let port = port.or(target.port).ok_or_else(|| {
        Error::invalid_config(
            "probe",
            format!(
                "target {} has no port to probe; set the probe's port",
                target.id
            ),
        )
    })?;
    Ok((host, port))
}

/// Passes when a TCP connection to the target's address opens in time.
#[derive(Debug, Clone)]
pub struct TcpProbe {
    port: Option<u16>,
    timeout: Duration,
}

impl TcpProbe {
    /// A probe on the target's own port with a 2 s timeout.
    pub fn new() -> Self {
        Self {
            port: None,
            timeout: Duration::from_secs(2),
        }
    }
    /// Probes this port instead of the target's.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
    /// Sets the connect timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl Default for TcpProbe {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Probe for TcpProbe {
    async fn check(&self, target: &Target) -> Result<ProbeVerdict> {
        let (host, port) = endpoint(target, self.port)?;
        Ok(
            match tokio::time::timeout(self.timeout, TcpStream::connect((host.as_str(), port)))
                .await
            {
                Ok(Ok(_)) => ProbeVerdict::Pass,
                Ok(Err(e)) => ProbeVerdict::Fail(format!("connect to {host}:{port}: {e}")),
                Err(_) => ProbeVerdict::Fail(format!(
                    "connect to {host}:{port} timed out after {:?}",
                    self.timeout
                )),
            },
        )
    }
}

/// Passes when `GET <path>` on the target answers with a 2xx status.
#[derive(Debug, Clone)]
pub struct HttpProbe {
    path: String,
    port: Option<u16>,
    timeout: Duration,
}

impl HttpProbe {
    /// A probe of `path` (must start with `/`) with a 2 s timeout.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the path does not start with `/` or
    /// holds whitespace or control characters.
    pub fn new(path: impl Into<String>) -> Result<Self> {
        let path = path.into();
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid_config(
                "probe.path",
                format!(
                    "{path:?} must start with '/' and hold no whitespace or control characters"
                ),
            ));
        }
        Ok(Self {
            path,
            port: None,
            timeout: Duration::from_secs(2),
        })
    }
    /// Probes this port instead of the target's.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
    /// Sets the timeout of the whole request.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn get(
        &self,
        host: &str,
        port: u16,
    ) -> std::io::Result<std::result::Result<u16, String>> {
        let mut stream = TcpStream::connect((host, port)).await?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: hygiene-probe\r\nConnection: close\r\n\r\n",
            self.path
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        loop {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(Err("connection closed before a complete status line".into()));
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&buf) {
                Ok(_) if response.code.is_some() => return Ok(Ok(response.code.unwrap_or(0))),
                Ok(_) if buf.len() < 64 * 1024 => continue,
                Ok(_) => return Ok(Err("response head larger than 64 KiB".into())),
                Err(httparse::Error::TooManyHeaders) => {
                    // The status line parsed; only the headers overflowed.
                    return Ok(Err("too many response headers".into()));
                }
                Err(e) => return Ok(Err(format!("malformed HTTP response: {e}"))),
            }
        }
    }
}

#[async_trait]
impl Probe for HttpProbe {
    async fn check(&self, target: &Target) -> Result<ProbeVerdict> {
        let (host, port) = endpoint(target, self.port)?;
        let url = format!("http://{host}:{port}{}", self.path);
        Ok(
            match tokio::time::timeout(self.timeout, self.get(&host, port)).await {
                Err(_) => {
                    ProbeVerdict::Fail(format!("GET {url} timed out after {:?}", self.timeout))
                }
                Ok(Err(e)) => ProbeVerdict::Fail(format!("GET {url}: {e}")),
                Ok(Ok(Err(why))) => ProbeVerdict::Fail(format!("GET {url}: {why}")),
                Ok(Ok(Ok(code))) if (200..300).contains(&code) => ProbeVerdict::Pass,
                Ok(Ok(Ok(code))) => {
                    ProbeVerdict::Fail(format!("GET {url} answered {code}, expected 2xx"))
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::TargetId;
    use tokio::net::TcpListener;

    async fn serve_once(reply: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _read = s.read(&mut buf).await;
                let _written = s.write_all(reply.as_bytes()).await;
            }
        });
        port
    }

    fn target(port: u16) -> Target {
        Target::new(TargetId::new("t").expect("id"))
            .with_address("127.0.0.1")
            .with_port(port)
    }

    #[tokio::test]
    async fn http_probe_passes_on_2xx_and_fails_otherwise() {
        let probe = HttpProbe::new("/health").expect("probe");
        let ok = serve_once("HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(
            probe.check(&target(ok)).await.expect("check"),
            ProbeVerdict::Pass
        );
        let bad = serve_once("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
        match probe.check(&target(bad)).await.expect("check") {
            ProbeVerdict::Fail(why) => assert!(why.contains("503"), "{why}"),
            ProbeVerdict::Pass => panic!("503 must fail"),
        }
        let garbage = serve_once("SSH-2.0-OpenSSH\r\n").await;
        assert!(matches!(
            probe.check(&target(garbage)).await.expect("check"),
            ProbeVerdict::Fail(_)
        ));
    }

    #[tokio::test]
    async fn tcp_probe_fails_on_closed_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(
            TcpProbe::new().check(&target(port)).await.expect("check"),
            ProbeVerdict::Pass
        );
        drop(listener);
        assert!(matches!(
            TcpProbe::new().check(&target(port)).await.expect("check"),
            ProbeVerdict::Fail(_)
        ));
    }

    #[tokio::test]
    async fn probe_without_address_is_a_config_error() {
        let t = Target::new(TargetId::new("t").expect("id"));
        assert!(matches!(
            TcpProbe::new().check(&t).await,
            Err(Error::InvalidConfig { .. })
        ));
        assert!(HttpProbe::new("health").is_err());
        assert!(HttpProbe::new("/a b").is_err());
    }
}
