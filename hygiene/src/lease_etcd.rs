//! `[lease.etcd]`: the shared lease store in etcd (feature `etcd`).
//!
//! The section's schema and the store it opens; `crate::lease` takes the
//! lease with it for `run`, `resume`, `restore`, `status` and `validate`.

use std::path::PathBuf;
#[cfg(feature = "etcd")]
use std::sync::Arc;
use std::time::Duration;

use hygiene_core::duration_text;
use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, Loaded};

/// `[lease]`: where the pool's lease (and its journal) is kept; without
/// it, the journal's file lock on this host.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LeaseSection {
    pub(crate) etcd: Option<Spanned<EtcdSection>>,
    pub(crate) dynamodb: Option<Spanned<crate::lease::DynamoSection>>,
}

/// `[lease.etcd]`
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EtcdSection {
    /// Client URLs: `https://etcd1:2379`, or `host:port` (https when
    /// `[lease.etcd.tls]` is set).
    pub(crate) endpoints: Spanned<Vec<String>>,
    /// Key prefix (default `hygiene/`).
    pub(crate) prefix: Option<String>,
    /// How long a lease lasts without renewal (whole seconds; default 60 s).
    #[serde(default, with = "duration_text::option")]
    pub(crate) lease_duration: Option<Duration>,
    /// How long one request may take (default 5 s).
    #[serde(default, with = "duration_text::option")]
    pub(crate) request_timeout: Option<Duration>,
    /// etcd user; the password from `password_env` or `password_file`.
    pub(crate) user: Option<String>,
    pub(crate) password_env: Option<Spanned<String>>,
    pub(crate) password_file: Option<Spanned<PathBuf>>,
    pub(crate) tls: Option<Spanned<EtcdTlsSection>>,
}

/// `[lease.etcd.tls]`
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EtcdTlsSection {
    /// The CA of etcd's server certificates (PEM).
    pub(crate) ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for `--client-cert-auth`.
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    /// The name the server certificate is checked against.
    pub(crate) server_name: Option<String>,
}

/// The `[lease.etcd]` section, if any.
pub(crate) fn section(loaded: &Loaded) -> Option<&Spanned<EtcdSection>> {
    loaded.file.lease.as_ref()?.get_ref().etcd.as_ref()
}

/// The variable holding etcd's password: withheld from every maintenance.
pub(crate) fn password_env(loaded: &Loaded) -> Option<String> {
    Some(
        section(loaded)?
            .get_ref()
            .password_env
            .as_ref()?
            .get_ref()
            .clone(),
    )
}

const KEY: &str = "lease.etcd";

/// The password of `[lease.etcd]`, from its variable or its file.
fn password(loaded: &Loaded, e: &Spanned<EtcdSection>) -> Result<Option<String>, ConfigError> {
    let span = e.span();
    let e = e.get_ref();
    let password = match (&e.password_env, &e.password_file) {
        (Some(_), Some(f)) => {
            return Err(loaded.error_at(
                Some(f.span()),
                "lease.etcd.password_file",
                "give the password either in an environment variable (password_env) or in a file (password_file), not both",
            ))
        }
        (Some(var), None) => Some(std::env::var(var.get_ref()).map_err(|_| {
            loaded.error_at(
                Some(var.span()),
                "lease.etcd.password_env",
                format!(
                    "the environment variable {} is not set: export etcd's password in it",
                    var.get_ref()
                ),
            )
        })?),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f.get_ref()).map_err(|err| {
                loaded.error_at(
                    Some(f.span()),
                    "lease.etcd.password_file",
                    format!("cannot read {}: {err}", f.get_ref().display()),
                )
            })?;
            Some(text.lines().next().unwrap_or("").to_owned())
        }
        (None, None) => None,
    };
    match (&e.user, &password) {
        (Some(_), None) => Err(loaded.error_at(
            Some(span),
            "lease.etcd.user",
            "a user without a password: set password_env (a variable's name) or password_file; never the password itself",
        )),
        (None, Some(_)) => Err(loaded.error_at(
            Some(span),
            "lease.etcd.user",
            "a password without a user: set user",
        )),
        _ => Ok(password),
    }
}

/// Opens the store `[lease.etcd]` describes (connects lazily; with a
/// user, it authenticates). `None` without the section.
#[cfg(feature = "etcd")]
pub(crate) async fn open(
    loaded: &Loaded,
) -> Result<Option<Arc<hygiene_etcd::EtcdLeaseStore>>, crate::Failure> {
    let Some(e) = section(loaded) else {
        return Ok(None);
    };
    let b = builder(loaded, e)?;
    let store = b.connect().await.map_err(|err| match err {
        hygiene_core::Error::InvalidConfig { message, .. } => {
            crate::Failure::Config(loaded.error_at(Some(e.span()), KEY, message))
        }
        other => crate::Failure::Lib(other),
    })?;
    Ok(Some(Arc::new(store)))
}

/// The builder `[lease.etcd]` describes, its fields checked (offline).
#[cfg(feature = "etcd")]
pub(crate) fn builder(
    loaded: &Loaded,
    e: &Spanned<EtcdSection>,
) -> Result<hygiene_etcd::EtcdLeaseStoreBuilder, ConfigError> {
    let password = password(loaded, e)?;
    let s = e.get_ref();
    let mut b = hygiene_etcd::EtcdLeaseStore::builder(s.endpoints.get_ref().iter().cloned());
    if let Some(p) = &s.prefix {
        b = b.with_prefix(p.clone());
    }
    if let Some(d) = s.lease_duration {
        b = b.with_lease_duration(d);
    }
    if let Some(t) = s.request_timeout {
        b = b.with_request_timeout(t);
    }
    if let (Some(u), Some(p)) = (&s.user, password) {
        b = b.with_user(u.clone(), p);
    }
    if let Some(t) = &s.tls {
        let t = t.get_ref();
        b = b.with_tls(hygiene_etcd::EtcdTls {
            ca_file: t.ca_file.clone(),
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
            server_name: t.server_name.clone(),
        });
    }
    b.check()
        .map_err(|err| loaded.error_at(Some(e.span()), KEY, err.to_string()))?;
    Ok(b)
}

/// `hygiene validate --offline`: the section's fields, connecting nowhere.
pub(crate) fn check_offline(loaded: &Loaded) -> Result<(), crate::Failure> {
    let Some(e) = section(loaded) else {
        return Ok(());
    };
    #[cfg(feature = "etcd")]
    {
        builder(loaded, e)?;
        Ok(())
    }
    #[cfg(not(feature = "etcd"))]
    {
        let _ = e;
        refuse_without_feature(loaded)
    }
}

#[cfg(not(feature = "etcd"))]
fn refuse_without_feature(loaded: &Loaded) -> Result<(), crate::Failure> {
    let Some(e) = section(loaded) else {
        return Ok(());
    };
    password(loaded, e)?;
    Err(crate::Failure::Config(loaded.error_at(
        Some(e.span()),
        KEY,
        "this hygiene was built without etcd support: build it with the `etcd` feature",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Loaded, ConfigError> {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("hygiene.toml");
        std::fs::write(&path, text).expect("write");
        Loaded::read_with(&path, &[])
    }

    const BASE: &str = "pool = \"web\"\n[balancer.haproxy]\nnodes = [\"/run/h.sock\"]\nbackends = [\"web\"]\n[executor.local]\nprogram = \"/bin/true\"\n";

    #[test]
    fn the_etcd_section_parses_every_key() {
        let l = load(&format!(
            "{BASE}[lease.etcd]\nendpoints = [\"https://etcd1:2379\"]\nprefix = \"team-a/\"\nlease_duration = \"30s\"\nrequest_timeout = \"2s\"\nuser = \"ops\"\npassword_env = \"HYGIENE_TEST_ETCD_PW\"\n[lease.etcd.tls]\nca_file = \"/etc/etcd/ca.pem\"\ncert_file = \"c.pem\"\nkey_file = \"c.key\"\nserver_name = \"etcd\"\n"
        ))
        .expect("parses");
        let e = section(&l).expect("section").get_ref();
        assert_eq!(e.endpoints.get_ref(), &["https://etcd1:2379"]);
        assert_eq!(e.lease_duration, Some(Duration::from_secs(30)));
        assert_eq!(e.request_timeout, Some(Duration::from_secs(2)));
        assert_eq!(
            e.tls.as_ref().map(|t| t.get_ref().server_name.clone()),
            Some(Some("etcd".into()))
        );
        assert_eq!(password_env(&l).as_deref(), Some("HYGIENE_TEST_ETCD_PW"));
    }

    #[test]
    fn unknown_keys_and_secrets_in_the_file_are_refused() {
        let e = load(&format!(
            "{BASE}[lease.etcd]\nendpoints = [\"etcd:2379\"]\npassword = \"hunter2\"\n"
        ))
        .expect_err("a password in the file");
        assert!(e.to_string().contains("password"), "{e}");
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn the_builder_names_the_section_and_what_to_do() {
        let l = load(&format!(
            "{BASE}[lease.etcd]\nendpoints = [\"https://etcd1:2379\"]\n"
        ))
        .expect("parses");
        let e = builder(&l, section(&l).expect("section")).expect_err("https without a CA");
        let text = e.to_string();
        assert!(
            text.contains("lease.etcd") && text.contains("ca_file"),
            "{text}"
        );
        let l = load(&format!(
            "{BASE}[lease.etcd]\nendpoints = [\"etcd1:2379\"]\nuser = \"ops\"\n"
        ))
        .expect("parses");
        let e = builder(&l, section(&l).expect("section")).expect_err("no password");
        assert!(e.to_string().contains("password_env"), "{e}");
        let l = load(&format!(
            "{BASE}[lease.etcd]\nendpoints = [\"etcd1:2379\"]\nuser = \"ops\"\npassword_env = \"HYGIENE_TEST_UNSET_VAR\"\n"
        ))
        .expect("parses");
        let e = builder(&l, section(&l).expect("section")).expect_err("unset variable");
        assert!(e.to_string().contains("HYGIENE_TEST_UNSET_VAR"), "{e}");
        let l = load(&format!(
            "{BASE}[lease.etcd]\nendpoints = [\"etcd1:2379\"]\nlease_duration = \"90s\"\n"
        ))
        .expect("parses");
        builder(&l, section(&l).expect("section")).expect("valid");
    }
}
