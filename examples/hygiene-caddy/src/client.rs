//! The few calls this backend makes to Caddy's admin API, over plain HTTP
//! (hyper): the whole configuration with its `ETag`, a conditional write of
//! it, the upstreams' request counts and the upstreams' health gauge.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE, ETAG, IF_MATCH};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::Value;

use crate::error::CaddyError;

/// The largest reply read from the admin API (a whole configuration).
pub(crate) const MAX_REPLY_BYTES: usize = 32 * 1024 * 1024;

/// Caddy's admin endpoint.
#[derive(Clone)]
pub(crate) struct Admin {
    /// `http://host:port`, without a trailing slash.
    base: String,
    timeout: Duration,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The answer to a conditional write.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Written {
    /// Caddy loaded the new configuration.
    Loaded,
    /// `412 Precondition Failed`: someone changed the configuration since
    /// our read; nothing was written.
    Stale,
}

#[derive(Deserialize)]
struct UpstreamRow {
    address: String,
    num_requests: i64,
}

struct Reply {
    status: StatusCode,
    etag: Option<String>,
    body: Bytes,
}

impl Admin {
    pub(crate) fn new(base: String, timeout: Duration) -> Self {
        // No idle connections kept: Caddy closes its admin connections
        // when a configuration load replaces the admin server, and a
        // request sent on such a connection fails half-way.
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        Self {
            base,
            timeout,
            http,
        }
    }

    /// The endpoint, for messages.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// One request; a read (GET) that failed on the way (the admin server
    /// was being replaced by a reload) is sent once more, 50 ms later.
    async fn call(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Reply, CaddyError> {
        let read = method == Method::GET;
        match self.call_once(op, method.clone(), path, body.clone()).await {
            Err(CaddyError::Transport { .. }) if read => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.call_once(op, method, path, body).await
            }
            other => other,
        }
    }

    async fn call_once(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Reply, CaddyError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&url);
        let payload = match body {
            Some((bytes, etag)) => {
                req = req.header(CONTENT_TYPE, "application/json");
                let v = HeaderValue::from_str(etag).map_err(|e| CaddyError::Protocol {
                    admin: self.base.clone(),
                    op,
                    message: format!("the ETag {etag:?} cannot be sent back as If-Match: {e}"),
                })?;
                req = req.header(IF_MATCH, v);
                Full::new(Bytes::from(bytes))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(payload).map_err(|e| CaddyError::Transport {
            admin: self.base.clone(),
            op,
            message: format!("cannot build the request for {url}: {e}"),
            source: Some(Box::new(e)),
        })?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| CaddyError::Transport {
                    admin: self.base.clone(),
                    op,
                    message: if e.is_connect() {
                        "cannot connect (is Caddy running, with its admin endpoint here?)"
                            .to_owned()
                    } else {
                        "the connection failed".to_owned()
                    },
                    source: Some(Box::new(e)),
                })?;
            let status = resp.status();
            let mut etag = resp
                .headers()
                .get(ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let collected = Limited::new(resp.into_body(), MAX_REPLY_BYTES)
                .collect()
                .await
                .map_err(|e| CaddyError::Protocol {
                    admin: self.base.clone(),
                    op,
                    message: format!(
                        "the reply could not be read whole (at most {MAX_REPLY_BYTES} bytes): {e}"
                    ),
                })?;
            // Caddy 2.6 sends a configuration's ETag as a trailer (it hashes
            // the body while writing it).
            if let Some(t) = collected.trailers().and_then(|t| t.get(ETAG)) {
                etag = t.to_str().ok().map(str::to_owned);
            }
            Ok(Reply {
                status,
                etag,
                body: collected.to_bytes(),
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| CaddyError::Timeout {
                admin: self.base.clone(),
                op,
                after: self.timeout,
            })?
    }

    fn api_error(&self, op: &'static str, reply: &Reply) -> CaddyError {
        let text = serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&reply.body).trim().to_owned());
        CaddyError::Api {
            admin: self.base.clone(),
            op,
            status: reply.status.as_u16(),
            text,
        }
    }

    /// The whole configuration and its `ETag` (`"/config/ <hash>"`).
    pub(crate) async fn config(&self, op: &'static str) -> Result<(Value, String), CaddyError> {
        let reply = self.call(op, Method::GET, "/config/", None).await?;
        if !reply.status.is_success() {
            return Err(self.api_error(op, &reply));
        }
        let etag = reply.etag.clone().ok_or_else(|| CaddyError::Protocol {
            admin: self.base.clone(),
            op,
            message: "GET /config/ gave no ETag (Caddy 2.6 or newer sends one)".to_owned(),
        })?;
        let cfg = serde_json::from_slice(&reply.body).map_err(|e| CaddyError::Protocol {
            admin: self.base.clone(),
            op,
            message: format!("GET /config/ is not JSON: {e}"),
        })?;
        Ok((cfg, etag))
    }

    /// Replaces the whole configuration, only if it is still the one
    /// `etag` names: one atomic reload, and never over another writer's
    /// change.
    pub(crate) async fn write_config(
        &self,
        op: &'static str,
        cfg: &Value,
        etag: &str,
    ) -> Result<Written, CaddyError> {
        let body = serde_json::to_vec(cfg).map_err(|e| CaddyError::Protocol {
            admin: self.base.clone(),
            op,
            message: format!("cannot encode the configuration: {e}"),
        })?;
        let reply = self
            .call(op, Method::PATCH, "/config/", Some((body, etag)))
            .await?;
        match reply.status {
            s if s.is_success() => Ok(Written::Loaded),
            StatusCode::PRECONDITION_FAILED => Ok(Written::Stale),
            _ => Err(self.api_error(op, &reply)),
        }
    }

    /// `num_requests` per upstream address, from `/reverse_proxy/upstreams`.
    /// Caddy lists an address while a loaded handler holds it.
    pub(crate) async fn requests(
        &self,
        op: &'static str,
    ) -> Result<HashMap<String, u64>, CaddyError> {
        let reply = self
            .call(op, Method::GET, "/reverse_proxy/upstreams", None)
            .await?;
        if !reply.status.is_success() {
            return Err(self.api_error(op, &reply));
        }
        let rows: Vec<UpstreamRow> =
            serde_json::from_slice(&reply.body).map_err(|e| CaddyError::Protocol {
                admin: self.base.clone(),
                op,
                message: format!("GET /reverse_proxy/upstreams is not the expected list: {e}"),
            })?;
        Ok(rows
            .into_iter()
            .map(|r| (r.address, u64::try_from(r.num_requests).unwrap_or(0)))
            .collect())
    }

    /// `caddy_reverse_proxy_upstreams_healthy` per upstream address, from
    /// the admin endpoint's `/metrics`.
    pub(crate) async fn healthy_gauges(
        &self,
        op: &'static str,
    ) -> Result<HashMap<String, bool>, CaddyError> {
        let reply = self.call(op, Method::GET, "/metrics", None).await?;
        if !reply.status.is_success() {
            return Err(self.api_error(op, &reply));
        }
        Ok(parse_healthy_gauges(&String::from_utf8_lossy(&reply.body)))
    }
}

/// The `caddy_reverse_proxy_upstreams_healthy{upstream="…"} 0|1` lines of a
/// Prometheus text exposition.
pub(crate) fn parse_healthy_gauges(text: &str) -> HashMap<String, bool> {
    const PREFIX: &str = "caddy_reverse_proxy_upstreams_healthy{upstream=\"";
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(PREFIX) else {
            continue;
        };
        // Label values escape `\`, `"` and newlines with a backslash.
        let mut addr = String::new();
        let mut chars = rest.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => addr.push('\n'),
                    Some((_, other)) => addr.push(other),
                    None => break,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => addr.push(c),
            }
        }
        let Some(end) = end else { continue };
        let Some(value) = rest[end + 1..]
            .strip_prefix('}')
            .map(str::trim)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        out.insert(addr, value >= 1.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_health_gauge_and_nothing_else() {
        let text = "# HELP caddy_reverse_proxy_upstreams_healthy Health status of reverse proxy upstreams.\n\
# TYPE caddy_reverse_proxy_upstreams_healthy gauge\n\
caddy_reverse_proxy_upstreams_healthy{upstream=\"127.0.0.2:8080\"} 1\n\
caddy_reverse_proxy_upstreams_healthy{upstream=\"127.0.0.3:8080\"} 0\n\
caddy_reverse_proxy_upstreams_healthy{upstream=\"we\\\"ird\"} 1\n\
caddy_admin_http_requests_total{code=\"200\"} 4\n";
        let g = parse_healthy_gauges(text);
        assert_eq!(g.len(), 3, "{g:?}");
        assert_eq!(g.get("127.0.0.2:8080"), Some(&true));
        assert_eq!(g.get("127.0.0.3:8080"), Some(&false));
        assert_eq!(g.get("we\"ird"), Some(&true));
    }
}
