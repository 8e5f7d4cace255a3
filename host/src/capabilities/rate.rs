//! The publish rate of one agent (`[limits] publish_per_second`, node default
//! `[defaults] publish_per_second`).
//!
//! Every message an agent originates — `publish`, `send`, each `request` and each request
//! of a `request-many` — takes a token from a bucket that holds one second's worth and
//! refills at the rate. One reply per handled message is free (the answer to a request is
//! paced by whoever sends the requests). Without a token the call returns `quota-exceeded`
//! at once rather than waiting: a wait would hold the agent's instance (and its mailbox)
//! hostage to its own flood, while an error tells the agent, bounds the bus, and lets a
//! well-behaved agent decide to back off. Refusals are logged and counted as
//! `limit="publish_rate"`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::bindings::WitError;
use crate::telemetry::AgentMetrics;

/// A token bucket of `per_second` tokens that refills at `per_second` tokens a second.
pub struct PublishRate {
    per_second: u32,
    bucket: Mutex<Bucket>,
    agent: Arc<str>,
    metrics: Arc<AgentMetrics>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl PublishRate {
    /// A full bucket: an agent may send one second's worth at once.
    pub fn new(per_second: u32, agent: &str, metrics: Arc<AgentMetrics>) -> PublishRate {
        PublishRate {
            per_second,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(per_second),
                refilled: Instant::now(),
            }),
            agent: Arc::from(agent),
            metrics,
        }
    }

    /// Takes one token, or refuses (logged, counted) with the error the agent receives.
    pub fn take(&self) -> Result<(), WitError> {
        if self.try_take_at(Instant::now()) {
            return Ok(());
        }
        self.metrics.limits.publish_rate.inc();
        let why = format!(
            "agent '{}' sends more than {} messages per second ([limits] publish_per_second); this one was not sent — send fewer, or raise the limit in its manifest",
            self.agent, self.per_second
        );
        // A flood refuses thousands: log the 1st, 2nd, 4th, 8th ... refusal.
        let refused = self.metrics.limits.publish_rate.get();
        if refused.is_power_of_two() {
            tracing::warn!(agent = %self.agent, "publish refused: {why} ({refused} refused so far)");
        }
        Err(WitError::QuotaExceeded(why))
    }

    fn try_take_at(&self, now: Instant) -> bool {
        let mut b = self.bucket.lock().expect("publish rate lock");
        let rate = f64::from(self.per_second);
        let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.refilled = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rate(per_second: u32) -> PublishRate {
        let metrics = crate::telemetry::Metrics::new().for_agent("a", "default");
        PublishRate::new(per_second, "a", metrics)
    }

    #[test]
    fn an_agent_may_send_one_seconds_worth_at_once_then_at_the_rate() {
        let r = rate(10);
        let start = Instant::now();
        let sent = (0..100).filter(|_| r.try_take_at(start)).count();
        assert_eq!(sent, 10, "the burst is one second's worth");
        assert!(
            !r.try_take_at(start + Duration::from_millis(50)),
            "half a token"
        );
        assert!(
            r.try_take_at(start + Duration::from_millis(100)),
            "one token after 0.1 s"
        );
        let later = start + Duration::from_secs(60);
        let sent = (0..100).filter(|_| r.try_take_at(later)).count();
        assert_eq!(
            sent, 10,
            "an idle minute refills to one second's worth, not more"
        );
    }

    #[test]
    fn a_refused_publish_says_which_limit_and_is_counted() {
        let r = rate(1);
        assert!(r.take().is_ok());
        match r.take() {
            Err(WitError::QuotaExceeded(why)) => {
                assert!(why.contains("more than 1 messages per second"), "{why}");
                assert!(why.contains("[limits] publish_per_second"), "{why}");
            }
            other => panic!("expected quota-exceeded, got {other:?}"),
        }
        assert_eq!(r.metrics.limits.publish_rate.get(), 1);
    }
}
