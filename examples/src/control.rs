//! The control channel of the simulated patch: a loopback line protocol
//! (`stop <name>` / `start <name>` / `break <name>`: started, answering 500
//! to everything) through which the patch program, a
//! separate process run by `LocalCommand`, stops and starts a service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::hello::HelloService;
use crate::BoxResult;

/// The control server.
#[derive(Debug)]
pub struct Control {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Control {
    /// Serves `stop`/`start` for these services on a free loopback port.
    pub async fn start(services: &[Arc<HelloService>]) -> BoxResult<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let by_name: Arc<HashMap<String, Arc<HelloService>>> = Arc::new(
            services
                .iter()
                .map(|s| (s.name().to_owned(), Arc::clone(s)))
                .collect(),
        );
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let by_name = Arc::clone(&by_name);
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let reply = match line.split_once(' ') {
                            Some(("stop", name)) => by_name
                                .get(name)
                                .map(|s| s.stop())
                                .map(|()| "ok".to_owned()),
                            Some(("start", name)) => by_name.get(name).map(|s| {
                                s.set_broken(false);
                                s.resume()
                                    .map(|()| "ok".to_owned())
                                    .unwrap_or_else(|e| format!("error {e}"))
                            }),
                            Some(("break", name)) => by_name.get(name).map(|s| {
                                s.set_broken(true);
                                s.resume()
                                    .map(|()| "ok".to_owned())
                                    .unwrap_or_else(|e| format!("error {e}"))
                            }),
                            _ => Some(format!("error unknown command {line:?}")),
                        }
                        .unwrap_or_else(|| format!("error no service {line:?}"));
                        if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends one command and checks the reply (client side, used by the patch).
pub async fn send(addr: SocketAddr, command: &str) -> BoxResult<()> {
    let stream = TcpStream::connect(addr).await?;
    let (r, mut w) = stream.into_split();
    w.write_all(format!("{command}\n").as_bytes()).await?;
    let reply = BufReader::new(r)
        .lines()
        .next_line()
        .await?
        .unwrap_or_default();
    if reply == "ok" {
        Ok(())
    } else {
        Err(format!("control {command:?}: {reply}").into())
    }
}
