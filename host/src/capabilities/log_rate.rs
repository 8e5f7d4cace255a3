//! How many lines an agent may write to the node's log (`[limits] log_lines_per_second`,
//! node default `[defaults] log_lines_per_second`).
//!
//! An agent's `runtime.log` calls and the lines of its stdout and stderr go into the node's
//! log, which every agent and the node share; unbounded, one agent can fill the disk and
//! bury everything else. Each line takes a token from one bucket per agent that holds one
//! second's worth and refills at the rate; a line without a token is dropped (the agent is
//! not told: logging cannot fail in WIT or for stdout) and counted as `limit="log_rate"`.
//! The first drop, then at most one a second, is noted in the log with how many lines were
//! dropped since the previous note.

use std::sync::Arc;

use super::bucket::TokenBucket;
use crate::log_sample::LogSample;
use crate::telemetry::AgentMetrics;

/// The log-line budget of one agent, shared by `runtime.log`, stdout and stderr.
pub struct LogRate {
    bucket: TokenBucket,
    agent: Arc<str>,
    metrics: Arc<AgentMetrics>,
    notes: LogSample,
}

impl LogRate {
    /// A full bucket: an agent may write one second's worth of lines at once.
    pub fn new(per_second: u32, agent: &str, metrics: Arc<AgentMetrics>) -> LogRate {
        LogRate {
            bucket: TokenBucket::new(per_second),
            agent: Arc::from(agent),
            metrics,
            notes: LogSample::new(),
        }
    }

    /// The agent's name, as its lines are tagged.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// Whether the agent may write one more line now. A line over the rate is counted and
    /// must be dropped; the first drop, then at most one a second, is noted in the log.
    pub fn admit(&self) -> bool {
        if self.bucket.try_take() {
            return true;
        }
        self.metrics.limits.log_rate.inc();
        if let Some(unnoted) = self.notes.sample() {
            tracing::warn!(
                agent = %self.agent,
                "log lines dropped: agent '{}' writes more than {} lines per second ([limits] log_lines_per_second); {} dropped since the previous note, {} in all — log less, or raise the limit in its manifest",
                self.agent,
                self.bucket.per_second(),
                unnoted + 1,
                self.metrics.limits.log_rate.get()
            );
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: u32) -> LogRate {
        let metrics = crate::telemetry::Metrics::new().for_agent("a", "default");
        LogRate::new(per_second, "a", metrics)
    }

    #[test]
    fn lines_over_the_rate_are_dropped_counted_and_noted_once_a_second() {
        let r = rate(5);
        let mut admitted = 0;
        let log = crate::telemetry::fields::log_of(|| {
            admitted = (0..1_000).filter(|_| r.admit()).count();
        });
        assert!((5..=6).contains(&admitted), "{admitted}");
        assert_eq!(
            r.metrics.limits.log_rate.get(),
            1_000 - admitted as u64,
            "every dropped line is counted"
        );
        assert_eq!(r.metrics.limits.counts().log_rate, 1_000 - admitted as u64);
        let notes: Vec<&str> = log.lines().collect();
        assert!(
            (1..=2).contains(&notes.len()),
            "the first drop at once, then at most one a second: {log}"
        );
        assert!(
            notes[0].contains("log lines dropped: agent 'a' writes more than 5 lines per second ([limits] log_lines_per_second); 1 dropped since the previous note"),
            "{log}"
        );
    }
}
