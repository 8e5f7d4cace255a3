//! Canary upgrade inside an agent's runner: blue and green both serve, a stable hash of the
//! conversation key sends the current step's share of conversations to green, and health
//! gates compare the two over each interval.
//!
//! Both versions live in the one runner, so messages stay sequential per agent. There is
//! ONE logical state: whenever two consecutive messages go to different versions, the one
//! that served last hands its state to the other (`snapshot()` → `restore(from_version)`,
//! the swap's machinery). So blue and green never diverge, and a rollback or a completion
//! is one more hand-off. The price is a hand-off per switch (measured: `switches` and the
//! mean `switch_us` in `host status`, `canary_switch_us` in the swap benchmark).
//!
//! The conversation key is, in order: the node's conversation header (`[node]
//! conversation_header`, default `Conversation-Id`); the sender's agent ref (`Agent-Ref`:
//! an agent talking to this one is one conversation); the reply-to subject without its
//! last token (a client's reply inbox, so one client without conversations stays on one
//! version); the subject. Steps only grow, so a conversation only ever moves blue → green.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::gates::{self, Check, GateMetric, GateReading, Window};
use super::instance::{Code, Live};
use super::plan::RolloutPlan;
use super::runner::Runner;
use super::snapshot_limit::{SnapshotTooLarge, FIX};
use super::supervisor::Outcome;
use super::upgrade::Green;
use crate::bus::BusMessage;

mod ending;
mod routing;

pub use routing::{conversation_key, share_bucket};

/// How stale the counts `host status` shows of a running canary may get.
const STATUS_REFRESH: Duration = Duration::from_millis(50);

/// The header naming a conversation when the node config does not choose another.
pub const DEFAULT_CONVERSATION_HEADER: &str = "Conversation-Id";

/// A canary request from the node: green is instantiated and initialised already.
pub struct CanaryStart {
    pub green: Green,
    pub plan: RolloutPlan,
    pub conversation_header: String,
    /// Told how the canary ended (completed, rolled back, promoted).
    pub finished: Option<oneshot::Sender<CanaryOutcome>>,
}

/// What starting a canary did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CanaryStarted {
    pub agent: String,
    pub from_version: String,
    pub to_version: String,
    pub plan: RolloutPlan,
    /// Time no message was handled while checking that each version takes the other's
    /// state (two snapshots, two restores).
    pub check_pause_us: u64,
    pub state_bytes: u64,
}

/// How a canary ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CanaryOutcome {
    pub agent: String,
    /// True when green serves everything (completed or promoted).
    pub completed: bool,
    pub text: String,
}

/// What `host status` shows of a running canary.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CanaryStatus {
    pub strategy: String,
    pub blue_version: String,
    pub green_version: String,
    pub steps: Vec<u8>,
    /// Share of conversations green serves now.
    pub percent: u8,
    pub interval_ms: u64,
    /// Failed checks in a row (a rollback comes at the plan's `failed_checks`).
    pub failed_checks: u32,
    /// The gate readings of the last check (empty before the first).
    pub last_check: Vec<GateReading>,
    /// Messages each version handled since the canary started.
    pub blue_messages: u64,
    pub green_messages: u64,
    /// State hand-offs between the versions, and their mean cost.
    pub switches: u64,
    pub switch_us_mean: f64,
}

/// The version not serving the current message, with what it needs to serve the next.
struct Parked {
    live: Live,
    version: String,
    code: Code,
}

/// A canary in progress (held by the runner).
pub(super) struct Canary {
    plan: RolloutPlan,
    header: String,
    step: usize,
    /// None only while a hand-off is in progress or after the parked instance broke.
    parked: Option<Parked>,
    /// Whether the runner's live instance is green.
    green_live: bool,
    blue_version: String,
    green_version: String,
    /// Blue's code, to re-create blue if its instance breaks during the canary.
    blue_code: Code,
    /// This interval's readings: [blue, green].
    windows: [Window; 2],
    totals: [u64; 2],
    next_check: Instant,
    failed_in_row: u32,
    last_check: Check,
    switches: u64,
    switch_time: Duration,
    /// When `host status` last got fresh counts (refreshed at most every
    /// [`STATUS_REFRESH`] while messages flow).
    status_at: Instant,
    /// Messages were counted since the status was last refreshed.
    status_stale: bool,
    /// Blue's state when the canary started (what a forced rollback goes back to).
    blue_state_at_start: Vec<u8>,
    processed_at_start: u64,
    finished: Option<oneshot::Sender<CanaryOutcome>>,
}

impl Canary {
    fn percent(&self) -> u8 {
        self.plan.steps[self.step]
    }

    fn routes_to_green(&self, msg: &BusMessage) -> bool {
        share_bucket(conversation_key(msg, &self.header)) < u64::from(self.percent())
    }

    fn status(&self) -> CanaryStatus {
        CanaryStatus {
            strategy: "canary".into(),
            blue_version: self.blue_version.clone(),
            green_version: self.green_version.clone(),
            steps: self.plan.steps.clone(),
            percent: self.percent(),
            interval_ms: self.plan.interval.as_millis() as u64,
            failed_checks: self.failed_in_row,
            last_check: self.last_check.readings.clone(),
            blue_messages: self.totals[0],
            green_messages: self.totals[1],
            switches: self.switches,
            switch_us_mean: if self.switches == 0 {
                0.0
            } else {
                self.switch_time.as_secs_f64() * 1e6 / self.switches as f64
            },
        }
    }
}

/// Why a hand-off between the versions failed.
enum HandoffFailed {
    /// The serving version trapped taking its snapshot (it was restarted from the last one).
    SnapshotTrapped(String),
    /// The other version refused the state; it is unchanged and still usable.
    Refused(String),
    /// The other version trapped in `restore`; it is gone.
    RestoreTrapped(String),
    /// The agent could not be restarted (it is marked failed).
    AgentFailed,
    /// The serving version's snapshot is over `[limits] max_snapshot_bytes`; it keeps
    /// the state and both instances are unchanged.
    TooLarge(SnapshotTooLarge),
}

impl HandoffFailed {
    fn text(&self) -> String {
        match self {
            HandoffFailed::SnapshotTrapped(t) => format!("trapped taking its snapshot ({t})"),
            HandoffFailed::Refused(r) => format!("the state was refused ({r})"),
            HandoffFailed::RestoreTrapped(t) => format!("restore trapped ({t})"),
            HandoffFailed::AgentFailed => "the agent failed".to_string(),
            HandoffFailed::TooLarge(refused) => {
                format!("its snapshot was refused ({refused}; {FIX})")
            }
        }
    }
}

impl Runner {
    /// Starts a canary after checking that green takes blue's state and blue takes green's
    /// back (what every hand-off and a rollback need); either refusal refuses the canary and
    /// leaves blue serving as before.
    pub(super) async fn start_canary(
        &mut self,
        start: CanaryStart,
    ) -> Result<CanaryStarted, String> {
        let name = self.parts.identity.name.clone();
        if let Some(c) = &self.canary {
            return Err(format!(
                "agent '{name}' already runs a canary of v{} ({}% of conversations); `host rollback {name}` or `host promote {name}` it first",
                c.green_version,
                c.percent()
            ));
        }
        let CanaryStart {
            green,
            plan,
            conversation_header,
            finished,
        } = start;
        let Green {
            live: mut green_live,
            version: green_version,
            code: green_code,
        } = green;
        let budget = self.budget();
        let blue_version = self.version.clone();
        let refuse = |why: String| {
            format!("canary of v{green_version} refused: {why}; v{blue_version} keeps serving, nothing lost")
        };
        let Some(blue) = self.live.as_mut() else {
            return Err(format!(
                "agent '{name}' is restarting; try the upgrade again in a moment"
            ));
        };
        let paused = Instant::now();
        blue.begin_turn(None, budget);
        let state = match blue.call_snapshot().await {
            Ok(state) => state,
            Err(trap) => {
                let text = self.instance_trapped(&trap);
                let _ = self.restart().await;
                let why = refuse(format!("v{blue_version} trapped taking its snapshot ({text}); it was restarted from its last snapshot"));
                self.parts.status.record(&name, why.clone());
                return Err(why);
            }
        };
        if let Err(refused) = self.admit_snapshot(&blue_version, &state) {
            let why = refuse(format!("{refused}, so it cannot be handed over; {FIX}"));
            self.parts.status.record(&name, why.clone());
            return Err(why);
        }
        green_live.begin_turn(None, budget);
        let refused = match green_live.call_restore(&blue_version, &state).await {
            Ok(Ok(())) => None,
            Ok(Err(reason)) => Some(format!(
                "its restore refused the state of v{blue_version} ({reason})"
            )),
            Err(trap) => Some(format!("its restore trapped ({trap:#})")),
        };
        if let Some(why) = refused {
            let why = refuse(why);
            self.parts.status.record(&name, why.clone());
            return Err(why);
        }
        green_live.begin_turn(None, budget);
        let green_state = match green_live.call_snapshot().await {
            Ok(s) => s,
            Err(trap) => {
                let why = refuse(format!(
                    "v{green_version} trapped taking its snapshot ({trap:#})"
                ));
                self.parts.status.record(&name, why.clone());
                return Err(why);
            }
        };
        if let Err(refused) = self.admit_snapshot(&green_version, &green_state) {
            let why = refuse(format!(
                "{refused}, so it could not hand the state back; {FIX}"
            ));
            self.parts.status.record(&name, why.clone());
            return Err(why);
        }
        let blue = self.live.as_mut().expect("checked above");
        blue.begin_turn(None, budget);
        let back = match blue.call_restore(&green_version, &green_state).await {
            Ok(Ok(())) => None,
            Ok(Err(reason)) => Some((reason, false)),
            Err(trap) => Some((format!("trapped: {trap:#}"), true)),
        };
        if let Some((reason, blue_broken)) = back {
            if blue_broken {
                // Blue's restore trapped: a fresh blue with its own state, as before.
                let code = self.parts.code.clone();
                let fresh = self
                    .instance_with_state(&code, &blue_version, &state)
                    .await?;
                self.live = Some(fresh);
            }
            let why = refuse(format!(
                "v{blue_version} cannot take the state of v{green_version} back ({reason}), so conversations could not move between them and a rollback would lose messages; fix its restore, or upgrade with --strategy swap"
            ));
            self.parts.status.record(&name, why.clone());
            return Err(why);
        }
        let check_pause = paused.elapsed();

        if self.previous.is_some() {
            self.retire_previous("replaced by a canary");
        }
        let canary = Canary {
            header: conversation_header,
            step: 0,
            parked: Some(Parked {
                live: green_live,
                version: green_version.clone(),
                code: green_code,
            }),
            green_live: false,
            blue_version: blue_version.clone(),
            green_version: green_version.clone(),
            blue_code: self.parts.code.clone(),
            windows: Default::default(),
            totals: [0, 0],
            next_check: Instant::now() + plan.interval,
            failed_in_row: 0,
            last_check: Check::default(),
            switches: 0,
            switch_time: Duration::ZERO,
            status_at: Instant::now(),
            status_stale: false,
            blue_state_at_start: state,
            processed_at_start: self.processed(),
            finished,
            plan,
        };
        let started = CanaryStarted {
            agent: name.clone(),
            from_version: blue_version.clone(),
            to_version: green_version.clone(),
            plan: canary.plan.clone(),
            check_pause_us: check_pause.as_micros() as u64,
            state_bytes: canary.blue_state_at_start.len() as u64,
        };
        let gates: Vec<String> = canary.plan.gates.iter().map(ToString::to_string).collect();
        self.parts
            .metrics
            .canary_percent
            .set(canary.percent().into());
        self.parts.metrics.upgrade_event("canary_started");
        self.parts.status.set_canary(Some(canary.status()));
        self.parts.status.record(
            &name,
            format!(
                "canary v{blue_version} → v{green_version} started: {}% of conversations to v{green_version} (steps {:?}, a check every {} ms; gates {}); each version takes the other's state (checked in {} µs)",
                canary.percent(),
                canary.plan.steps,
                canary.plan.interval.as_millis(),
                gates.join(", "),
                started.check_pause_us
            ),
        );
        self.canary = Some(Box::new(canary));
        Ok(started)
    }

    /// Delivers a message to the version its conversation belongs to (plain `deliver`
    /// without a canary), handing the state over first when the other version served last,
    /// and counts what happened in that version's window.
    pub(super) async fn deliver_routed(&mut self, msg: BusMessage) -> Outcome {
        if self.canary.is_none() {
            return self.deliver(msg).await;
        }
        // A future is as large as its largest path, and the canary's (hand-offs, rollback,
        // window accounting) is several times a plain delivery: boxed, so that the runner's
        // future, and every message it delivers outside a canary, does not carry its size.
        let in_canary = Box::pin(self.deliver_in_canary(msg));
        in_canary.await
    }

    /// [`Self::deliver_routed`] while a canary runs.
    async fn deliver_in_canary(&mut self, msg: BusMessage) -> Outcome {
        let Some(canary) = self.canary.as_ref() else {
            return self.deliver(msg).await;
        };
        if canary.routes_to_green(&msg) != canary.green_live {
            if let Err(failed) = self.handoff().await {
                if matches!(failed, HandoffFailed::AgentFailed) {
                    return Outcome::AgentFailed;
                }
                if let HandoffFailed::TooLarge(refused) = &failed {
                    // The state cannot move, but it is intact where it is: the serving
                    // version takes this message (counted as its own below), and the
                    // canary goes on. Rolling back would need the very hand-off refused.
                    let to = self.canary.as_ref().map(|c| match c.green_live {
                        true => c.blue_version.clone(),
                        false => c.green_version.clone(),
                    });
                    self.report_refused_handoff(refused, &to.unwrap_or_default());
                } else {
                    let why = format!("a state hand-off failed: {}", failed.text());
                    if let Err(e) = self.end_canary_backwards(&why, true).await {
                        let name = self.parts.identity.name.clone();
                        self.parts
                            .status
                            .record(&name, format!("automatic rollback failed: {e}"));
                    }
                }
            }
        }
        if self.canary.is_none() {
            return self.deliver(msg).await;
        }
        let m = &self.parts.metrics;
        let before = (m.handled.get(), m.errors.get(), m.traps.get());
        let llm_before = self.parts.caps.llm.call_outcomes();
        let started = Instant::now();
        let outcome = self.deliver(msg).await;
        let alive = outcome != Outcome::AgentFailed;
        let took = started.elapsed();
        let m = &self.parts.metrics;
        let llm_after = self.parts.caps.llm.call_outcomes();
        let memory = self.live.as_ref().map_or(0, Live::memory_in_use);
        let Some(canary) = self.canary.as_mut() else {
            return outcome;
        };
        let index = usize::from(canary.green_live);
        let w = &mut canary.windows[index];
        w.handled += m.handled.get() - before.0;
        w.errors += m.errors.get() - before.1;
        w.traps += m.traps.get() - before.2;
        w.llm_calls += llm_after.0 - llm_before.0;
        w.llm_failures += llm_after.1 - llm_before.1;
        w.memory_peak = w.memory_peak.max(memory);
        w.observe_latency(took);
        canary.totals[index] += 1;
        canary.status_stale = true;
        let refresh = started.duration_since(canary.status_at) >= STATUS_REFRESH;
        let storm = canary.green_live
            && canary.plan.gates.iter().any(|g| {
                g.metric == GateMetric::Traps && canary.windows[1].traps as f64 >= g.limit
            });
        if refresh {
            self.refresh_canary_status();
        }
        if storm && alive {
            self.check_canary().await;
        }
        outcome
    }

    /// The next time the runner must wake without a message: the rollback window's end or
    /// the canary's next check.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let window = self.previous.as_ref().map(|p| p.retire_at);
        let check = self.canary.as_ref().map(|c| match c.status_stale {
            true => c.next_check.min(c.status_at + STATUS_REFRESH),
            false => c.next_check,
        });
        match (window, check) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Acts on whatever deadline passed.
    pub(super) async fn on_deadline(&mut self) {
        let now = Instant::now();
        if self.previous.as_ref().is_some_and(|p| p.retire_at <= now) {
            self.retire_previous("the rollback window closed");
        }
        if self.canary.as_ref().is_some_and(|c| c.next_check <= now) {
            self.check_canary().await;
        } else if self.canary.as_ref().is_some_and(|c| c.status_stale) {
            self.refresh_canary_status();
        }
    }

    fn refresh_canary_status(&mut self) {
        if let Some(c) = self.canary.as_mut() {
            c.status_at = Instant::now();
            c.status_stale = false;
            self.parts.status.set_canary(Some(c.status()));
        }
    }

    /// Compares green with blue over the interval: a pass moves to the next step (or
    /// completes at 100 %), a trap storm or `failed_checks` failures in a row roll back.
    async fn check_canary(&mut self) {
        let name = self.parts.identity.name.clone();
        let memory_limit = self.parts.limits.memory_bytes;
        let Some(c) = self.canary.as_mut() else {
            return;
        };
        let [blue, green] = &mut c.windows;
        let check = gates::evaluate(&c.plan.gates, green, blue, memory_limit);
        c.windows = Default::default();
        c.next_check = Instant::now() + c.plan.interval;
        let readings: Vec<String> = check.readings.iter().map(ToString::to_string).collect();
        if check.failed() {
            c.failed_in_row += 1;
            let storm = check.trap_storm();
            let text = format!(
                "canary check at {}% failed ({} of {} in a row{}): {}",
                c.percent(),
                c.failed_in_row,
                c.plan.failed_checks,
                if storm { ", a trap storm" } else { "" },
                check.breaches()
            );
            let roll_back = storm || c.failed_in_row >= c.plan.failed_checks;
            c.last_check = check;
            self.parts.metrics.upgrade_event("canary_check_failed");
            self.parts.status.set_canary(Some(c.status()));
            self.parts.status.record(&name, text.clone());
            if roll_back {
                let why = format!("automatic rollback: {text}");
                if let Err(e) = self.end_canary_backwards(&why, true).await {
                    self.parts
                        .status
                        .record(&name, format!("automatic rollback failed: {e}"));
                }
            }
            return;
        }
        c.failed_in_row = 0;
        c.last_check = check;
        if c.step + 1 < c.plan.steps.len() {
            let from = c.percent();
            c.step += 1;
            let text = format!(
                "canary step {from}% → {}% of conversations to v{} (gates passed: {})",
                c.percent(),
                c.green_version,
                readings.join("; ")
            );
            self.parts.metrics.canary_percent.set(c.percent().into());
            self.parts.metrics.upgrade_event("canary_step");
            self.parts.status.set_canary(Some(c.status()));
            self.parts.status.record(&name, text);
        } else {
            let why = format!("gates passed at 100%: {}", readings.join("; "));
            let _ = self.complete_canary(&why).await;
        }
    }

    /// Moves the state to the parked version and makes it the serving one.
    async fn handoff(&mut self) -> Result<(), HandoffFailed> {
        let budget = self.budget();
        let canary = self.canary.as_mut().expect("a canary");
        let Some(mut parked) = canary.parked.take() else {
            return Err(HandoffFailed::RestoreTrapped(
                "the other version is gone".into(),
            ));
        };
        let started = Instant::now();
        let Some(live) = self.live.as_mut() else {
            self.canary.as_mut().expect("a canary").parked = Some(parked);
            return Err(HandoffFailed::AgentFailed);
        };
        live.begin_turn(None, budget);
        let state = match live.call_snapshot().await {
            Ok(state) => state,
            Err(trap) => {
                let text = self.instance_trapped(&trap);
                self.canary.as_mut().expect("a canary").parked = Some(parked);
                if !self.restart().await {
                    return Err(HandoffFailed::AgentFailed);
                }
                return Err(HandoffFailed::SnapshotTrapped(text));
            }
        };
        if let Err(refused) = self.admit_snapshot(&self.version, &state) {
            self.canary.as_mut().expect("a canary").parked = Some(parked);
            return Err(HandoffFailed::TooLarge(refused));
        }
        parked.live.begin_turn(None, budget);
        match parked.live.call_restore(&self.version, &state).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                self.canary.as_mut().expect("a canary").parked = Some(parked);
                return Err(HandoffFailed::Refused(reason));
            }
            Err(trap) => return Err(HandoffFailed::RestoreTrapped(format!("{trap:#}"))),
        }
        let served = self.live.replace(parked.live).expect("checked above");
        let served_version = std::mem::replace(&mut self.version, parked.version);
        let served_code = std::mem::replace(&mut self.parts.code, parked.code);
        // A trap of the newly serving version restarts it from this state.
        self.last_snapshot = Some((served_version.clone(), state));
        let canary = self.canary.as_mut().expect("a canary");
        canary.parked = Some(Parked {
            live: served,
            version: served_version,
            code: served_code,
        });
        canary.green_live = !canary.green_live;
        canary.switches += 1;
        canary.switch_time += started.elapsed();
        Ok(())
    }
}
