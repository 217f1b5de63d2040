//! `--set key.path=value` (and `HYGIENE_SET`): applied to the file's
//! table before it is parsed, and errors about an overridden key named
//! after the `--set`, not a line of the rewritten document.

use std::path::Path;

use crate::config::ConfigError;

/// Sets `key.path=value` in `table`: the value is read as a TOML value
/// (`2`, `"25%"`, `["a", "b"]`, `true`), else taken as a string.
pub(super) fn apply_set(table: &mut toml::Table, set: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| {
        ConfigError::flag(
            "--set",
            format!("{set:?}: {why}; write KEY=VALUE with a dotted key, e.g. --set balancer.haproxy.backends='[\"web\"]' or --set rollout.batch_size=2"),
        )
    };
    let (key, raw) = set.split_once('=').ok_or_else(|| bad("no `=`"))?;
    let parts: Vec<&str> = key.trim().split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("an empty key segment"));
    }
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let (last, path) = parts.split_last().ok_or_else(|| bad("no key"))?;
    let mut here = table;
    for p in path {
        let next = here
            .entry((*p).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        here = next
            .as_table_mut()
            .ok_or_else(|| bad(&format!("`{p}` is not a table")))?;
    }
    here.insert((*last).to_owned(), value);
    Ok(())
}

/// An error in a document rewritten by `--set`: its lines are not the
/// user's. An error under a key a `--set` gave names that `--set` (and
/// its key, not the deserializer's inner path); any other names the file
/// and the key, without a line.
pub(super) fn attribute_to_set(
    path: &Path,
    sets: &[(String, String)],
    e: ConfigError,
) -> ConfigError {
    let key = e.key.clone().unwrap_or_default();
    let by_set = sets.iter().rev().find(|(k, _)| {
        key == *k || key.starts_with(&format!("{k}.")) || k.starts_with(&format!("{key}."))
    });
    match by_set {
        // The value is not echoed: it may be a secret given by mistake.
        Some((k, _)) => ConfigError {
            place: "--set".into(),
            key: Some(k.clone()),
            message: e.message,
            snippet: None,
        },
        None => ConfigError {
            place: path.display().to_string(),
            key: e.key,
            message: e.message,
            snippet: None,
        },
    }
}
