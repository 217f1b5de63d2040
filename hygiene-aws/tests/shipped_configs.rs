//! Every shipped configuration (`examples/config/*.toml`) that runs an SSM
//! document sends only parameters that document has, and every one it
//! requires: checked by the executor's own preflight against the
//! document's real parameter list, recorded here from AWS's documentation
//! (moto has no AWS-managed documents to describe).

use std::path::Path;

use aws_sdk_ssm::config::retry::RetryConfig;
use aws_sdk_ssm::operation::describe_document::DescribeDocumentOutput;
use aws_sdk_ssm::types::{DocumentDescription, DocumentParameter, PlatformType};
use aws_sdk_ssm::Client;
use aws_smithy_mocks::{mock, mock_client, RuleMode};
use hygiene_aws::{PreflightCheck, SsmExecutor};
use hygiene_core::{Executor, Target, TargetId};

/// A document's parameters: (name, has a default value). A parameter
/// without a default must be given.
type Params = &'static [(&'static str, bool)];

/// The AWS-managed documents as AWS documents them.
///
/// - `AWS-RunPatchBaseline` ("SSM Command document for patching:
///   AWS-RunPatchBaseline", AWS Systems Manager User Guide, section
///   "AWS-RunPatchBaseline parameters"): `Operation` (required, `Scan` |
///   `Install`), `SnapshotId`, `InstallOverrideList`, `RebootOption`
///   (`RebootIfNeeded` | `NoReboot`, default `RebootIfNeeded`),
///   `BaselineOverride`. No `executionTimeout`.
/// - `AWS-RunShellScript` (the document's content, schema 1.2):
///   `commands` (required), `workingDirectory` (default ""),
///   `executionTimeout` (default "3600").
fn recorded(document: &str) -> Option<Params> {
    match document {
        "AWS-RunPatchBaseline" => Some(&[
            ("Operation", false),
            ("SnapshotId", true),
            ("InstallOverrideList", true),
            ("RebootOption", true),
            ("BaselineOverride", true),
        ]),
        "AWS-RunShellScript" => Some(&[
            ("commands", false),
            ("workingDirectory", true),
            ("executionTimeout", true),
        ]),
        _ => None,
    }
}

fn ssm_client(params: Params) -> Client {
    let document = mock!(Client::describe_document).then_compute_output(move |req| {
        let mut d = DocumentDescription::builder()
            .name(req.name().unwrap_or_default())
            .platform_types(PlatformType::Linux);
        for (name, default) in params {
            d = d.parameters(
                DocumentParameter::builder()
                    .name(*name)
                    .set_default_value(default.then(String::new))
                    .build(),
            );
        }
        DescribeDocumentOutput::builder()
            .document(d.build())
            .build()
    });
    mock_client!(aws_sdk_ssm, RuleMode::MatchAny, &[&document], |c| c
        .retry_config(RetryConfig::disabled()))
}

/// A parameter value of the file: a string or a list of strings.
fn values(v: &toml::Value) -> Vec<String> {
    match v {
        toml::Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .collect(),
        toml::Value::String(s) => vec![s.clone()],
        other => vec![other.to_string()],
    }
}

/// The executor the `hygiene` command builds from `[executor.ssm]`, as far
/// as the parameters SendCommand sends go: `parameters` and, for
/// `execution_timeout`, the document's `executionTimeout`.
async fn check(name: &str, ssm: &toml::Table) -> Result<(), String> {
    let document = ssm
        .get("document")
        .and_then(toml::Value::as_str)
        .ok_or_else(|| format!("{name}: [executor.ssm] has no document"))?;
    let params = recorded(document).ok_or_else(|| {
        format!("{name}: document {document} has no recorded parameter list: record it in this test from AWS's documentation")
    })?;
    let mut b = SsmExecutor::builder(document)
        .with_client(ssm_client(params))
        .with_preflight(PreflightCheck::DocumentOnly);
    if let Some(p) = ssm.get("parameters").and_then(toml::Value::as_table) {
        for (k, v) in p {
            b = b.with_parameter(k, values(v));
        }
    }
    if ssm.contains_key("execution_timeout") {
        b = b.with_execution_timeout(std::time::Duration::from_secs(3600));
    }
    let x = b.build().map_err(|e| format!("{name}: {e}"))?;
    let t = Target::new(TargetId::new("i-0abc").expect("id")).with_instance_id("i-0abc");
    x.preflight(&[t])
        .await
        .map(|_| ())
        .map_err(|e| format!("{name}: {e}"))
}

#[tokio::test]
async fn shipped_configs_send_only_parameters_their_document_has() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config");
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/config")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "no shipped configuration in {dir:?}");
    let mut problems = Vec::new();
    for path in entries {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path).expect("readable");
        let file: toml::Table = text.parse().expect("toml");
        let Some(ssm) = file
            .get("executor")
            .and_then(|x| x.get("ssm"))
            .and_then(toml::Value::as_table)
        else {
            continue;
        };
        checked += 1;
        if let Err(e) = check(&name, ssm).await {
            problems.push(e);
        }
    }
    assert!(checked > 0, "no shipped configuration runs SSM");
    assert!(problems.is_empty(), "{problems:#?}");
}

#[tokio::test]
async fn the_check_refuses_a_parameter_the_document_lacks() {
    let mut ssm = toml::Table::new();
    ssm.insert("document".into(), "AWS-RunPatchBaseline".into());
    ssm.insert("execution_timeout".into(), "1h".into());
    let mut p = toml::Table::new();
    p.insert("Operation".into(), "Install".into());
    ssm.insert("parameters".into(), p.into());
    let e = check("inline", &ssm).await.expect_err("refused");
    assert!(e.contains("executionTimeout"), "{e}");
    // And a required one left out.
    ssm.remove("execution_timeout");
    ssm.insert("parameters".into(), toml::Table::new().into());
    let e = check("inline", &ssm).await.expect_err("refused");
    assert!(e.contains("Operation"), "{e}");
}
