//! A webhook notifier: each notification POSTed as JSON, in hygiene's own
//! shape or as a Slack-compatible body (`{"text": …}`, which Slack,
//! Mattermost and Rocket.Chat incoming webhooks take).

use async_trait::async_trait;
use hygiene_core::{Notification, Notifier, Result};
use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::client::{client, origin, parse_url, status_error, transport};

/// The body a webhook gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The [`Notification`] as JSON (its `event` tag says which), with its
    /// one-line `text` added.
    #[default]
    Json,
    /// `{"text": "…"}`: an incoming webhook of Slack (or a compatible chat).
    Slack,
}

/// POSTs notifications to a URL. A 2xx answer is delivered; 429 and 5xx
/// are retried by the engine; any other status is given up.
#[derive(Debug, Clone)]
pub struct WebhookNotifier {
    url: Url,
    format: WebhookFormat,
    client: reqwest::Client,
}

impl WebhookNotifier {
    /// A notifier posting to `url` in `format`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a URL that is not `http(s)`.
    pub fn new(url: &str, format: WebhookFormat) -> Result<Self> {
        Ok(Self {
            url: parse_url("notify.url", url)?,
            format,
            client: client("notify.url")?,
        })
    }

    /// The body of `n` in this notifier's format.
    pub fn body(&self, n: &Notification) -> serde_json::Value {
        match self.format {
            WebhookFormat::Slack => serde_json::json!({ "text": n.text() }),
            WebhookFormat::Json => {
                let mut v = serde_json::to_value(n).unwrap_or_else(
                    |e| serde_json::json!({ "error": format!("notification serialization: {e}") }),
                );
                if let Some(o) = v.as_object_mut() {
                    o.insert("text".into(), n.text().into());
                }
                v
            }
        }
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
    /// The URL's origin only: a webhook's path is its secret.
    fn name(&self) -> String {
        format!("webhook {}", origin(&self.url))
    }

    async fn notify(&self, n: &Notification) -> Result<()> {
        let location = self.name();
        let r = self
            .client
            .post(self.url.clone())
            .json(&self.body(n))
            .send()
            .await
            .map_err(|e| transport(&location, e))?;
        let status = r.status();
        if status.is_success() {
            return Ok(());
        }
        let body = r.text().await.unwrap_or_default();
        Err(status_error(&location, status, &body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hygiene_core::Error;

    #[test]
    fn slack_gets_text_and_json_gets_the_notification_with_its_text() {
        let n = Notification::of_report(
            &serde_json::from_value(serde_json::json!({
                "run_id": "r1", "started_at": "", "outcome": {"kind": "completed"},
                "balancer": "b", "executor": "e",
                "config": {}, "duration_ms": 1, "batches": 0, "targets": [],
                "balancer_calls": 0, "executor_calls": 0
            }))
            .expect("report"),
        );
        let slack = WebhookNotifier::new(
            "https://hooks.example/services/T/B/secret",
            WebhookFormat::Slack,
        )
        .expect("notifier");
        let body = slack.body(&n);
        assert!(body["text"]
            .as_str()
            .expect("text")
            .contains("rollout r1 completed"));
        assert_eq!(body.as_object().expect("object").len(), 1);
        assert!(!slack.name().contains("secret"), "{}", slack.name());
        let json =
            WebhookNotifier::new("http://127.0.0.1:1/hook", WebhookFormat::Json).expect("notifier");
        let body = json.body(&n);
        assert_eq!(body["event"], "finished");
        assert_eq!(body["run_id"], "r1");
        assert!(body["text"].is_string());
    }

    #[test]
    fn only_http_urls() {
        assert!(matches!(
            WebhookNotifier::new("file:///etc/passwd", WebhookFormat::Json),
            Err(Error::InvalidConfig { .. })
        ));
    }
}
