//! The HTTP client shared by the gates and the notifier, and the one place
//! where HTTP statuses and transport errors become core errors.

use std::time::Duration;

use hygiene_core::{Error, Result};
use reqwest::{StatusCode, Url};

/// A client with a connect timeout; each request's whole time limit is
/// the engine's (`call_timeout`).
pub(crate) fn client(field: &'static str) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("hygiene/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::invalid_config(field, format!("cannot build an HTTP client: {e}")))
}

/// Parses an `http`/`https` URL.
pub(crate) fn parse_url(field: &'static str, url: &str) -> Result<Url> {
    let u = Url::parse(url).map_err(|e| {
        Error::invalid_config(
            field,
            format!("{url:?} is not a URL ({e}); give http(s)://host[:port]/path"),
        )
    })?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(Error::invalid_config(
            field,
            format!("{} is not an http(s) URL with a host", shown(&u)),
        ));
    }
    Ok(u)
}

/// The URL's origin: scheme, host and port, no user, password, path or
/// query (a Slack webhook's path is itself its secret).
pub(crate) fn origin(u: &Url) -> String {
    format!(
        "{}://{}{}",
        u.scheme(),
        u.host_str().unwrap_or(""),
        u.port().map(|p| format!(":{p}")).unwrap_or_default()
    )
}

/// The URL as it may be shown: no user, password or query (tokens live
/// there).
pub(crate) fn shown(u: &Url) -> String {
    format!("{}{}", origin(u), u.path())
}

/// Checks a gate's name: a short word an operator can grep for.
pub(crate) fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Error::invalid_config(
            "gate.name",
            format!("{name:?} is not a name: use 1 to 64 letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

/// A transport error: the endpoint could not be asked (retryable).
pub(crate) fn transport(location: &str, e: reqwest::Error) -> Error {
    // reqwest's text names the URL: keep only the cause.
    let e = e.without_url();
    if e.is_timeout() {
        return Error::Timeout {
            operation: location.to_owned(),
            after: Duration::from_secs(10),
        };
    }
    Error::unavailable(location, error_chain(&e))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A status that is not 2xx, as an error: 429 throttled and 5xx
/// unavailable (both retried), anything else rejected.
pub(crate) fn status_error(location: &str, status: StatusCode, body: &str) -> Error {
    let said = hygiene_core::tail(body.trim(), 200);
    let message = format!("answered {status}: {said}");
    match status.as_u16() {
        429 => Error::Throttled {
            location: location.to_owned(),
            message,
            source: None,
        },
        500..=599 => Error::unavailable(location, message),
        _ => Error::rejected(location, message),
    }
}
