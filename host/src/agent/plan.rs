//! What an operator asks of a gradual upgrade: the steps (share of conversations for a
//! canary, share of agents for waves), how long each step is watched, and the gates.
//!
//! Parsed from the command line (`--steps 10,25,50,100 --interval 30s --gate p95<2x`) on
//! the client, checked again by the node (the control API is a trust boundary too).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::gates::{default_gates, Gate, DEFAULT_FAILED_CHECKS};

/// The steps when none are given: the operators' upgrade plan (docs/design.md, The
/// operators' world).
pub const DEFAULT_STEPS: [u8; 4] = [10, 25, 50, 100];
/// How long each step is watched when no interval is given.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// A gradual upgrade: steps in percent, ending at 100, each watched for `interval`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutPlan {
    pub steps: Vec<u8>,
    #[serde(with = "millis")]
    pub interval: Duration,
    pub gates: Vec<Gate>,
    /// Failed checks in a row that roll back (a trap storm rolls back at once).
    pub failed_checks: u32,
}

impl Default for RolloutPlan {
    fn default() -> Self {
        RolloutPlan {
            steps: DEFAULT_STEPS.to_vec(),
            interval: DEFAULT_INTERVAL,
            gates: default_gates(),
            failed_checks: DEFAULT_FAILED_CHECKS,
        }
    }
}

impl RolloutPlan {
    /// Builds a plan from the command-line forms; `flag` names the steps flag in errors
    /// (`--steps` for a canary, `--waves` for a component upgrade).
    pub fn from_args(
        flag: &str,
        steps: Option<&str>,
        interval: Option<&str>,
        gates: &[String],
    ) -> Result<RolloutPlan, String> {
        let mut plan = RolloutPlan::default();
        if let Some(steps) = steps {
            plan.steps = parse_steps(flag, steps)?;
        }
        if let Some(interval) = interval {
            plan.interval = parse_interval(interval)?;
        }
        if !gates.is_empty() {
            plan.gates = gates.iter().map(|g| g.parse()).collect::<Result<_, _>>()?;
        }
        Ok(plan)
    }

    /// Checks a plan that came over the control API.
    pub fn validate(&self, flag: &str) -> Result<(), String> {
        let text = self
            .steps
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(",");
        parse_steps(flag, &text)?;
        if self.interval.is_zero() {
            return Err("--interval 0: expected a positive duration like 30s".into());
        }
        if self.failed_checks == 0 {
            return Err("failed_checks must be at least 1".into());
        }
        Ok(())
    }
}

/// `10,25,50,100` → steps; they must rise strictly, lie in 1..=100 and end at 100.
pub fn parse_steps(flag: &str, text: &str) -> Result<Vec<u8>, String> {
    let expected = format!("expected rising percentages ending at 100, e.g. {flag} 10,25,50,100");
    let mut steps = Vec::new();
    for part in text.split(',') {
        let part = part.trim().trim_end_matches('%');
        let step: u8 = part
            .parse()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                format!("{flag} {text}: '{part}' is not a percentage from 1 to 100; {expected}")
            })?;
        if steps.last().is_some_and(|last| *last >= step) {
            return Err(format!(
                "{flag} {text}: {step} does not rise above the step before it; {expected}"
            ));
        }
        steps.push(step);
    }
    if steps.last() != Some(&100) {
        return Err(format!(
            "{flag} {text}: the last step must be 100; {expected}"
        ));
    }
    Ok(steps)
}

/// `30s`, `500ms`, `2m`, `1h` → a duration (at least 1 ms).
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let expected = "expected a duration like 30s, 500ms, 2m or 1h";
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("--interval {text:?}: no number; {expected}"))?;
    let millis = match unit.trim() {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "" => return Err(format!("--interval {text:?}: no unit; {expected}")),
        other => {
            return Err(format!(
                "--interval {text:?}: unknown unit '{other}'; {expected}"
            ))
        }
    };
    match millis {
        Some(0) => Err(format!("--interval {text:?}: must be positive; {expected}")),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Err(format!("--interval {text:?}: too long; {expected}")),
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_operators_plan() {
        let plan = RolloutPlan::from_args("--steps", None, None, &[]).unwrap();
        assert_eq!(plan.steps, vec![10, 25, 50, 100]);
        assert_eq!(plan.interval, Duration::from_secs(30));
        assert_eq!(plan.failed_checks, 2);
        assert!(plan.gates.iter().any(|g| g.to_string() == "error_rate<5%"));
    }

    #[test]
    fn steps_must_rise_to_100() {
        assert_eq!(
            parse_steps("--steps", "5, 50%,100").unwrap(),
            vec![5, 50, 100]
        );
        for (text, says) in [
            ("10,25,50", "the last step must be 100"),
            ("10,10,100", "does not rise"),
            ("0,100", "'0' is not a percentage"),
            ("10,half,100", "'half' is not a percentage"),
            ("150", "'150' is not a percentage"),
        ] {
            let err = parse_steps("--waves", text).unwrap_err();
            assert!(err.contains(says) && err.starts_with("--waves"), "{err}");
        }
    }

    #[test]
    fn intervals_need_a_unit() {
        assert_eq!(parse_interval("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_interval("2m").unwrap(), Duration::from_secs(120));
        for (text, says) in [
            ("30", "no unit"),
            ("s", "no number"),
            ("3 days", "unknown unit 'days'"),
            ("0s", "must be positive"),
        ] {
            let err = parse_interval(text).unwrap_err();
            assert!(
                err.contains(says) && err.contains("expected a duration"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_plan_crosses_the_control_api_unchanged() {
        let plan = RolloutPlan::from_args(
            "--steps",
            Some("20,100"),
            Some("1s"),
            &["p95<3x".to_string()],
        )
        .unwrap();
        let json = serde_json::to_string(&plan).unwrap();
        assert!(json.contains("\"p95<3x\""), "{json}");
        assert_eq!(serde_json::from_str::<RolloutPlan>(&json).unwrap(), plan);
    }
}
