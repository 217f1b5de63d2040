//! A Prometheus instant query as a gate (kured's `--prometheus-url` with
//! its alert filter, Argo Rollouts' Prometheus analysis): go when the
//! result is **empty** (no firing alert, no series over a threshold) or
//! **true** (a scalar 1, as `scalar(x) < bool 0.01` gives).

use async_trait::async_trait;
use hygiene_core::{Error, Gate, GateCheck, GateVerdict, Result};
use reqwest::Url;
use serde::Deserialize;

use crate::client::{check_name, client, parse_url, shown, status_error, transport};

/// How many of the series that hold the rollout its no names.
const NAMED_SERIES: usize = 3;

/// A gate asking Prometheus's instant query API (`GET /api/v1/query`).
///
/// - A **vector** result: go when it is empty; each sample is a reason to
///   wait (`ALERTS{alertstate="firing",service="web"}`: any firing alert
///   holds the rollout; `sum(rate(http_errors_total[5m])) > 1`: an error
///   rate over 1/s does).
/// - A **scalar** result: go when it is 1 ("true"), a no otherwise.
/// - A range (matrix) or string result, an error status, or an answer that
///   is not Prometheus's: the gate cannot be asked (a no as well; fix the
///   query).
#[derive(Debug, Clone)]
pub struct PrometheusGate {
    name: String,
    api: Url,
    query: String,
    client: reqwest::Client,
}

impl PrometheusGate {
    /// A gate named `name` on the Prometheus at `base` (`http://prometheus:9090`;
    /// a path prefix is kept) asking `query`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad name or URL, or an empty query.
    pub fn new(name: impl Into<String>, base: &str, query: impl Into<String>) -> Result<Self> {
        let name = name.into();
        check_name(&name)?;
        let query = query.into();
        if query.trim().is_empty() {
            return Err(Error::invalid_config(
                "gate.query",
                "the PromQL query is empty: give one whose result is empty (or a scalar 1) when the rollout may go on",
            ));
        }
        let mut api = parse_url("gate.prometheus", base)?;
        let path = format!("{}/api/v1/query", api.path().trim_end_matches('/'));
        api.set_path(&path);
        api.set_query(None);
        Ok(Self {
            name,
            api,
            query,
            client: client("gate.prometheus")?,
        })
    }

    /// The query asked.
    pub fn query(&self) -> &str {
        &self.query
    }
}

#[derive(Debug, Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Vector(Vec<Sample>),
    Scalar((f64, String)),
    // The value is never read: a range or a string is the wrong query.
    Matrix(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

#[derive(Debug, Deserialize)]
struct Sample {
    #[serde(default)]
    metric: std::collections::BTreeMap<String, String>,
    value: (f64, String),
}

fn series(s: &Sample) -> String {
    let name = s.metric.get("__name__").cloned().unwrap_or_default();
    let labels: Vec<String> = s
        .metric
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("{name}{{{}}} = {}", labels.join(","), s.value.1)
}

/// The verdict of a parsed answer.
fn judge(location: &str, query: &str, a: Answer) -> Result<GateVerdict> {
    if a.status != "success" {
        return Err(Error::rejected(
            location,
            format!(
                "query {query:?} failed: {}: {}",
                a.error_type.as_deref().unwrap_or("error"),
                a.error.as_deref().unwrap_or("no reason given")
            ),
        ));
    }
    match a.data {
        Some(Data::Vector(v)) if v.is_empty() => Ok(GateVerdict::Go),
        Some(Data::Vector(v)) => {
            let mut named: Vec<String> = v.iter().take(NAMED_SERIES).map(series).collect();
            if v.len() > NAMED_SERIES {
                named.push(format!("and {} more", v.len() - NAMED_SERIES));
            }
            Ok(GateVerdict::Hold(format!(
                "{query} returned {} series: {}",
                v.len(),
                named.join("; ")
            )))
        }
        Some(Data::Scalar((_, value))) => match value.parse::<f64>() {
            Ok(1.0) => Ok(GateVerdict::Go),
            _ => Ok(GateVerdict::Hold(format!("{query} = {value}, not true (1)"))),
        },
        Some(Data::Matrix(_)) | Some(Data::String(_)) | None => Err(Error::protocol(
            location,
            format!("query {query:?} returned no instant vector or scalar: write an instant query (no range selector at the top)"),
        )),
    }
}

#[async_trait]
impl Gate for PrometheusGate {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn check(&self, _at: &GateCheck) -> Result<GateVerdict> {
        let location = format!("gate {} ({})", self.name, shown(&self.api));
        let r = self
            .client
            .get(self.api.clone())
            .query(&[("query", self.query.as_str())])
            .send()
            .await
            .map_err(|e| transport(&location, e))?;
        let status = r.status();
        let body = r.text().await.map_err(|e| transport(&location, e))?;
        // Prometheus answers a bad query with 400 and its JSON error.
        if !status.is_success() && !matches!(status.as_u16(), 400 | 422) {
            return Err(status_error(&location, status, &body));
        }
        let answer: Answer = serde_json::from_str(&body).map_err(|e| {
            Error::protocol(
                &location,
                format!(
                    "not a Prometheus answer ({e}): {}",
                    hygiene_core::tail(&body, 200)
                ),
            )
        })?;
        judge(&location, &self.query, answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(json: &str) -> Answer {
        serde_json::from_str(json).expect("answer")
    }

    #[test]
    fn empty_vector_is_go_and_each_series_is_a_reason_to_wait() {
        let go = judge(
            "p",
            "q",
            answer(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#),
        );
        assert_eq!(go.expect("judged"), GateVerdict::Go);
        let held = judge(
            "p",
            "ALERTS",
            answer(
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"ALERTS","alertname":"HighErrors","alertstate":"firing"},"value":[1700000000.1,"1"]}]}}"#,
            ),
        );
        match held.expect("judged") {
            GateVerdict::Hold(why) => {
                assert!(
                    why.contains(r#"ALERTS{alertname="HighErrors",alertstate="firing"} = 1"#),
                    "{why}"
                );
            }
            GateVerdict::Go => panic!("a firing alert let the rollout go"),
        }
    }

    #[test]
    fn a_scalar_is_go_only_when_true() {
        let s = |v: &str| {
            judge(
                "p",
                "q",
                answer(&format!(r#"{{"status":"success","data":{{"resultType":"scalar","result":[1.5,"{v}"]}}}}"#)),
            )
            .expect("judged")
        };
        assert_eq!(s("1"), GateVerdict::Go);
        assert!(matches!(s("0"), GateVerdict::Hold(_)));
        assert!(matches!(s("NaN"), GateVerdict::Hold(_)));
    }

    #[test]
    fn errors_and_range_results_cannot_be_asked() {
        let e = judge(
            "p",
            "q",
            answer(r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#),
        );
        assert!(
            matches!(e, Err(Error::Rejected { message, .. }) if message.contains("parse error"))
        );
        let m = judge(
            "p",
            "q",
            answer(r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#),
        );
        assert!(matches!(m, Err(Error::Protocol { .. })));
    }

    #[test]
    fn a_bad_url_or_an_empty_query_is_refused() {
        assert!(PrometheusGate::new("p", "ftp://x", "up").is_err());
        assert!(PrometheusGate::new("p", "http://127.0.0.1:9090", " ").is_err());
        let g = PrometheusGate::new("p", "http://127.0.0.1:9090/prom/", "up").expect("gate");
        assert_eq!(g.api.as_str(), "http://127.0.0.1:9090/prom/api/v1/query");
    }
}
