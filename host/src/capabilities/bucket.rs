//! A token bucket of one second's worth: what bounds an agent's rates (messages it sends,
//! log lines it writes) while letting it burst up to a second's worth at once.

use std::sync::Mutex;
use std::time::Instant;

/// `per_second` tokens that refill at `per_second` a second, never holding more than that.
pub struct TokenBucket {
    per_second: u32,
    state: Mutex<State>,
}

struct State {
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket: one second's worth may be taken at once.
    pub fn new(per_second: u32) -> TokenBucket {
        TokenBucket {
            per_second,
            state: Mutex::new(State {
                tokens: f64::from(per_second),
                refilled: Instant::now(),
            }),
        }
    }

    /// The rate it refills at, per second.
    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Takes one token now, if there is one.
    pub fn try_take(&self) -> bool {
        self.try_take_at(Instant::now())
    }

    /// Takes one token at `now`, if there is one.
    pub fn try_take_at(&self, now: Instant) -> bool {
        let mut s = self.state.lock().expect("token bucket lock");
        let rate = f64::from(self.per_second);
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + elapsed * rate).min(rate);
        s.refilled = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
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

    #[test]
    fn one_seconds_worth_may_be_taken_at_once_then_at_the_rate() {
        let b = TokenBucket::new(10);
        let start = Instant::now();
        let taken = (0..100).filter(|_| b.try_take_at(start)).count();
        assert_eq!(taken, 10, "the burst is one second's worth");
        assert!(
            !b.try_take_at(start + Duration::from_millis(50)),
            "half a token"
        );
        assert!(
            b.try_take_at(start + Duration::from_millis(100)),
            "one token after 0.1 s"
        );
        let later = start + Duration::from_secs(60);
        let taken = (0..100).filter(|_| b.try_take_at(later)).count();
        assert_eq!(
            taken, 10,
            "an idle minute refills one second's worth, no more"
        );
    }
}
