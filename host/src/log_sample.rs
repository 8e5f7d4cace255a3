//! Logging a sample of an event that can repeat without bound: an agent's denied calls or
//! log lines, its refused snapshots or misaddressed messages, a subscriber's drops.
//!
//! One message can make a million denied calls, or write a million log lines; a log line for
//! each (35–46 MB for one message, in a review) floods the node's log and disk and buries
//! everything else. The metrics count every occurrence; the log gets a sample: the first at
//! once, then at most one line per interval, each saying how many were not logged since the
//! previous one, so the log still shows when it started, that it goes on, and how much.
//! A leaf module: the bus, the agents and the capabilities all use it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a sampled event may be logged, unless it says otherwise.
pub const LOG_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Decides which occurrences of one event (of one agent) are logged. Lock-free: it sits on
/// the path of every denied call.
#[derive(Debug)]
pub struct LogSample {
    start: Instant,
    interval_ms: u64,
    /// Milliseconds after `start` from which the next occurrence is logged.
    next_ms: AtomicU64,
    /// Occurrences not logged since the last one logged.
    skipped: AtomicU64,
}

impl Default for LogSample {
    fn default() -> Self {
        Self::new()
    }
}

impl LogSample {
    /// At most one line per [`LOG_SAMPLE_INTERVAL`].
    pub fn new() -> LogSample {
        LogSample::every(LOG_SAMPLE_INTERVAL)
    }

    /// At most one line per `interval`.
    pub fn every(interval: Duration) -> LogSample {
        LogSample {
            start: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// Whether this occurrence may be logged, when how many were skipped does not matter.
    pub fn due(&self) -> bool {
        self.sample().is_some()
    }

    /// Whether to log this occurrence: `Some(n)` to log it, saying that `n` occurrences
    /// since the previously logged one were not; `None` to skip it (it is counted into the
    /// next logged one's `n`).
    pub fn sample(&self) -> Option<u64> {
        self.sample_at(self.start.elapsed())
    }

    fn sample_at(&self, since_start: Duration) -> Option<u64> {
        let now_ms = u64::try_from(since_start.as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.skipped.swap(0, Ordering::Relaxed));
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_first_is_logged_at_once_then_one_a_second_counting_the_rest() {
        let s = LogSample::new();
        assert_eq!(s.sample_at(ms(0)), Some(0), "the first at once");
        let skipped = (0..1_000).filter(|_| s.sample_at(ms(10)).is_some()).count();
        assert_eq!(skipped, 0, "nothing more within the second");
        assert_eq!(s.sample_at(ms(999)), None);
        assert_eq!(
            s.sample_at(ms(1_000)),
            Some(1_001),
            "a second later, saying how many were not logged"
        );
        assert_eq!(s.sample_at(ms(1_500)), None);
        assert_eq!(
            s.sample_at(ms(60_000)),
            Some(1),
            "after a quiet minute, at once"
        );
        assert_eq!(s.sample_at(ms(60_001)), None);
    }

    #[test]
    fn a_longer_interval_logs_the_first_then_once_per_interval() {
        let s = LogSample::every(Duration::from_secs(60));
        assert_eq!(s.sample_at(ms(0)), Some(0));
        assert_eq!(s.sample_at(ms(1_000)), None);
        assert_eq!(s.sample_at(ms(59_000)), None);
        assert_eq!(s.sample_at(ms(60_000)), Some(2));
        assert_eq!(s.sample_at(ms(61_000)), None);
    }

    #[test]
    fn threads_racing_log_one_line_and_lose_no_count() {
        let s = std::sync::Arc::new(LogSample::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    (0..10_000)
                        .filter_map(|_| s.sample_at(ms(5)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let logged: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(logged, vec![0], "one line for the first");
        assert_eq!(s.sample_at(ms(1_005)), Some(39_999), "every other counted");
    }
}
