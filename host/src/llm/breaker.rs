//! The circuit breaker of one backend.
//!
//! While a backend is down, every call would wait for a connect timeout and retries; with
//! dozens of agents that is a pile of stuck handlers. After `failures` consecutive failed
//! attempts the breaker opens: calls are refused with `unavailable` at once (microseconds)
//! for `cooldown`. Then one call is let through as a probe (half-open); its success closes
//! the breaker, its failure opens it for another cool-down.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::metrics::BackendMetrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }

    fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Instant,
    probe_in_flight: bool,
    last_failure: String,
}

pub struct Breaker {
    backend: String,
    failures: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
    metrics: BackendMetrics,
}

/// Why the breaker refused a call: the text for the agent.
#[derive(Debug, Clone)]
pub struct Refused(pub String);

/// Leave to try the backend once. Report the outcome with [`Admission::success`] or
/// [`Admission::failure`]; dropping it unreported (the call was abandoned, e.g. timed out)
/// counts as a failure.
pub struct Admission<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Admission<'_> {
    /// The backend answered (even with "model not found": it is up).
    pub fn success(mut self) {
        self.reported = true;
        self.breaker.record(true, self.probe, "");
    }

    /// The backend failed (could not connect, timed out, busy, server error).
    pub fn failure(mut self, why: &str) {
        self.reported = true;
        self.breaker.record(false, self.probe, why);
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker
                .record(false, self.probe, "the call was abandoned (timed out)");
        }
    }
}

impl Breaker {
    pub fn new(backend: &str, failures: u32, cooldown: Duration, metrics: BackendMetrics) -> Self {
        metrics.breaker_state.set(BreakerState::Closed.gauge());
        Breaker {
            backend: backend.to_string(),
            failures: failures.max(1),
            cooldown,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                opened_at: Instant::now(),
                probe_in_flight: false,
                last_failure: String::new(),
            }),
            metrics,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.inner.lock().expect("breaker lock").state
    }

    /// Refuses at once while open (cool-down running) or while the half-open probe is
    /// out; lets the call queue otherwise. Takes no probe slot.
    pub fn check(&self) -> Result<(), Refused> {
        let inner = self.inner.lock().expect("breaker lock");
        match inner.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open if inner.opened_at.elapsed() >= self.cooldown => Ok(()),
            _ => Err(self.refusal(&inner)),
        }
    }

    /// Admits one attempt right before it goes to the backend; after the cool-down the
    /// first caller becomes the half-open probe and everyone else is refused until it ends.
    pub fn admit(&self) -> Result<Admission<'_>, Refused> {
        let mut inner = self.inner.lock().expect("breaker lock");
        let probe = match inner.state {
            BreakerState::Closed => false,
            BreakerState::Open if inner.opened_at.elapsed() >= self.cooldown => {
                self.enter(&mut inner, BreakerState::HalfOpen);
                tracing::info!(backend = %self.backend, "LLM backend '{}': circuit half-open, sending one probe call", self.backend);
                inner.probe_in_flight = true;
                true
            }
            BreakerState::HalfOpen if !inner.probe_in_flight => {
                inner.probe_in_flight = true;
                true
            }
            _ => return Err(self.refusal(&inner)),
        };
        Ok(Admission {
            breaker: self,
            probe,
            reported: false,
        })
    }

    fn refusal(&self, inner: &Inner) -> Refused {
        let left = self.cooldown.saturating_sub(inner.opened_at.elapsed());
        let when = if inner.state == BreakerState::HalfOpen || left.is_zero() {
            "a probe call is testing it now".to_string()
        } else {
            format!("it is tried again in {:.1} s", left.as_secs_f64())
        };
        Refused(format!(
            "LLM backend '{}' is failing (circuit breaker open after {} consecutive failures; last: {}); {when}",
            self.backend, self.failures, inner.last_failure
        ))
    }

    fn record(&self, ok: bool, probe: bool, why: &str) {
        let mut inner = self.inner.lock().expect("breaker lock");
        if probe {
            inner.probe_in_flight = false;
        }
        if ok {
            inner.consecutive_failures = 0;
            if inner.state != BreakerState::Closed {
                self.enter(&mut inner, BreakerState::Closed);
                tracing::info!(backend = %self.backend, "LLM backend '{}': circuit closed, the backend answers again", self.backend);
            }
            return;
        }
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        inner.last_failure = why.to_string();
        let reopen = probe && inner.state == BreakerState::HalfOpen;
        let trip =
            inner.state == BreakerState::Closed && inner.consecutive_failures >= self.failures;
        if reopen || trip {
            inner.opened_at = Instant::now();
            self.enter(&mut inner, BreakerState::Open);
            tracing::warn!(
                backend = %self.backend,
                "LLM backend '{}': circuit open after {} consecutive failures (last: {why}); calls get `unavailable` for {:.1} s",
                self.backend,
                inner.consecutive_failures,
                self.cooldown.as_secs_f64()
            );
        }
    }

    fn enter(&self, inner: &mut Inner, to: BreakerState) {
        inner.state = to;
        self.metrics.breaker_state.set(to.gauge());
        self.metrics.transition(to.label());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::metrics::LlmFamilies;

    fn breaker(cooldown_ms: u64) -> Breaker {
        Breaker::new(
            "b",
            2,
            Duration::from_millis(cooldown_ms),
            LlmFamilies::default().backend("b"),
        )
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker(10_000);
        b.admit().unwrap().failure("x");
        b.admit().unwrap().success();
        b.admit().unwrap().failure("x");
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit().unwrap().failure("connection refused");
        assert_eq!(b.state(), BreakerState::Open);
        let why = b.check().unwrap_err().0;
        assert!(
            why.contains("connection refused") && why.contains("tried again in"),
            "{why}"
        );
        assert!(b.admit().is_err());
        assert_eq!(b.metrics.breaker_state.get(), 2);
    }

    #[test]
    fn after_the_cool_down_one_probe_decides() {
        let b = breaker(0);
        b.admit().unwrap().failure("x");
        b.admit().unwrap().failure("x");
        assert_eq!(b.state(), BreakerState::Open);
        let probe = b.admit().unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.admit().is_err(), "only one probe at a time");
        probe.failure("still down");
        assert_eq!(b.state(), BreakerState::Open);
        b.admit().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn an_abandoned_probe_counts_as_a_failure() {
        let b = breaker(0);
        b.admit().unwrap().failure("x");
        b.admit().unwrap().failure("x");
        drop(b.admit().unwrap());
        assert_eq!(b.state(), BreakerState::Open);
    }
}
