//! One agent's LLM budgets from its manifest's `[llm]`: requests per minute, tokens per
//! minute, tokens per call.
//!
//! The per-minute budgets are token buckets that refill continuously (a full minute's
//! allowance refills in a minute), so an agent cannot spend two minutes' worth at a minute
//! boundary. Token use is only known after a call, so a call may overdraw the tokens bucket;
//! the agent's next calls are then refused until it has refilled.

use std::sync::Mutex;
use std::time::Instant;

use crate::bindings::WitError;
use crate::manifest::LlmGrants;

struct Bucket {
    capacity: f64,
    level: f64,
    updated: Instant,
}

impl Bucket {
    fn new(per_minute: u64) -> Bucket {
        Bucket {
            capacity: per_minute as f64,
            level: per_minute as f64,
            updated: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let per_sec = self.capacity / 60.0;
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * per_sec).min(self.capacity);
        self.updated = now;
    }

    /// Seconds until the level is back to `need`.
    fn seconds_until(&self, need: f64) -> f64 {
        ((need - self.level) / (self.capacity / 60.0)).max(0.0)
    }
}

/// The budgets of one agent, shared by its instances.
pub struct Budget {
    agent: String,
    max_tokens_per_call: Option<u32>,
    requests: Option<Mutex<Bucket>>,
    tokens: Option<Mutex<Bucket>>,
}

impl Budget {
    pub fn new(agent: &str, grants: &LlmGrants) -> Budget {
        Budget {
            agent: agent.to_string(),
            max_tokens_per_call: grants.max_tokens_per_call,
            requests: grants
                .max_requests_per_minute
                .map(|n| Mutex::new(Bucket::new(u64::from(n)))),
            tokens: grants
                .max_tokens_per_minute
                .map(|n| Mutex::new(Bucket::new(n))),
        }
    }

    /// Admits one call that asked for at most `max_tokens` completion tokens; returns the
    /// completion limit to send (the per-call cap when the agent named none). Takes one
    /// request from the requests budget.
    pub fn admit(&self, max_tokens: Option<u32>) -> Result<Option<u32>, WitError> {
        let limit = match (max_tokens, self.max_tokens_per_call) {
            (Some(asked), Some(cap)) if asked > cap => {
                return Err(WitError::QuotaExceeded(format!(
                    "agent '{}' asked for up to {asked} tokens in one call, more than its [llm] max_tokens_per_call of {cap}: ask for fewer (options max-tokens) or raise max_tokens_per_call in its manifest",
                    self.agent
                )))
            }
            (Some(asked), _) => Some(asked),
            (None, cap) => cap,
        };
        let now = Instant::now();
        if let Some(tokens) = &self.tokens {
            let mut b = tokens.lock().expect("budget lock");
            b.refill(now);
            if b.level < 1.0 {
                return Err(WitError::QuotaExceeded(format!(
                    "agent '{}' has spent its [llm] max_tokens_per_minute of {}; calls are possible again in {:.1} s (or raise max_tokens_per_minute in its manifest)",
                    self.agent,
                    b.capacity,
                    b.seconds_until(1.0)
                )));
            }
        }
        if let Some(requests) = &self.requests {
            let mut b = requests.lock().expect("budget lock");
            b.refill(now);
            if b.level < 1.0 {
                return Err(WitError::QuotaExceeded(format!(
                    "agent '{}' has made its [llm] max_requests_per_minute of {} calls; the next is possible in {:.1} s (or raise max_requests_per_minute in its manifest)",
                    self.agent,
                    b.capacity,
                    b.seconds_until(1.0)
                )));
            }
            b.level -= 1.0;
        }
        Ok(limit)
    }

    /// Charges the tokens a finished call used.
    pub fn charge(&self, tokens: u64) {
        if let Some(bucket) = &self.tokens {
            let mut b = bucket.lock().expect("budget lock");
            b.refill(Instant::now());
            b.level -= tokens as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(tpm: Option<u64>, rpm: Option<u32>, per_call: Option<u32>) -> LlmGrants {
        LlmGrants {
            models: vec!["*".into()],
            max_tokens_per_minute: tpm,
            max_requests_per_minute: rpm,
            max_tokens_per_call: per_call,
        }
    }

    fn quota(e: WitError) -> String {
        match e {
            WitError::QuotaExceeded(why) => why,
            other => panic!("expected quota-exceeded, got {other:?}"),
        }
    }

    #[test]
    fn no_limits_admit_everything() {
        let b = Budget::new("a", &grants(None, None, None));
        for _ in 0..1000 {
            assert_eq!(b.admit(None).unwrap(), None);
            b.charge(1_000_000);
        }
    }

    #[test]
    fn the_per_call_cap_limits_and_fills_in_max_tokens() {
        let b = Budget::new("a", &grants(None, None, Some(100)));
        assert_eq!(b.admit(None).unwrap(), Some(100));
        assert_eq!(b.admit(Some(50)).unwrap(), Some(50));
        let why = quota(b.admit(Some(101)).unwrap_err());
        assert!(why.contains("[llm] max_tokens_per_call of 100"), "{why}");
    }

    #[test]
    fn requests_per_minute_run_out_and_name_the_field() {
        let b = Budget::new("a", &grants(None, Some(3), None));
        for _ in 0..3 {
            b.admit(None).unwrap();
        }
        let why = quota(b.admit(None).unwrap_err());
        assert!(why.contains("[llm] max_requests_per_minute of 3"), "{why}");
    }

    #[test]
    fn tokens_per_minute_are_charged_after_the_call() {
        let b = Budget::new("a", &grants(Some(100), None, None));
        b.admit(None).unwrap();
        b.charge(150);
        let why = quota(b.admit(None).unwrap_err());
        assert!(why.contains("[llm] max_tokens_per_minute of 100"), "{why}");
    }
}
