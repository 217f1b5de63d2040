use crate::server::{FakeNginx, Kind, State};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_binary() {
    let srv = FakeNginx::start(State::standard()).await;
    srv.with(|s| { s.auto_check = Some(true); s.auth = Some("Basic aHlnaWVuZTpzM2NyZXQ=".into()); });
    let url = srv.url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("/work/target-nginx/debug/nginx-patch")
            .env("NGINX_API_PASSWORD", "s3cret")
            .args(["--api", &url, "--upstream", "backend", "--user", "hygiene", "--batch", "1", "--min-healthy", "2", "--poll-ms", "20", "--", "sh", "-c", "echo patching $HYGIENE_TARGET_ID $HYGIENE_TARGET_ADDRESS"])
            .output().expect("run")
    }).await.expect("join");
    eprintln!("STDERR:\n{}", String::from_utf8_lossy(&out.stderr));
    println!("STDOUT:\n{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success());
    assert!(!srv.peer(Kind::Http, "backend", 1).drain);
}
