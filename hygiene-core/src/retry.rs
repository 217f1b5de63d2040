//! Retries of retryable errors: jittered exponential backoff through `backon`,
//! bounded in attempts and total delay.

use std::future::Future;

use backon::{ExponentialBuilder, Retryable};

use crate::config::RetryPolicy;
use crate::error::{Error, Result};

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .with_total_delay(Some(self.max_total))
    }
}

/// Calls `f` until it succeeds, fails with a non-retryable error, or the
/// policy's bounds are reached; `on_retry` hears of each retry before its
/// delay. Sleeps with `tokio::time`, so paused-time tests run instantly.
pub async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    f: F,
    on_retry: impl FnMut(&Error, std::time::Duration),
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    with_retries_when(policy, f, Error::is_retryable, on_retry).await
}

/// As [`with_retries`], retrying only the errors `when` accepts (a subset
/// of the retryable ones, for calls that are not safe to repeat).
pub async fn with_retries_when<T, F, Fut>(
    policy: &RetryPolicy,
    f: F,
    when: impl FnMut(&Error) -> bool,
    on_retry: impl FnMut(&Error, std::time::Duration),
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    f.retry(policy.backoff())
        .sleep(tokio::time::sleep)
        .when(when)
        .notify(on_retry)
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_retryable_then_succeeds() {
        let calls = AtomicUsize::new(0);
        let r = with_retries(
            &RetryPolicy::default(),
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(Error::unavailable("lb", "refused"))
                } else {
                    Ok(7)
                }
            },
            |_, _| {},
        )
        .await;
        assert_eq!(r.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_non_retryable() {
        let calls = AtomicUsize::new(0);
        let r: Result<()> = with_retries(
            &RetryPolicy::default(),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::target_not_found("x", None))
            },
            |_, _| {},
        )
        .await;
        assert!(matches!(r, Err(Error::NotFound { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_in_attempts_and_time() {
        let calls = AtomicUsize::new(0);
        let policy = RetryPolicy {
            max_retries: 3,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            max_total: Duration::from_secs(10),
        };
        let start = tokio::time::Instant::now();
        let r: Result<()> = with_retries(
            &policy,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::unavailable("lb", "refused"))
            },
            |_, _| {},
        )
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert!(start.elapsed() <= Duration::from_secs(1));
    }
}
