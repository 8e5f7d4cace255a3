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

use std::sync::Arc;

use super::bucket::TokenBucket;
use crate::bindings::WitError;
use crate::telemetry::AgentMetrics;

/// An agent's publish rate: a token bucket of one second's worth ([`TokenBucket`]).
pub struct PublishRate {
    bucket: TokenBucket,
    agent: Arc<str>,
    metrics: Arc<AgentMetrics>,
}

impl PublishRate {
    /// A full bucket: an agent may send one second's worth at once.
    pub fn new(per_second: u32, agent: &str, metrics: Arc<AgentMetrics>) -> PublishRate {
        PublishRate {
            bucket: TokenBucket::new(per_second),
            agent: Arc::from(agent),
            metrics,
        }
    }

    /// Takes one token, or refuses (logged, counted) with the error the agent receives.
    pub fn take(&self) -> Result<(), WitError> {
        if self.bucket.try_take() {
            return Ok(());
        }
        self.metrics.limits.publish_rate.inc();
        let why = format!(
            "agent '{}' sends more than {} messages per second ([limits] publish_per_second); this one was not sent — send fewer, or raise the limit in its manifest",
            self.agent, self.bucket.per_second()
        );
        // A flood refuses thousands: log the 1st, 2nd, 4th, 8th ... refusal.
        let refused = self.metrics.limits.publish_rate.get();
        if refused.is_power_of_two() {
            tracing::warn!(agent = %self.agent, "publish refused: {why} ({refused} refused so far)");
        }
        Err(WitError::QuotaExceeded(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: u32) -> PublishRate {
        let metrics = crate::telemetry::Metrics::new().for_agent("a", "default");
        PublishRate::new(per_second, "a", metrics)
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
