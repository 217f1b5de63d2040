//! An HTTP URL as a gate: a 2xx answer is go.

use async_trait::async_trait;
use hygiene_core::{Gate, GateCheck, GateVerdict, Result};
use reqwest::Url;

use crate::client::{check_name, client, parse_url, shown, transport};

/// A gate that GETs a URL: any 2xx is go; any other status is a no with
/// the status and the end of the body; a URL that cannot be reached cannot
/// be asked (a no as well). The request carries the check in its headers:
/// `X-Hygiene-Run-Id`, `X-Hygiene-Gate-When` (`before` / `after`) and
/// `X-Hygiene-Batch`.
#[derive(Debug, Clone)]
pub struct HttpGate {
    name: String,
    url: Url,
    client: reqwest::Client,
}

impl HttpGate {
    /// A gate named `name` on `url` (`http` or `https`).
    ///
    /// # Errors
    /// [`hygiene_core::Error::InvalidConfig`] for a bad name or URL.
    pub fn new(name: impl Into<String>, url: &str) -> Result<Self> {
        let name = name.into();
        check_name(&name)?;
        Ok(Self {
            name,
            url: parse_url("gate.url", url)?,
            client: client("gate.url")?,
        })
    }
}

#[async_trait]
impl Gate for HttpGate {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn check(&self, at: &GateCheck) -> Result<GateVerdict> {
        let location = format!("gate {} ({})", self.name, shown(&self.url));
        let r = self
            .client
            .get(self.url.clone())
            .header("X-Hygiene-Run-Id", &at.run_id)
            .header("X-Hygiene-Gate-When", at.when.to_string())
            .header("X-Hygiene-Batch", at.batch.to_string())
            .send()
            .await
            .map_err(|e| transport(&location, e))?;
        let status = r.status();
        if status.is_success() {
            return Ok(GateVerdict::Go);
        }
        let body = r.text().await.unwrap_or_default();
        let said = hygiene_core::tail(body.trim(), 200);
        Ok(GateVerdict::Hold(format!(
            "GET {} answered {status}{}",
            shown(&self.url),
            if said.is_empty() {
                String::new()
            } else {
                format!(": {said}")
            }
        )))
    }
}
