//! The environment a maintenance starts with: never hygiene's own (which
//! holds the balancer's password, cloud credentials, tokens), but a short
//! allow-list, what the operator names, and the target's variables.

use std::ffi::OsString;

use tokio::process::Command;

use crate::error::{Error, Result};

/// Variables every child gets from hygiene's environment, when set there:
/// what a program needs to find programs, files and the locale.
const ALLOWED: &[&str] = &["PATH", "HOME", "LANG", "TZ"];

/// Prefixes of allowed variables (the locale's categories).
const ALLOWED_PREFIXES: &[&str] = &["LC_"];

/// What the runner sets itself: never the operator's.
const RESERVED: &[&str] = &[
    "HYGIENE_TARGET_ID",
    "HYGIENE_TARGET_ADDRESS",
    "HYGIENE_TARGET_PORT",
    "HYGIENE_EXEC_DIR",
    "TRACEPARENT",
];

/// The environment of a child: the allow-list, the executor's own
/// (`SSH_AUTH_SOCK` for ssh), the variables the operator passes by name,
/// those it sets, and never a withheld one.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChildEnv {
    executor_allowed: &'static [&'static str],
    pass: Vec<String>,
    set: Vec<(String, String)>,
    withheld: Vec<String>,
}

/// A variable name: a letter or `_`, then letters, digits and `_`.
fn check_name(field: &'static str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(Error::invalid_config(
            field,
            format!("{name:?} is not an environment variable name (letters, digits and _, not starting with a digit)"),
        ));
    }
    if RESERVED.contains(&name) {
        return Err(Error::invalid_config(
            field,
            format!("{name} is set by hygiene for each target: remove it"),
        ));
    }
    Ok(())
}

impl ChildEnv {
    /// The allow-list plus `executor_allowed`.
    pub(crate) fn new(executor_allowed: &'static [&'static str]) -> Self {
        Self {
            executor_allowed,
            ..Self::default()
        }
    }

    fn refuse_withheld(&self, field: &'static str, name: &str) -> Result<()> {
        if self.withheld.iter().any(|w| w == name) {
            return Err(Error::invalid_config(
                field,
                format!("{name} holds a secret of hygiene's (the balancer's password): it is never given to a maintenance; remove it"),
            ));
        }
        Ok(())
    }

    /// Passes hygiene's own `name` through, when it is set.
    pub(crate) fn pass(&mut self, field: &'static str, name: &str) -> Result<()> {
        check_name(field, name)?;
        self.refuse_withheld(field, name)?;
        self.pass.push(name.to_owned());
        Ok(())
    }

    /// Sets `name` to `value`.
    pub(crate) fn set(&mut self, field: &'static str, name: &str, value: &str) -> Result<()> {
        check_name(field, name)?;
        self.refuse_withheld(field, name)?;
        if value.contains('\0') {
            return Err(Error::invalid_config(
                field,
                format!("the value of {name} holds a NUL byte; remove it"),
            ));
        }
        self.set.retain(|(k, _)| k != name);
        self.set.push((name.to_owned(), value.to_owned()));
        Ok(())
    }

    /// Never gives `name` to a child, even when allowed or named.
    pub(crate) fn withhold(&mut self, field: &'static str, name: &str) -> Result<()> {
        if self.pass.iter().any(|p| p == name) || self.set.iter().any(|(k, _)| k == name) {
            return Err(Error::invalid_config(
                field,
                format!("{name} holds a secret of hygiene's (the balancer's password): it is never given to a maintenance; do not pass or set it"),
            ));
        }
        self.withheld.push(name.to_owned());
        Ok(())
    }

    fn allowed(&self, name: &str) -> bool {
        !self.withheld.iter().any(|w| w == name)
            && (ALLOWED.contains(&name)
                || ALLOWED_PREFIXES.iter().any(|p| name.starts_with(p))
                || self.executor_allowed.contains(&name)
                || self.pass.iter().any(|p| p == name))
    }

    /// What the child gets from hygiene's environment `from`, then the
    /// variables set by name.
    pub(crate) fn vars(
        &self,
        from: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Vec<(OsString, OsString)> {
        let mut out: Vec<(OsString, OsString)> = from
            .into_iter()
            .filter(|(k, _)| k.to_str().is_some_and(|k| self.allowed(k)))
            .filter(|(k, _)| !self.set.iter().any(|(s, _)| k.to_str() == Some(s)))
            .collect();
        out.extend(
            self.set
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
        out
    }

    /// Clears `cmd`'s environment and gives it this one.
    pub(crate) fn apply(&self, cmd: &mut Command) {
        cmd.env_clear().envs(self.vars(std::env::vars_os()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn names(v: &[(OsString, OsString)]) -> Vec<String> {
        v.iter()
            .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
            .collect()
    }

    #[test]
    fn only_the_allow_list_and_what_the_operator_names() {
        let mut e = ChildEnv::new(&["SSH_AUTH_SOCK"]);
        e.pass("pass_env", "DEPLOY_REGION").expect("pass");
        e.set("env", "MODE", "fast").expect("set");
        e.set("env", "TZ", "UTC").expect("set wins");
        e.withhold("password_env", "LC_NGINX_PASSWORD")
            .expect("withhold");
        let got = names(&e.vars(env(&[
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C"),
            ("TZ", "Europe/Paris"),
            ("SSH_AUTH_SOCK", "/tmp/agent"),
            ("DEPLOY_REGION", "eu"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("LC_NGINX_PASSWORD", "hunter2"),
            ("HYGIENE_STATE_DIR", "/var/lib/hygiene"),
        ])));
        assert_eq!(
            got,
            [
                "PATH=/usr/bin",
                "HOME=/root",
                "LANG=C.UTF-8",
                "LC_ALL=C",
                "SSH_AUTH_SOCK=/tmp/agent",
                "DEPLOY_REGION=eu",
                "MODE=fast",
                "TZ=UTC"
            ]
        );
    }

    #[test]
    fn a_withheld_secret_cannot_be_passed_or_set() {
        let mut e = ChildEnv::default();
        e.withhold("password_env", "NGINX_PASSWORD")
            .expect("withhold");
        for r in [
            e.clone().pass("pass_env", "NGINX_PASSWORD"),
            e.clone().set("env", "NGINX_PASSWORD", "x"),
        ] {
            let msg = r.expect_err("refused").to_string();
            assert!(
                msg.contains("NGINX_PASSWORD") && msg.contains("never"),
                "{msg}"
            );
        }
        let mut e = ChildEnv::default();
        e.pass("pass_env", "NGINX_PASSWORD").expect("pass");
        assert!(e.withhold("password_env", "NGINX_PASSWORD").is_err());
    }

    #[test]
    fn names_are_checked() {
        let mut e = ChildEnv::default();
        for bad in [
            "",
            "1X",
            "A=B",
            "A B",
            "HYGIENE_TARGET_ID",
            "HYGIENE_EXEC_DIR",
        ] {
            assert!(e.pass("pass_env", bad).is_err(), "{bad:?}");
            assert!(e.set("env", bad, "v").is_err(), "{bad:?}");
        }
        assert!(e.set("env", "A", "a\0b").is_err());
    }
}
