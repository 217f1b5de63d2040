//! The backend's private errors and their one mapping into
//! [`hygiene_core::Error`].

use std::fmt;
use std::time::Duration;

use hygiene_core::Error;

/// What was being done when an error happened: every message names the
/// instance, and the upstream and server when there is one.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    /// The API base URL of the instance.
    pub(crate) instance: String,
    /// The operation (`get upstream`, `drain`, …).
    pub(crate) op: &'static str,
    /// The upstream concerned.
    pub(crate) upstream: Option<String>,
    /// The server concerned (`<upstream>/<id>` and its address).
    pub(crate) server: Option<String>,
}

impl Ctx {
    pub(crate) fn new(instance: &str, op: &'static str) -> Self {
        Self {
            instance: instance.to_owned(),
            op,
            upstream: None,
            server: None,
        }
    }

    pub(crate) fn upstream(mut self, upstream: &str) -> Self {
        self.upstream = Some(upstream.to_owned());
        self
    }

    pub(crate) fn server(mut self, server: impl Into<String>) -> Self {
        self.server = Some(server.into());
        self
    }
}

impl fmt::Display for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on nginx {}", self.op, self.instance)?;
        if let Some(u) = &self.upstream {
            write!(f, ", upstream {u:?}")?;
        }
        if let Some(s) = &self.server {
            write!(f, ", server {s}")?;
        }
        Ok(())
    }
}

/// Everything that goes wrong inside this backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NginxError {
    /// No reply: connection refused, TLS failure, timeout. TLS failures are
    /// not retryable (they map to `InvalidConfig` or `PermissionDenied`).
    #[error("{ctx}: {source}")]
    Transport {
        ctx: Ctx,
        #[source]
        source: reqwest::Error,
        /// The request timeout in force, for the timeout message.
        timeout: Duration,
    },
    /// The API answered with an error status.
    #[error("{ctx}: HTTP {status}{}{}", code.as_ref().map(|c| format!(" {c}")).unwrap_or_default(), text.as_ref().map(|t| format!(": {t}")).unwrap_or_default())]
    Api {
        ctx: Box<Ctx>,
        status: u16,
        /// The `error.code` of the JSON error body, when there was one.
        code: Option<String>,
        /// The `error.text` of the JSON error body.
        text: Option<String>,
        /// The `request_id`, for the nginx error log.
        request_id: Option<String>,
    },
    /// A success reply that is not what the spec says.
    #[error("{ctx}: {message}")]
    Malformed { ctx: Ctx, message: String },
    /// An id that the upstream does not hold on this instance.
    #[error("target {id} not found on {location}")]
    UnknownTarget { id: String, location: String },
    /// The id names another server than when this balancer first saw it: a
    /// reload renumbered the servers.
    #[error("target {id}: on nginx {instance}, upstream {upstream:?}, the id now names {now}, not {was} as before (a reload renumbered the servers and forgot API changes); nothing was changed. Find {was} again (list, or the address form {upstream}/{was}) and check its state by hand")]
    Renumbered {
        id: String,
        instance: String,
        upstream: String,
        was: String,
        now: String,
    },
    /// A PATCH reply names another server than the one meant: the ids
    /// changed between the read and the PATCH.
    #[error("{ctx}: nginx applied {body} to {changed}, not to {meant} (a reload renumbered the servers between the read and the change): check {changed} and undo the change by hand if it was not meant")]
    WrongServer {
        ctx: Box<Ctx>,
        body: String,
        meant: String,
        changed: String,
    },
    /// The instance and this client share no API version.
    #[error("nginx {instance} offers API versions {offered:?}; this client speaks {min}..={max}")]
    NoCommonVersion {
        instance: String,
        offered: Vec<u32>,
        min: u32,
        max: u32,
    },
}

/// Status + JSON error code → core error, in one place.
impl From<NginxError> for Error {
    fn from(e: NginxError) -> Self {
        match e {
            NginxError::Transport { ctx, source, timeout } => {
                if source.is_timeout() {
                    Error::Timeout { operation: ctx.to_string(), after: timeout }
                } else if let Some(tls) = tls_failure(&source) {
                    tls_error(ctx, source, tls)
                } else {
                    let message = format!("{ctx}: {}", chain(&source));
                    Error::Unavailable { location: ctx.instance, message, source: Some(Box::new(source)) }
                }
            }
            NginxError::Api { ctx, status, code, text, request_id } => api_error(*ctx, status, code, text, request_id),
            NginxError::Malformed { ctx, message } => {
                Error::protocol(ctx.instance.clone(), format!("{ctx}: {message}"))
            }
            NginxError::UnknownTarget { id, location } => Error::target_not_found(id, Some(location)),
            e @ NginxError::Renumbered { .. } => {
                let location = match &e { NginxError::Renumbered { instance, .. } => instance.clone(), _ => String::new() };
                Error::Rejected { location, message: e.to_string(), source: None }
            }
            e @ NginxError::WrongServer { .. } => {
                let location = match &e { NginxError::WrongServer { ctx, .. } => ctx.instance.clone(), _ => String::new() };
                Error::Rejected { location, message: e.to_string(), source: None }
            }
            NginxError::NoCommonVersion { instance, offered, min, max } => Error::NotSupported {
                operation: "the NGINX Plus API",
                backend: format!("nginx {instance}"),
                hint: format!(
                    "the instance offers API versions {offered:?}, this client speaks {min} to {max}; the `drain` of an http server needs API version 2 or later (version 1, NGINX Plus R13, has none): upgrade NGINX Plus"
                ),
            },
        }
    }
}

fn api_error(
    ctx: Ctx,
    status: u16,
    code: Option<String>,
    text: Option<String>,
    request_id: Option<String>,
) -> Error {
    let said = match (&code, &text) {
        (Some(c), Some(t)) => format!("{c}: {t}"),
        (Some(c), None) => c.clone(),
        (None, Some(t)) => t.clone(),
        (None, None) => format!("HTTP {status} without a JSON error body"),
    };
    let rid = request_id
        .map(|r| format!(" (request_id {r})"))
        .unwrap_or_default();
    let location = ctx.instance.clone();
    let upstream = ctx.upstream.clone().unwrap_or_default();
    match (status, code.as_deref()) {
        (404, Some("UpstreamNotFound")) => Error::NotFound { kind: "upstream", name: upstream, location: Some(format!("nginx {location}")) },
        (404, Some("UpstreamServerNotFound")) => Error::NotFound {
            kind: "server",
            name: ctx.server.clone().unwrap_or_else(|| format!("{upstream}/?")),
            location: Some(format!("nginx {location}")),
        },
        (404, Some("UnknownVersion")) => Error::NotSupported {
            operation: "this API version",
            backend: format!("nginx {location}"),
            hint: format!("{ctx}: {said}{rid}; the instance does not serve the negotiated version (was it downgraded?)"),
        },
        (_, Some("UpstreamStatic")) => Error::NotSupported {
            operation: "changing an upstream at run time",
            backend: format!("nginx {location}"),
            hint: format!(
                "{ctx}: upstream {upstream:?} is static ({said}{rid}); add a `zone <name> 64k;` directive to the upstream block so the API can see and change it"
            ),
        },
        (405, _) => Error::PermissionDenied {
            location,
            message: format!("{ctx}: {said}{rid}; the API is read-only: set `api write=on;` in the location that serves it (and restrict who may reach it)"),
            source: None,
        },
        (401, _) => Error::PermissionDenied {
            location,
            message: format!("{ctx}: {said}; the API wants credentials: check the user and password given to basic_auth"),
            source: None,
        },
        (403, _) => Error::PermissionDenied {
            location,
            message: format!("{ctx}: {said}; access is forbidden: allow this client in the API location (allow/deny, auth_basic)"),
            source: None,
        },
        (404, None | Some("PathNotFound")) => Error::Rejected {
            location,
            message: format!("{ctx}: {said}{rid}; no NGINX Plus API at this path: give the URL of the location with `api;` (e.g. https://lb1:8443/api)"),
            source: None,
        },
        (429, _) => Error::Throttled { location, message: format!("{ctx}: {said}{rid}"), source: None },
        (500..=599, _) => Error::Unavailable { location, message: format!("{ctx}: {said}{rid}"), source: None },
        _ => Error::Rejected { location, message: format!("{ctx}: {said}{rid}"), source: None },
    }
}

/// A TLS failure found in a transport error: not retryable, since the same
/// certificates fail the same way again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsFailure {
    /// This client does not trust the server's certificate.
    ServerNotTrusted,
    /// The server ended the handshake (a missing or refused client
    /// certificate, or no TLS version or cipher in common).
    Handshake,
}

/// Whether `e`'s chain is a TLS failure, and which. reqwest and rustls only
/// show it in the messages of the chain (`invalid peer certificate:
/// UnknownIssuer`, `received fatal alert: CertificateRequired`).
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let text = chain(e).to_lowercase();
    if text.contains("received fatal alert")
        || text.contains("peer sent no certificates")
        || text.contains("peer is incompatible")
    {
        Some(TlsFailure::Handshake)
    } else if text.contains("certificate") {
        Some(TlsFailure::ServerNotTrusted)
    } else {
        None
    }
}

fn tls_error(ctx: Ctx, source: reqwest::Error, tls: TlsFailure) -> Error {
    let cause = chain(&source);
    match tls {
        TlsFailure::ServerNotTrusted => Error::InvalidConfig {
            field: "ca_cert_pem",
            message: format!(
                "{ctx}: the server's TLS certificate is not trusted ({cause}); give the CA that signed it with ca_cert_pem, and check that the certificate names the host of the API URL and has not expired"
            ),
        },
        TlsFailure::Handshake => Error::PermissionDenied {
            location: ctx.instance.clone(),
            message: format!(
                "{ctx}: the TLS handshake was refused ({cause}); check the client certificate and key given with client_identity_pem (signed by a CA the server trusts, not expired) and the CA given with ca_cert_pem"
            ),
            source: Some(Box::new(source)),
        },
    }
}

/// An error and its sources on one line (reqwest hides the cause of a
/// connection or TLS failure in the chain).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: Option<&str>) -> Error {
        let ctx = Ctx::new("http://lb1/api", "drain")
            .upstream("backend")
            .server("backend/3 (10.0.0.3:80)");
        NginxError::Api {
            ctx: Box::new(ctx),
            status,
            code: code.map(Into::into),
            text: Some("boom".into()),
            request_id: Some("abc".into()),
        }
        .into()
    }

    #[test]
    fn mapping_by_status_and_code() {
        assert!(matches!(
            api(404, Some("UpstreamNotFound")),
            Error::NotFound {
                kind: "upstream",
                ..
            }
        ));
        assert!(matches!(
            api(404, Some("UpstreamServerNotFound")),
            Error::NotFound { kind: "server", .. }
        ));
        assert!(matches!(
            api(400, Some("UpstreamStatic")),
            Error::NotSupported { .. }
        ));
        assert!(api(400, Some("UpstreamStatic"))
            .to_string()
            .contains("zone"));
        assert!(matches!(
            api(405, Some("MethodDisabled")),
            Error::PermissionDenied { .. }
        ));
        assert!(api(405, Some("MethodDisabled"))
            .to_string()
            .contains("api write=on"));
        assert!(matches!(api(401, None), Error::PermissionDenied { .. }));
        assert!(matches!(api(403, None), Error::PermissionDenied { .. }));
        assert!(matches!(api(429, None), Error::Throttled { .. }));
        assert!(api(502, None).is_retryable());
        assert!(matches!(
            api(400, Some("UpstreamConfFormatError")),
            Error::Rejected { .. }
        ));
        assert!(matches!(
            api(404, Some("UnknownVersion")),
            Error::NotSupported { .. }
        ));
    }

    #[test]
    fn messages_name_instance_upstream_server() {
        let s = api(400, Some("UpstreamConfFormatError")).to_string();
        for want in [
            "http://lb1/api",
            "backend",
            "backend/3",
            "UpstreamConfFormatError",
            "abc",
        ] {
            assert!(s.contains(want), "{want} missing from {s}");
        }
        let s = api(404, Some("UpstreamServerNotFound")).to_string();
        assert!(
            s.contains("backend/3") && s.contains("http://lb1/api"),
            "{s}"
        );
    }
}
