//! Health gates of a canary: what green must keep below, measured over each check interval
//! and compared with blue where a comparison makes sense.
//!
//! A gate is written the way operators say it: `error_rate<5%`, `p95<2x` (green's p95
//! handle latency under twice blue's), `traps<1`, `memory<90%` (of the agent's memory
//! limit), `llm_failures<10%`. The defaults are the operators' rollback triggers
//! (docs/design.md, The operators' world): error rate over 5 %, LLM backend failures over
//! 10 %, memory over 90 %, and a trap storm (3 traps in one interval) — a storm rolls back
//! at once, other breaches after [`DEFAULT_FAILED_CHECKS`] failed checks in a row.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Failed checks in a row that roll a canary back (the operators' "> 2 consecutive failed
/// health checks" counts the third; we stop at the second).
pub const DEFAULT_FAILED_CHECKS: u32 = 2;

/// Messages a version must have handled in an interval before its rates and percentiles
/// count; below it the reading is "not enough data" and neither passes nor fails a check.
pub const MIN_SAMPLES: u64 = 10;

/// Latency samples kept per version and interval (enough for a p95, bounded in memory).
const MAX_LATENCY_SAMPLES: usize = 65_536;

/// What a gate measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateMetric {
    /// Share of green's messages whose `handle` returned an error.
    ErrorRate,
    /// Green's 95th percentile handle latency, as a multiple of blue's.
    P95,
    /// Green's traps in the interval (a breach is a trap storm: rolled back at once).
    Traps,
    /// Green's linear memory as a share of the agent's memory limit.
    Memory,
    /// Share of green's LLM calls that failed.
    LlmFailures,
}

/// One gate: green's reading must stay below `limit` (a percent, a ratio or a count).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Gate {
    pub metric: GateMetric,
    pub limit: f64,
}

const GATE_FORMS: &str = "expected one of error_rate<N%, p95<Nx, traps<N, memory<N%, llm_failures<N% (e.g. --gate error_rate<5%)";

impl FromStr for Gate {
    type Err = String;

    fn from_str(text: &str) -> Result<Gate, String> {
        let bad = |why: &str| format!("--gate {text:?}: {why}; {GATE_FORMS}");
        let (name, value) = text
            .split_once('<')
            .ok_or_else(|| bad("no '<' between the measure and its limit"))?;
        let (metric, unit) = match name.trim() {
            "error_rate" => (GateMetric::ErrorRate, "%"),
            "p95" => (GateMetric::P95, "x"),
            "traps" => (GateMetric::Traps, ""),
            "memory" => (GateMetric::Memory, "%"),
            "llm_failures" => (GateMetric::LlmFailures, "%"),
            other => return Err(bad(&format!("unknown measure '{other}'"))),
        };
        let value = value.trim();
        let number = match unit {
            "" => value,
            unit => value.strip_suffix(unit).ok_or_else(|| {
                bad(&format!(
                    "the limit of {} needs the unit '{unit}'",
                    name.trim()
                ))
            })?,
        };
        let limit: f64 = number
            .trim()
            .parse()
            .map_err(|_| bad(&format!("'{number}' is not a number")))?;
        let valid = match metric {
            GateMetric::ErrorRate | GateMetric::Memory | GateMetric::LlmFailures => {
                (0.0..=100.0).contains(&limit) && limit > 0.0
            }
            GateMetric::P95 => limit >= 1.0 && limit.is_finite(),
            GateMetric::Traps => limit >= 1.0 && limit.fract() == 0.0 && limit.is_finite(),
        };
        if !valid {
            return Err(bad(match metric {
                GateMetric::P95 => "a latency ratio must be at least 1x",
                GateMetric::Traps => "a trap limit is a whole number of at least 1",
                _ => "a percentage must be over 0 and at most 100",
            }));
        }
        Ok(Gate { metric, limit })
    }
}

impl TryFrom<String> for Gate {
    type Error = String;
    fn try_from(text: String) -> Result<Gate, String> {
        text.parse()
    }
}

impl From<Gate> for String {
    fn from(g: Gate) -> String {
        g.to_string()
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.metric {
            GateMetric::ErrorRate => write!(f, "error_rate<{}%", self.limit),
            GateMetric::P95 => write!(f, "p95<{}x", self.limit),
            GateMetric::Traps => write!(f, "traps<{}", self.limit),
            GateMetric::Memory => write!(f, "memory<{}%", self.limit),
            GateMetric::LlmFailures => write!(f, "llm_failures<{}%", self.limit),
        }
    }
}

/// The gates used when none are given: the operators' rollback triggers.
pub fn default_gates() -> Vec<Gate> {
    ["error_rate<5%", "traps<3", "memory<90%", "llm_failures<10%"]
        .iter()
        .map(|g| g.parse().expect("the default gates parse"))
        .collect()
}

/// What one version did during one check interval.
#[derive(Clone, Debug, Default)]
pub struct Window {
    pub handled: u64,
    pub errors: u64,
    pub traps: u64,
    pub latencies_us: Vec<u32>,
    /// Largest linear memory seen after a message (bytes).
    pub memory_peak: u64,
    pub llm_calls: u64,
    pub llm_failures: u64,
}

impl Window {
    pub fn observe_latency(&mut self, took: Duration) {
        if self.latencies_us.len() < MAX_LATENCY_SAMPLES {
            self.latencies_us
                .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        }
    }

    /// Messages handled or answered with an error.
    pub fn messages(&self) -> u64 {
        self.handled + self.errors
    }

    fn p95_us(&mut self) -> Option<u32> {
        if (self.latencies_us.len() as u64) < MIN_SAMPLES {
            return None;
        }
        self.latencies_us.sort_unstable();
        let at = ((self.latencies_us.len() as f64) * 0.95).ceil() as usize;
        Some(self.latencies_us[at.saturating_sub(1).min(self.latencies_us.len() - 1)])
    }
}

/// One gate's reading at a check.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GateReading {
    pub gate: Gate,
    /// Green's value in the gate's unit (percent, ratio or count); None: not enough data.
    pub green: Option<f64>,
    /// Blue's value in the same unit, for comparison (None where it does not apply).
    pub blue: Option<f64>,
    /// Passed, failed, or None when there was not enough data to tell.
    pub passed: Option<bool>,
}

impl fmt::Display for GateReading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<f64>| match v {
            Some(v) => format!("{v:.2}"),
            None => "n/a".to_string(),
        };
        let verdict = match self.passed {
            Some(true) => "ok",
            Some(false) => "BREACHED",
            None => "not enough data",
        };
        write!(
            f,
            "{}: green {} blue {} ({verdict})",
            self.gate,
            show(self.green),
            show(self.blue)
        )
    }
}

/// The result of comparing green with blue over one interval.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Check {
    pub readings: Vec<GateReading>,
}

impl Check {
    pub fn failed(&self) -> bool {
        self.readings.iter().any(|r| r.passed == Some(false))
    }

    /// A breached trap gate: rolled back without waiting for another check.
    pub fn trap_storm(&self) -> bool {
        self.readings
            .iter()
            .any(|r| r.gate.metric == GateMetric::Traps && r.passed == Some(false))
    }

    /// The breached gates in words, for events and errors.
    pub fn breaches(&self) -> String {
        self.readings
            .iter()
            .filter(|r| r.passed == Some(false))
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn percent(part: u64, whole: u64) -> Option<f64> {
    (whole >= MIN_SAMPLES).then(|| part as f64 * 100.0 / whole as f64)
}

/// Evaluates `gates` on green's and blue's windows; `memory_limit` is the agent's.
pub fn evaluate(gates: &[Gate], green: &mut Window, blue: &mut Window, memory_limit: u64) -> Check {
    let memory = |w: &Window| {
        (w.memory_peak > 0 && memory_limit > 0)
            .then(|| w.memory_peak as f64 * 100.0 / memory_limit as f64)
    };
    let readings = gates
        .iter()
        .map(|gate| {
            let (g, b) = match gate.metric {
                GateMetric::ErrorRate => (
                    percent(green.errors, green.messages()),
                    percent(blue.errors, blue.messages()),
                ),
                GateMetric::LlmFailures => (
                    percent(green.llm_failures, green.llm_calls),
                    percent(blue.llm_failures, blue.llm_calls),
                ),
                GateMetric::Memory => (memory(green), memory(blue)),
                GateMetric::Traps => (Some(green.traps as f64), Some(blue.traps as f64)),
                GateMetric::P95 => {
                    let (g, b) = (green.p95_us(), blue.p95_us());
                    match (g, b) {
                        // A ratio to a blue p95 of 0 µs would be infinite: floor it at 1 µs.
                        (Some(g), Some(b)) => (Some(f64::from(g) / f64::from(b.max(1))), Some(1.0)),
                        _ => (None, None),
                    }
                }
            };
            GateReading {
                gate: *gate,
                green: g,
                blue: b,
                passed: g.map(|g| g < gate.limit),
            }
        })
        .collect();
    Check { readings }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_read_the_way_operators_write_them() {
        let g: Gate = "error_rate<5%".parse().unwrap();
        assert_eq!((g.metric, g.limit), (GateMetric::ErrorRate, 5.0));
        assert_eq!("p95<2x".parse::<Gate>().unwrap().limit, 2.0);
        assert_eq!("traps<1".parse::<Gate>().unwrap().metric, GateMetric::Traps);
        assert_eq!(
            "llm_failures<10%".parse::<Gate>().unwrap().to_string(),
            "llm_failures<10%"
        );
    }

    #[test]
    fn a_bad_gate_says_what_is_wrong_and_what_is_expected() {
        for (text, says) in [
            ("error_rate=5%", "no '<'"),
            ("latency<5%", "unknown measure 'latency'"),
            ("error_rate<5", "needs the unit '%'"),
            ("p95<fast x", "is not a number"),
            ("p95<0.5x", "at least 1x"),
            ("traps<0", "whole number"),
            ("memory<120%", "at most 100"),
        ] {
            let err = text.parse::<Gate>().unwrap_err();
            assert!(
                err.contains(says) && err.contains("expected one of"),
                "{err}"
            );
        }
    }

    #[test]
    fn green_fails_the_error_gate_only_with_enough_messages() {
        let gates = ["error_rate<5%".parse().unwrap()];
        let mut green = Window {
            handled: 3,
            errors: 2,
            ..Window::default()
        };
        let mut blue = Window::default();
        assert_eq!(
            evaluate(&gates, &mut green, &mut blue, 0).readings[0].passed,
            None
        );
        green.handled = 90;
        green.errors = 10;
        let check = evaluate(&gates, &mut green, &mut blue, 0);
        assert!(check.failed(), "{check:?}");
        assert!(!check.trap_storm());
        assert!(check.breaches().contains("error_rate<5%: green 10.00"));
    }

    /// What README promises operators: "not enough data" neither fails a check nor blocks
    /// it, so an idle interval with only rate gates passes (and the canary moves on).
    #[test]
    fn a_check_with_too_little_data_for_every_gate_passes() {
        let gates: Vec<Gate> = ["error_rate<5%", "p95<2x", "llm_failures<10%"]
            .iter()
            .map(|g| g.parse().unwrap())
            .collect();
        let mut green = Window {
            handled: 2,
            errors: 2,
            ..Window::default()
        };
        let check = evaluate(&gates, &mut green, &mut Window::default(), 1 << 20);
        assert!(
            check.readings.iter().all(|r| r.passed.is_none()),
            "{check:?}"
        );
        assert!(!check.failed(), "{check:?}");
        assert_eq!(check.breaches(), "");
    }

    #[test]
    fn p95_compares_green_with_blue() {
        let gates = ["p95<2x".parse().unwrap()];
        let mut green = Window::default();
        let mut blue = Window::default();
        for i in 0..100 {
            green.observe_latency(Duration::from_micros(300 + i));
            blue.observe_latency(Duration::from_micros(100 + i));
        }
        let check = evaluate(&gates, &mut green, &mut blue, 0);
        assert!(check.failed(), "{check:?}");
        let ratio = check.readings[0].green.unwrap();
        assert!((1.9..2.2).contains(&ratio), "{ratio}");
    }

    #[test]
    fn any_trap_over_the_limit_is_a_storm() {
        let gates = default_gates();
        let mut green = Window {
            traps: 3,
            ..Window::default()
        };
        let check = evaluate(&gates, &mut green, &mut Window::default(), 1 << 20);
        assert!(check.trap_storm(), "{check:?}");
    }
}
