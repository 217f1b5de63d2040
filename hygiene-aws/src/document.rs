//! The SSM document preflight: `DescribeDocument` once, so a misspelt
//! parameter, a missing required one or a document for another platform
//! fails before the first drain instead of in SendCommand after it.

use std::collections::HashMap;

use hygiene_core::{Error, Result};

use crate::error::{call, Subject};
use crate::ssm::SsmSettings;

/// What the preflight needs to know of a document.
#[derive(Debug, Clone, Default)]
pub(crate) struct DocumentInfo {
    /// Parameter names, and whether each has a default value.
    pub(crate) parameters: Vec<(String, bool)>,
    /// `PlatformTypes` (`Linux`, `Windows`, `MacOS`); empty when unknown.
    pub(crate) platforms: Vec<String>,
}

/// DescribeDocument of the settings' document (and version).
pub(crate) async fn describe(
    client: &aws_sdk_ssm::Client,
    s: &SsmSettings,
) -> Result<DocumentInfo> {
    let out = call(
        "ssm",
        "DescribeDocument",
        || Subject::default().with_document(&s.document),
        client
            .describe_document()
            .name(&s.document)
            .set_document_version(s.document_version.clone())
            .send(),
    )
    .await?;
    let Some(d) = out.document() else {
        return Err(Error::protocol(
            "ssm DescribeDocument",
            format!("no description of document {}", s.document),
        ));
    };
    Ok(DocumentInfo {
        parameters: d
            .parameters()
            .iter()
            .filter_map(|p| Some((p.name()?.to_owned(), p.default_value().is_some())))
            .collect(),
        platforms: d
            .platform_types()
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect(),
    })
}

/// Every parameter SendCommand will send exists in the document, and
/// every parameter without a default is given.
pub(crate) fn check_parameters(s: &SsmSettings, doc: &DocumentInfo) -> Result<()> {
    let mut sent: HashMap<&str, &'static str> = s
        .parameters
        .keys()
        .map(|k| (k.as_str(), "with_parameter"))
        .collect();
    if s.execution_timeout.is_some() {
        sent.entry("executionTimeout")
            .or_insert("with_execution_timeout");
    }
    if let Some(name) = &s.traceparent_parameter {
        sent.entry(name.as_str())
            .or_insert("with_traceparent_parameter");
    }
    let takes = || {
        let mut names: Vec<&str> = doc.parameters.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    let mut unknown: Vec<(&str, &str)> = sent
        .iter()
        .filter(|(name, _)| !doc.parameters.iter().any(|(n, _)| n == *name))
        .map(|(n, how)| (*n, *how))
        .collect();
    unknown.sort_unstable();
    if let Some((name, how)) = unknown.first() {
        return Err(Error::invalid_config(
            "parameters",
            format!(
                "SSM document {} has no parameter {name:?} (set by {how}); it takes: {}. Fix the name, or pick the document version that has it",
                s.document,
                takes()
            ),
        ));
    }
    let mut missing: Vec<&str> = doc
        .parameters
        .iter()
        .filter(|(n, has_default)| !has_default && !sent.contains_key(n.as_str()))
        .map(|(n, _)| n.as_str())
        .collect();
    missing.sort_unstable();
    if !missing.is_empty() {
        return Err(Error::invalid_config(
            "parameters",
            format!(
                "SSM document {} needs {} (no default value): give {} with with_parameter",
                s.document,
                missing.join(", "),
                if missing.len() == 1 { "it" } else { "them" }
            ),
        ));
    }
    Ok(())
}

/// Why the document cannot run on an instance of `platform`, if it cannot.
pub(crate) fn platform_mismatch(
    document: &str,
    doc: &DocumentInfo,
    instance: &str,
    platform: Option<&str>,
) -> Option<String> {
    let platform = platform?;
    if doc.platforms.is_empty()
        || doc
            .platforms
            .iter()
            .any(|p| p.eq_ignore_ascii_case(platform))
    {
        return None;
    }
    Some(format!(
        "SSM document {document} runs on {} only, and {instance} is {platform}: pick a document for its platform",
        doc.platforms.join(", ")
    ))
}
