//! The runtime API client: one command line per connection, over a Unix
//! socket or TCP, with connect and read timeouts.
//!
//! Why one command per connection rather than a persistent `prompt`
//! session: measured on HAProxy 2.6.12 here, a `show servers state; show
//! stat …` exchange costs about 130 µs on a fresh Unix-socket connection and
//! 70 µs inside a `prompt` session (see the crate README for the numbers
//! and the test that re-measures them). Both are three orders of magnitude below
//! the 100 ms poll interval, while a session carries state that breaks in
//! ways a fresh connection cannot: it dies on every reload (the old process
//! closes it), it is cut by the CLI idle timeout, a reply cut short
//! desynchronises every later one, and two concurrent callers would have to
//! share it behind a lock. A fresh connection ends with HAProxy closing it,
//! so end of file marks the end of the reply unambiguously.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tracing::debug;

use crate::config::{Endpoint, Node};
use crate::error::HaproxyError;

/// Largest reply accepted (a `show stat` of thousands of servers fits).
const MAX_REPLY_BYTES: u64 = 64 * 1024 * 1024;

/// A failed exchange, and whether the line may have reached HAProxy.
#[derive(Debug)]
pub(crate) struct SendFailure {
    pub(crate) error: HaproxyError,
    /// False only when the line certainly was not sent (no connection was
    /// made: socket missing, refused, connect timeout, or the line was
    /// refused here). A read timeout, a connection broken during the
    /// exchange, or a close without a reply may follow a command HAProxy
    /// has already applied.
    pub(crate) maybe_sent: bool,
}

/// A client of one node's runtime API.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    node: Node,
    name: String,
    connect_timeout: Duration,
    read_timeout: Duration,
    /// Close the sending side after the line: the master CLI keeps a
    /// connection open until the client does (a worker's stats socket
    /// closes after its reply by itself).
    half_close: bool,
}

impl Client {
    pub(crate) fn new(node: Node, connect_timeout: Duration, read_timeout: Duration) -> Self {
        let name = node.display_name();
        Self {
            node,
            name,
            connect_timeout,
            read_timeout,
            half_close: false,
        }
    }

    /// A client of a master CLI socket.
    pub(crate) fn master(node: Node, connect_timeout: Duration, read_timeout: Duration) -> Self {
        Self {
            half_close: true,
            ..Self::new(node, connect_timeout, read_timeout)
        }
    }

    /// The node's name, for messages.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn node(&self) -> &Node {
        &self.node
    }

    /// Sends one command line (several commands may be joined by `;`) and
    /// returns the whole reply, read until HAProxy closes the connection.
    ///
    /// The line is built by this crate from validated names only; a line
    /// with a line break is refused here as a last guard.
    pub(crate) async fn send(&self, line: &str) -> Result<String, HaproxyError> {
        self.send_tracked(line).await.map_err(|f| f.error)
    }

    /// As [`send`](Self::send), telling on failure whether the line may
    /// have been sent (see [`SendFailure`]), so that commands that change
    /// something are retried only when they certainly were not.
    pub(crate) async fn send_tracked(&self, line: &str) -> Result<String, SendFailure> {
        let not_sent = |error| SendFailure {
            error,
            maybe_sent: false,
        };
        let maybe_sent = |error| SendFailure {
            error,
            maybe_sent: true,
        };
        if line.contains(['\n', '\r']) || line.is_empty() {
            return Err(not_sent(HaproxyError::InvalidName {
                name: line.to_owned(),
                reason: "a runtime API command line must be one non-empty line".into(),
            }));
        }
        debug!(node = %self.name, command = line, "haproxy command");
        let started = std::time::Instant::now();
        let raw = match &self.node.endpoint {
            Endpoint::Unix(path) => {
                let stream = self
                    .connect(UnixStream::connect(path))
                    .await
                    .map_err(not_sent)?;
                self.exchange(stream, line).await.map_err(maybe_sent)?
            }
            Endpoint::Tcp(addr) => {
                let stream = self
                    .connect(TcpStream::connect(addr))
                    .await
                    .map_err(not_sent)?;
                self.exchange(stream, line).await.map_err(maybe_sent)?
            }
        };
        debug!(node = %self.name, bytes = raw.len(), elapsed_us = started.elapsed().as_micros() as u64, "haproxy reply");
        String::from_utf8(raw).map_err(|_| {
            maybe_sent(HaproxyError::Protocol {
                node: self.name.clone(),
                message: "the reply is not valid UTF-8".into(),
            })
        })
    }

    async fn connect<S>(
        &self,
        fut: impl std::future::Future<Output = std::io::Result<S>>,
    ) -> Result<S, HaproxyError> {
        match tokio::time::timeout(self.connect_timeout, fut).await {
            Err(_) => Err(HaproxyError::Timeout {
                node: self.name.clone(),
                operation: format!("connecting to {}", self.node.endpoint),
                after: self.connect_timeout,
            }),
            Ok(Err(e)) => Err(self.connect_error(e)),
            Ok(Ok(s)) => Ok(s),
        }
    }

    fn connect_error(&self, e: std::io::Error) -> HaproxyError {
        use std::io::ErrorKind;
        let endpoint = &self.node.endpoint;
        let message = match e.kind() {
            ErrorKind::NotFound => format!(
                "runtime API socket {endpoint} does not exist: is HAProxy running, with `stats socket` in its global section?"
            ),
            ErrorKind::ConnectionRefused => {
                format!("runtime API socket {endpoint} refused the connection: is HAProxy running (or reloading)?")
            }
            ErrorKind::PermissionDenied => {
                return HaproxyError::SocketAccess { node: self.name.clone(), endpoint: endpoint.to_string(), source: e }
            }
            _ => format!("cannot connect to runtime API socket {endpoint}: {e}"),
        };
        HaproxyError::Unavailable {
            node: self.name.clone(),
            message,
            source: Some(e),
        }
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        line: &str,
    ) -> Result<Vec<u8>, HaproxyError> {
        let work = async {
            stream.write_all(format!("{line}\n").as_bytes()).await?;
            stream.flush().await?;
            if self.half_close {
                stream.shutdown().await?;
            }
            let mut buf = Vec::new();
            (&mut stream)
                .take(MAX_REPLY_BYTES + 1)
                .read_to_end(&mut buf)
                .await?;
            Ok::<_, std::io::Error>(buf)
        };
        match tokio::time::timeout(self.read_timeout, work).await {
            Err(_) => Err(HaproxyError::Timeout {
                node: self.name.clone(),
                operation: format!("waiting for the reply to `{line}`"),
                after: self.read_timeout,
            }),
            Ok(Err(e)) => Err(HaproxyError::Unavailable {
                node: self.name.clone(),
                message: format!(
                    "the connection to {} broke during `{line}`: {e}",
                    self.node.endpoint
                ),
                source: Some(e),
            }),
            Ok(Ok(buf)) if buf.len() as u64 > MAX_REPLY_BYTES => Err(HaproxyError::Protocol {
                node: self.name.clone(),
                message: format!("the reply to `{line}` is larger than {MAX_REPLY_BYTES} bytes"),
            }),
            Ok(Ok(buf)) if buf.is_empty() => Err(HaproxyError::Unavailable {
                node: self.name.clone(),
                message: format!(
                    "{} closed the connection without replying to `{line}`",
                    self.node.endpoint
                ),
                source: None,
            }),
            Ok(Ok(buf)) => Ok(buf),
        }
    }
}
