//! A client-side token bucket for the ELBv2 `Describe*` calls.
//!
//! ELBv2 throttles its API per account and Region with token buckets; the
//! bucket of the non-mutating (`Describe*`) actions holds 40 tokens and
//! refills at 10 tokens a second (ELB user guide, "Request throttling for
//! the ELB API"). A rollout shares that bucket with the console, other
//! tools and other rollouts, so by default it takes at most half of it: a
//! burst of 20 and 5 calls a second after that. A load balancer with 100
//! target groups then never sees `Throttling`, it just polls more slowly.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// The default burst: half of ELB's `Describe*` bucket (40).
pub(crate) const DEFAULT_BURST: u32 = 20;
/// The default refill: half of ELB's `Describe*` refill rate (10/s).
pub(crate) const DEFAULT_PER_SECOND: u32 = 5;

/// A token bucket on `tokio::time` (so paused-time tests pace too).
#[derive(Debug)]
pub(crate) struct TokenBucket {
    burst: f64,
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `per_second` (both ≥ 1).
    pub(crate) fn new(burst: u32, per_second: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            burst,
            per_second: f64::from(per_second.max(1)),
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits for one token. Callers queue on the mutex in order, so a
    /// waiting caller is never overtaken.
    pub(crate) async fn take(&self) {
        let mut state = self.state.lock().await;
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - *tokens) / self.per_second);
            tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                "pacing elbv2 describe call"
            );
            tokio::time::sleep(wait).await;
            *tokens = 1.0;
            *last = Instant::now();
        }
        *tokens -= 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_then_paces_at_the_refill_rate() {
        let b = TokenBucket::new(4, 2);
        let start = Instant::now();
        for _ in 0..4 {
            b.take().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..6 {
            b.take().await;
        }
        // Six more at two a second.
        let e = start.elapsed();
        assert!(
            e >= Duration::from_millis(2990) && e <= Duration::from_millis(3010),
            "{e:?}"
        );
        // A quiet spell refills the bucket, never beyond the burst.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let t = Instant::now();
        for _ in 0..4 {
            b.take().await;
        }
        assert_eq!(t.elapsed(), Duration::ZERO);
        b.take().await;
        assert!(
            t.elapsed() >= Duration::from_millis(490),
            "{:?}",
            t.elapsed()
        );
    }
}
