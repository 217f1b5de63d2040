//! One NGINX Plus instance's REST API: version negotiation, upstream status,
//! server PATCH. Paths are built segment by segment (percent-encoded), never
//! by string concatenation.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OnceCell;
use url::Url;

use crate::error::{Ctx, NginxError};

/// Oldest API version this client speaks. The upstream endpoints it uses
/// (`GET …/upstreams/`, `PATCH …/servers/{id}`) exist from version 1 (NGINX
/// Plus R13, nginx 1.13.3, the first release of `ngx_http_api_module`), but
/// the `drain` field of an http server arrived with version 2: a drain on
/// version 1 would be refused, so 2 is the minimum.
pub const MIN_API_VERSION: u32 = 2;
/// Newest API version this client knows (the spec it was written from).
pub const MAX_API_VERSION: u32 = 9;

/// An upstream's protocol: the API has one tree for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UpstreamKind {
    /// `http { upstream … }`: servers have `drain`.
    Http,
    /// `stream { upstream … }`: servers have no `drain`; only `down`.
    Stream,
}

impl UpstreamKind {
    pub(crate) fn segment(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Stream => "stream",
        }
    }
}

impl fmt::Display for UpstreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.segment())
    }
}

/// `health_checks` of a peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct PeerHealthChecks {
    /// Checks made so far: the freshness clock.
    #[serde(default)]
    pub(crate) checks: u64,
    /// Absent until a check has completed.
    #[serde(default)]
    pub(crate) last_passed: Option<bool>,
}

/// A live peer of `GET …/upstreams/{u}/` (only the fields used).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Peer {
    pub(crate) id: u64,
    /// The server's address: what identifies it across instances and
    /// upstreams. The spec: `server` is the address, `name` what the
    /// `server` directive says, so with a hostname that resolves to several
    /// addresses several peers share one `name`.
    pub(crate) server: String,
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) backup: bool,
    pub(crate) state: String,
    #[serde(default)]
    pub(crate) active: Option<u64>,
    #[serde(default)]
    pub(crate) health_checks: Option<PeerHealthChecks>,
}

/// The reply of a server PATCH: the server's configuration now (only the
/// fields used).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct ServerConf {
    pub(crate) id: u64,
    pub(crate) server: String,
    #[serde(default)]
    pub(crate) down: bool,
    #[serde(default)]
    pub(crate) drain: bool,
}

/// `GET …/upstreams/{u}/`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct UpstreamLive {
    #[serde(default)]
    pub(crate) peers: Vec<Peer>,
}

/// The JSON error body: `{"error":{"status","text","code"},"request_id","href"}`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorInner,
    #[serde(default)]
    request_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorInner {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

/// One instance's API client.
pub(crate) struct Instance {
    base: Url,
    label: String,
    http: reqwest::Client,
    auth: Option<(String, String)>,
    pinned: Option<u32>,
    version: OnceCell<u32>,
    timeout: Duration,
    max_reply: usize,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("base", &self.label)
            .field("user", &self.auth.as_ref().map(|(u, _)| u.as_str()))
            .field("password", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("pinned", &self.pinned)
            .field("version", &self.version.get())
            .field("timeout", &self.timeout)
            .field("max_reply", &self.max_reply)
            .finish()
    }
}

impl Instance {
    /// `base` is the API root (the URL whose GET lists versions), already
    /// validated by the builder.
    pub(crate) fn new(
        base: Url,
        http: reqwest::Client,
        auth: Option<(String, String)>,
        pinned: Option<u32>,
        timeout: Duration,
        max_reply: usize,
    ) -> Self {
        let label = base.as_str().trim_end_matches('/').to_owned();
        Self {
            base,
            label,
            http,
            auth,
            pinned,
            version: OnceCell::new(),
            timeout,
            max_reply,
        }
    }

    /// The API base URL, for messages.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// The negotiated version, if negotiation has happened.
    pub(crate) fn known_version(&self) -> Option<u32> {
        self.pinned.or_else(|| self.version.get().copied())
    }

    /// The API version to use: the pinned one, or the highest version both
    /// the instance (`GET /api/`) and this client support. Asked once.
    pub(crate) async fn version(&self) -> Result<u32, NginxError> {
        if let Some(v) = self.pinned {
            return Ok(v);
        }
        self.version
            .get_or_try_init(|| self.negotiate())
            .await
            .copied()
    }

    async fn negotiate(&self) -> Result<u32, NginxError> {
        let ctx = Ctx::new(&self.label, "list API versions");
        let body: Vec<Value> = self
            .request(Method::GET, self.base.clone(), None, &ctx)
            .await?;
        let offered: Vec<u32> = body
            .iter()
            .filter_map(|v| match v {
                Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                Value::String(s) => s.parse().ok(),
                _ => None,
            })
            .collect();
        if offered.len() != body.len() {
            return Err(NginxError::Malformed {
                ctx,
                message: format!(
                    "expected a list of version numbers, got {}",
                    Value::Array(body)
                ),
            });
        }
        let best = offered
            .iter()
            .copied()
            .filter(|v| (MIN_API_VERSION..=MAX_API_VERSION).contains(v))
            .max();
        let v = best.ok_or(NginxError::NoCommonVersion {
            instance: self.label.clone(),
            offered,
            min: MIN_API_VERSION,
            max: MAX_API_VERSION,
        })?;
        tracing::debug!(nginx.instance = %self.label, api.version = v, "negotiated api version");
        Ok(v)
    }

    /// `base/{v}/{kind}/upstreams/{name}/[servers/{id}]`, every segment
    /// percent-encoded by `url` (a `/` or `..` in a name stays inside its
    /// segment).
    fn url(
        &self,
        version: u32,
        kind: UpstreamKind,
        upstream: Option<&str>,
        server: Option<u64>,
        ctx: &Ctx,
    ) -> Result<Url, NginxError> {
        let mut url = self.base.clone();
        {
            let mut seg = url
                .path_segments_mut()
                .map_err(|()| NginxError::Malformed {
                    ctx: ctx.clone(),
                    message: "the API URL cannot have path segments".into(),
                })?;
            seg.pop_if_empty()
                .push(&version.to_string())
                .push(kind.segment())
                .push("upstreams");
            if let Some(u) = upstream {
                seg.push(u);
            }
            match server {
                Some(id) => {
                    seg.push("servers").push(&id.to_string());
                }
                None => {
                    seg.push("");
                }
            }
        }
        Ok(url)
    }

    /// The live state of an upstream and its peers.
    pub(crate) async fn upstream(
        &self,
        kind: UpstreamKind,
        name: &str,
    ) -> Result<UpstreamLive, NginxError> {
        let ctx = Ctx::new(&self.label, "get upstream").upstream(name);
        let v = self.version().await?;
        let url = self.url(v, kind, Some(name), None, &ctx)?;
        self.request(Method::GET, url, None, &ctx).await
    }

    /// Every upstream of a kind (those with a `zone`: the API shows no
    /// other), by name: one call for all of them.
    /// `wanted` names the upstreams looked for, for messages.
    pub(crate) async fn upstreams(
        &self,
        kind: UpstreamKind,
        wanted: &str,
    ) -> Result<HashMap<String, UpstreamLive>, NginxError> {
        let mut ctx = Ctx::new(&self.label, "list upstreams");
        if !wanted.is_empty() {
            ctx = ctx.upstream(wanted);
        }
        let v = self.version().await?;
        let url = self.url(v, kind, None, None, &ctx)?;
        self.request(Method::GET, url, None, &ctx).await
    }

    /// PATCHes one server's configuration; returns its configuration as
    /// the reply gives it (the caller checks it is the server it meant).
    pub(crate) async fn patch_server(
        &self,
        kind: UpstreamKind,
        upstream: &str,
        id: u64,
        body: &Value,
        ctx: &Ctx,
    ) -> Result<ServerConf, NginxError> {
        let v = self.version().await?;
        let url = self.url(v, kind, Some(upstream), Some(id), ctx)?;
        self.request(Method::PATCH, url, Some(body), ctx).await
    }

    async fn request<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        ctx: &Ctx,
    ) -> Result<T, NginxError> {
        tracing::debug!(nginx.instance = %self.label, http.method = %method, http.path = url.path(), "api call");
        let mut req = self
            .http
            .request(method, url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some((user, password)) = &self.auth {
            req = req.basic_auth(user, Some(password));
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let transport = |source| NginxError::Transport {
            ctx: ctx.clone(),
            source,
            timeout: self.timeout,
        };
        let mut resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        // Read at most `max_reply` bytes: a reply is a few kB per upstream;
        // a server (or something posing as one) sending without end must
        // not exhaust memory.
        let too_big = |n: u64| {
            NginxError::Malformed {
            ctx: ctx.clone(),
            message: format!(
                "the reply is larger than {} bytes ({n} bytes or more); if the API is right and the upstreams are that large, raise max_reply_size",
                self.max_reply
            ),
        }
        };
        if let Some(n) = resp.content_length() {
            if n > self.max_reply as u64 {
                return Err(too_big(n));
            }
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if bytes.len() + chunk.len() > self.max_reply {
                return Err(too_big((bytes.len() + chunk.len()) as u64));
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(api_error(ctx, status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| NginxError::Malformed {
            ctx: ctx.clone(),
            message: format!(
                "HTTP {status} with a body that is not the expected JSON ({e}): {}",
                snippet(&bytes)
            ),
        })
    }
}

fn api_error(ctx: &Ctx, status: StatusCode, bytes: &[u8]) -> NginxError {
    let (code, text, request_id) = match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => (b.error.code, b.error.text, b.request_id),
        Err(_) => (
            None,
            (!bytes.is_empty()).then(|| format!("non-JSON reply: {}", snippet(bytes))),
            None,
        ),
    };
    NginxError::Api {
        ctx: Box::new(ctx.clone()),
        status: status.as_u16(),
        code,
        text,
        request_id,
    }
}

/// The start of a body, printable, for messages.
fn snippet(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s: String = s
        .chars()
        .take(120)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> Instance {
        let base = Url::parse("https://lb1.example:8443/api/").expect("url");
        Instance::new(
            base,
            reqwest::Client::new(),
            Some(("u".into(), "pw-secret".into())),
            None,
            Duration::from_secs(1),
            1 << 20,
        )
    }

    #[test]
    fn every_segment_is_percent_encoded() {
        let i = instance();
        let ctx = Ctx::new(i.label(), "test");
        let u = i
            .url(9, UpstreamKind::Http, Some("backend"), Some(3), &ctx)
            .expect("url");
        assert_eq!(
            u.as_str(),
            "https://lb1.example:8443/api/9/http/upstreams/backend/servers/3"
        );
        let u = i
            .url(9, UpstreamKind::Stream, Some("tcp"), None, &ctx)
            .expect("url");
        assert_eq!(
            u.as_str(),
            "https://lb1.example:8443/api/9/stream/upstreams/tcp/"
        );
        // Defence in depth: even a name the builder would refuse stays one segment.
        let u = i
            .url(9, UpstreamKind::Http, Some("../../x/y?z#w"), Some(1), &ctx)
            .expect("url");
        assert_eq!(
            u.path(),
            "/api/9/http/upstreams/..%2F..%2Fx%2Fy%3Fz%23w/servers/1"
        );
        assert!(u.query().is_none() && u.fragment().is_none());
    }

    #[test]
    fn debug_hides_the_password() {
        let s = format!("{:?}", instance());
        assert!(!s.contains("pw-secret") && s.contains("<redacted>"), "{s}");
    }

    #[test]
    fn error_bodies() {
        let ctx = Ctx::new("http://lb/api", "get upstream").upstream("backend");
        let body = br#"{"error":{"status":404,"text":"upstream not found","code":"UpstreamNotFound"},"request_id":"ab12","href":"https://nginx.org/"}"#;
        match api_error(&ctx, StatusCode::NOT_FOUND, body) {
            NginxError::Api {
                code,
                text,
                request_id,
                status,
                ..
            } => {
                assert_eq!(status, 404);
                assert_eq!(code.as_deref(), Some("UpstreamNotFound"));
                assert_eq!(text.as_deref(), Some("upstream not found"));
                assert_eq!(request_id.as_deref(), Some("ab12"));
            }
            other => panic!("{other:?}"),
        }
        match api_error(
            &ctx,
            StatusCode::BAD_GATEWAY,
            b"<html>\r\n502 Bad Gateway</html>",
        ) {
            NginxError::Api { code, text, .. } => {
                assert_eq!(code, None);
                assert!(text.is_some_and(|t| t.contains("502 Bad Gateway") && !t.contains('\r')));
            }
            other => panic!("{other:?}"),
        }
    }
}
