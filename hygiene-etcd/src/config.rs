//! [`EtcdLeaseStoreBuilder`]: endpoints, prefix, lease duration, TLS and
//! authentication, each checked before anything connects.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use hygiene_core::{Error, Result};

use crate::EtcdLeaseStore;

/// The lease duration when none is set: etcd's concurrency package's
/// default session TTL.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(60);
/// The prefix of every key when none is set.
pub const DEFAULT_PREFIX: &str = "hygiene/";
/// How long one etcd request may take when not set.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

const FIELD: &str = "lease.etcd";

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field: FIELD,
        message: message.into(),
    }
}

/// TLS to etcd: the CA that signed its server certificates, and for client
/// certificate authentication (etcd's `--client-cert-auth`) a certificate
/// and key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA certificate(s), PEM.
    pub ca_file: Option<PathBuf>,
    /// This client's certificate, PEM.
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM.
    pub key_file: Option<PathBuf>,
    /// The name to check the server certificate against, when it is not
    /// the endpoint's host.
    pub server_name: Option<String>,
}

/// A builder of an [`EtcdLeaseStore`]: `with_*` setters, then
/// [`connect`](Self::connect), which checks every field first.
#[derive(Clone, Default)]
pub struct EtcdLeaseStoreBuilder {
    endpoints: Vec<String>,
    prefix: Option<String>,
    lease_duration: Option<Duration>,
    request_timeout: Option<Duration>,
    tls: Option<EtcdTls>,
    user: Option<(String, String)>,
}

impl fmt::Debug for EtcdLeaseStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdLeaseStoreBuilder")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("lease_duration", &self.lease_duration)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("password", &self.user.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What [`EtcdLeaseStoreBuilder::settings`] checked.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) endpoints: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) duration: Duration,
    pub(crate) options: ConnectOptions,
}

impl EtcdLeaseStoreBuilder {
    /// A builder for the cluster at `endpoints` (`https://etcd1:2379`,
    /// `http://127.0.0.1:2379`, or `host:port`: https when TLS is set).
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// The prefix of every key hygiene writes (default `hygiene/`): give
    /// each team or environment its own, and grant its etcd user that
    /// prefix only.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// How long a lease lasts without renewal (default 60 s; whole
    /// seconds, as etcd counts; etcd raises one below its minimum, and the
    /// grant says what it gave).
    pub fn with_lease_duration(mut self, duration: Duration) -> Self {
        self.lease_duration = Some(duration);
        self
    }

    /// How long one request may take (default 5 s); also the connect
    /// timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// TLS to etcd.
    pub fn with_tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// etcd's user and password authentication. The password comes from
    /// the caller (the `hygiene` command reads it from a variable or a
    /// file): it is never shown by `Debug`.
    pub fn with_user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// Checks every field and reads the TLS files, connecting nowhere
    /// (`hygiene validate --offline`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field and what to write.
    pub fn check(&self) -> Result<()> {
        self.settings().map(drop)
    }

    /// Checks every field and reads the TLS files.
    pub(crate) fn settings(&self) -> Result<Settings> {
        if self.endpoints.is_empty() {
            return Err(invalid(
                "endpoints is empty: name the cluster's client URLs, e.g. [\"https://etcd1:2379\"]",
            ));
        }
        let tls = self.tls.as_ref().filter(|t| **t != EtcdTls::default());
        let mut schemes = Vec::new();
        let mut endpoints = Vec::new();
        for e in &self.endpoints {
            let (scheme, rest) = match e.split_once("://") {
                Some((s @ ("http" | "https"), rest)) => (s, rest),
                Some((s, _)) => {
                    return Err(invalid(format!(
                        "endpoint {e:?}: scheme {s:?} is not http or https"
                    )))
                }
                None => (if tls.is_some() { "https" } else { "http" }, e.as_str()),
            };
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| {
                invalid(format!(
                    "endpoint {e:?} has no port: write host:port (etcd's client port is usually 2379)"
                ))
            })?;
            if host.is_empty()
                || host.contains(['/', '?', '#', '@', ' '])
                || port.parse::<u16>().map_or(true, |p| p == 0)
            {
                return Err(invalid(format!(
                    "endpoint {e:?} is not [http(s)://]host:port"
                )));
            }
            schemes.push(scheme);
            endpoints.push(format!("{scheme}://{rest}"));
        }
        let https = schemes.iter().filter(|s| **s == "https").count();
        if https != 0 && https != schemes.len() {
            return Err(invalid(
                "endpoints mix http:// and https://: one cluster speaks one of them",
            ));
        }
        let https = https != 0;
        let mut options = ConnectOptions::new()
            .with_require_leader(true)
            .with_keep_alive(Duration::from_secs(10), self.timeout())
            .with_keep_alive_while_idle(false)
            .with_timeout(self.timeout())
            .with_connect_timeout(self.timeout());
        match (https, tls) {
            (true, None) => {
                return Err(invalid(
                    "https endpoints need [lease.etcd.tls] ca_file: the CA that signed etcd's server certificates (PEM)",
                ))
            }
            (false, Some(_)) => {
                return Err(invalid(
                    "[lease.etcd.tls] is set but the endpoints are http://: write https:// (or host:port)",
                ))
            }
            (true, Some(t)) => options = options.with_tls(tls_options(t)?),
            (false, None) => {}
        }
        if let Some((user, password)) = &self.user {
            if user.is_empty() || user.contains(':') {
                return Err(invalid(format!(
                    "user {user:?}: an etcd user name is not empty and has no ':'"
                )));
            }
            if password.is_empty() {
                return Err(invalid(format!(
                    "the password of etcd user {user:?} is empty: set password_env or password_file"
                )));
            }
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        let prefix = self.prefix.clone().unwrap_or_else(|| DEFAULT_PREFIX.into());
        if prefix.is_empty() || prefix.contains(|c: char| c.is_control()) {
            return Err(invalid(format!(
                "prefix {prefix:?}: not empty, no control characters (e.g. \"hygiene/\")"
            )));
        }
        let prefix = if prefix.ends_with('/') {
            prefix
        } else {
            format!("{prefix}/")
        };
        let duration = self.lease_duration.unwrap_or(DEFAULT_LEASE_DURATION);
        if duration < Duration::from_secs(1) || duration.subsec_nanos() != 0 {
            return Err(invalid(format!(
                "lease_duration {}: etcd counts leases in whole seconds, at least 1 s (e.g. \"30s\")",
                hygiene_core::duration_text::format(duration)
            )));
        }
        if self.timeout() * 2 > duration {
            return Err(invalid(format!(
                "request_timeout {} is more than half of lease_duration {}: a renewal that hangs that long leaves too little of the lease",
                hygiene_core::duration_text::format(self.timeout()),
                hygiene_core::duration_text::format(duration)
            )));
        }
        Ok(Settings {
            endpoints,
            prefix,
            duration,
            options,
        })
    }

    fn timeout(&self) -> Duration {
        self.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT)
    }

    /// Checks every field, reads the TLS files and connects (with a user,
    /// it authenticates: wrong credentials fail here).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field and what to write;
    /// [`Error::Unavailable`] when the cluster cannot be reached for
    /// authentication.
    pub async fn connect(self) -> Result<EtcdLeaseStore> {
        let settings = self.settings()?;
        EtcdLeaseStore::connect(settings).await
    }
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).map_err(|e| invalid(format!("tls {what} {}: {e}", path.display())))?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(invalid(format!(
            "tls {what} {}: not PEM (no \"-----BEGIN\" line)",
            path.display()
        )));
    }
    Ok(bytes)
}

fn tls_options(t: &EtcdTls) -> Result<TlsOptions> {
    let Some(ca) = &t.ca_file else {
        return Err(invalid(
            "[lease.etcd.tls] needs ca_file: the CA that signed etcd's server certificates (PEM)",
        ));
    };
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read("ca_file", ca)?));
    match (&t.cert_file, &t.key_file) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read("cert_file", cert)?,
                read("key_file", key)?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(invalid(
                "[lease.etcd.tls] cert_file and key_file go together (a client certificate and its key)",
            ))
        }
    }
    if let Some(name) = &t.server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(b: EtcdLeaseStoreBuilder) -> String {
        match b.settings() {
            Err(Error::InvalidConfig { field, message }) => {
                assert_eq!(field, FIELD);
                message
            }
            Err(e) => panic!("not a configuration error: {e}"),
            Ok(_) => panic!("accepted {b:?}"),
        }
    }

    fn pem(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(
            &p,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        p
    }

    #[test]
    fn endpoints_are_checked_and_normalised() {
        let s = EtcdLeaseStoreBuilder::new(["127.0.0.1:2379", "http://etcd2:2379"])
            .settings()
            .expect("valid");
        assert_eq!(s.endpoints, ["http://127.0.0.1:2379", "http://etcd2:2379"]);
        assert_eq!(s.prefix, "hygiene/");
        assert_eq!(s.duration, DEFAULT_LEASE_DURATION);
        let none: [&str; 0] = [];
        assert!(err(EtcdLeaseStoreBuilder::new(none)).contains("endpoints is empty"));
        assert!(err(EtcdLeaseStoreBuilder::new(["etcd1"])).contains("has no port"));
        assert!(err(EtcdLeaseStoreBuilder::new(["unix://x:1"])).contains("scheme"));
        assert!(err(EtcdLeaseStoreBuilder::new(["http://h:0"])).contains("host:port"));
        assert!(err(EtcdLeaseStoreBuilder::new(["http://h:2379/v3"])).contains("host:port"));
        assert!(err(EtcdLeaseStoreBuilder::new(["http://a:1", "https://b:1"])).contains("mix"));
    }

    #[test]
    fn tls_needs_a_ca_and_https_and_reads_its_files() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = pem(dir.path(), "ca.pem");
        assert!(err(EtcdLeaseStoreBuilder::new(["https://etcd:2379"])).contains("ca_file"));
        assert!(err(
            EtcdLeaseStoreBuilder::new(["http://etcd:2379"]).with_tls(EtcdTls {
                ca_file: Some(ca.clone()),
                ..EtcdTls::default()
            })
        )
        .contains("https://"));
        assert!(
            err(EtcdLeaseStoreBuilder::new(["etcd:2379"]).with_tls(EtcdTls {
                server_name: Some("etcd".into()),
                ..EtcdTls::default()
            }))
            .contains("needs ca_file")
        );
        assert!(
            err(EtcdLeaseStoreBuilder::new(["etcd:2379"]).with_tls(EtcdTls {
                ca_file: Some(ca.clone()),
                cert_file: Some(ca.clone()),
                ..EtcdTls::default()
            }))
            .contains("go together")
        );
        let missing = dir.path().join("missing.pem");
        let m = err(EtcdLeaseStoreBuilder::new(["etcd:2379"]).with_tls(EtcdTls {
            ca_file: Some(missing),
            ..EtcdTls::default()
        }));
        assert!(m.contains("ca_file") && m.contains("missing.pem"), "{m}");
        let not_pem = dir.path().join("key.der");
        std::fs::write(&not_pem, [0u8, 1, 2]).expect("write");
        assert!(
            err(EtcdLeaseStoreBuilder::new(["etcd:2379"]).with_tls(EtcdTls {
                ca_file: Some(not_pem),
                ..EtcdTls::default()
            }))
            .contains("not PEM")
        );
        // host:port with TLS set means https.
        let s = EtcdLeaseStoreBuilder::new(["etcd:2379"])
            .with_tls(EtcdTls {
                ca_file: Some(ca.clone()),
                cert_file: Some(ca.clone()),
                key_file: Some(ca),
                server_name: Some("etcd.internal".into()),
            })
            .settings()
            .expect("valid");
        assert_eq!(s.endpoints, ["https://etcd:2379"]);
    }

    #[test]
    fn users_durations_and_prefixes_are_checked() {
        let b = || EtcdLeaseStoreBuilder::new(["etcd:2379"]);
        assert!(err(b().with_user("ops", "")).contains("password_env or password_file"));
        assert!(err(b().with_user("", "pw")).contains("user"));
        assert!(err(b().with_lease_duration(Duration::from_millis(1500))).contains("whole seconds"));
        assert!(err(b().with_lease_duration(Duration::ZERO)).contains("at least 1 s"));
        assert!(err(b()
            .with_lease_duration(Duration::from_secs(6))
            .with_request_timeout(Duration::from_secs(4)))
        .contains("more than half"));
        assert!(err(b().with_prefix("")).contains("prefix"));
        let s = b().with_prefix("team-a").settings().expect("valid");
        assert_eq!(s.prefix, "team-a/");
    }

    #[test]
    fn debug_never_shows_the_password() {
        let b = EtcdLeaseStoreBuilder::new(["etcd:2379"]).with_user("ops", "s3cret-pw");
        let text = format!("{b:?}");
        assert!(
            !text.contains("s3cret-pw") && text.contains("ops"),
            "{text}"
        );
    }
}
