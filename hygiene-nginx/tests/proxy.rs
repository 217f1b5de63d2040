//! Issue 12, NGINX 8: `HTTP_PROXY` and friends in the environment are not
//! used for the API unless a proxy is configured. Its own test binary (its
//! own process), since it sets process-wide environment variables.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hygiene_core::LoadBalancer;
use hygiene_nginx::testing::{FakeNginx, State};
use hygiene_nginx::NginxBalancer;
use tokio::io::AsyncWriteExt;

/// A "proxy" on 127.0.0.1 that counts connections and answers 502.
async fn counting_proxy() -> (String, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let reply =
                b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            if s.write_all(reply).await.is_err() {
                continue;
            }
        }
    });
    (url, n)
}

#[tokio::test]
async fn environment_proxies_are_ignored_unless_configured() {
    let (proxy, used) = counting_proxy().await;
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        std::env::set_var(var, &proxy);
    }
    for var in ["NO_PROXY", "no_proxy"] {
        std::env::remove_var(var);
    }
    let srv = FakeNginx::start(State::standard()).await;
    let b = || {
        NginxBalancer::builder()
            .instance(srv.url())
            .upstream("backend")
            .timeout(Duration::from_secs(2))
    };
    let lb = b().build().expect("valid");
    lb.list().await.expect("reached directly");
    assert_eq!(
        used.load(Ordering::SeqCst),
        0,
        "the environment's proxy was used"
    );

    let lb = b().proxy(proxy.clone()).build().expect("valid");
    assert!(lb.list().await.is_err(), "the proxy answers 502");
    assert!(
        used.load(Ordering::SeqCst) > 0,
        "a configured proxy is used"
    );
}
