//! Hot upgrade inside an agent's runner: swap to a new version carrying the state across,
//! keep the old version warm for a rollback window, roll back or promote.
//!
//! The runner takes these requests between messages, so the in-flight message finishes
//! first and new messages wait in the agent's subscriptions (nothing is dropped): the only
//! pause is `blue.snapshot()` + `green.restore()`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::instance::{instantiate, Code, Live};
use super::runner::{Control, Runner};

/// A new version, instantiated and initialised off the message path.
pub struct Green {
    pub live: Live,
    pub version: String,
    pub code: Code,
}

/// The version a swap replaced, kept warm until promoted, rolled back or retired.
pub struct Previous {
    pub live: Live,
    pub version: String,
    pub code: Code,
    /// Its state at the swap (what `rollback --force` goes back to).
    pub swap_state: Vec<u8>,
    pub retire_at: Instant,
    /// Messages processed when the swap happened (to count what a forced rollback loses).
    pub processed_at_swap: u64,
}

/// What a swap or a rollback did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SwapReport {
    pub agent: String,
    pub from_version: String,
    pub to_version: String,
    /// Time no message was handled: the snapshot plus the restore.
    pub pause_us: u64,
    pub state_bytes: u64,
    /// Messages whose effects a forced rollback dropped (0 otherwise).
    pub lost_messages: u64,
    /// How long the replaced version stays warm for `host rollback` (0 after a rollback).
    pub rollback_window_secs: u64,
}

impl Runner {
    /// Handles an upgrade request from the node.
    pub(super) async fn control(&mut self, request: Control) {
        match request {
            Control::Swap(green, reply) => {
                let _ = reply.send(match &self.canary {
                    Some(_) => Err(self.canary_in_progress()),
                    None => self.swap(*green).await,
                });
            }
            Control::Canary(start, reply) => {
                let _ = reply.send(self.start_canary(*start).await);
            }
            Control::Rollback { force, reply } if self.canary.is_some() => {
                let _ = reply.send(
                    self.end_canary_backwards("rolled back by the operator", force)
                        .await,
                );
            }
            Control::Rollback { force, reply } => {
                let _ = reply.send(self.rollback(force).await);
            }
            Control::Promote(reply) if self.canary.is_some() => {
                let promoted = self.complete_canary("promoted by the operator").await;
                let _ = reply.send(promoted.map(|_| self.retire_previous("promoted")));
            }
            Control::Promote(reply) => {
                let _ = reply.send(match self.previous.is_some() {
                    true => Ok(self.retire_previous("promoted")),
                    false => Err(format!(
                        "agent '{}' has no previous version kept warm: nothing to promote",
                        self.parts.identity.name
                    )),
                });
            }
            Control::Stop(_) => unreachable!("the runner handles Stop itself"),
        }
    }

    fn canary_in_progress(&self) -> String {
        let name = &self.parts.identity.name;
        format!("agent '{name}' runs a canary; `host rollback {name}` or `host promote {name}` it before another upgrade")
    }

    pub(super) fn processed(&self) -> u64 {
        self.parts.metrics.handled.get() + self.parts.metrics.errors.get()
    }

    pub(super) fn budget(&self) -> Duration {
        self.parts
            .limits
            .cpu_per_message
            .max(Duration::from_secs(1))
    }

    /// Drops the warm previous version; returns what happened in words.
    pub(super) fn retire_previous(&mut self, why: &str) -> String {
        let Some(previous) = self.previous.take() else {
            return String::new();
        };
        let text = format!(
            "v{} retired ({why}); v{} stays",
            previous.version, self.version
        );
        self.parts
            .status
            .set_serving(&self.version, &self.parts.code.digest(), None);
        self.parts
            .status
            .record(&self.parts.identity.name, text.clone());
        text
    }

    async fn swap(&mut self, mut green: Green) -> Result<SwapReport, String> {
        let name = self.parts.identity.name.clone();
        let budget = self.budget();
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
                self.parts.metrics.traps.inc();
                self.live = None;
                let _ = self.restart().await;
                let why = format!("upgrade to v{} aborted: v{} trapped taking its snapshot ({trap:#}); it was restarted from its last snapshot", green.version, self.version);
                self.parts.status.record(&name, why.clone());
                return Err(why);
            }
        };
        if let Err(refused) = self.admit_snapshot(&self.version, &state) {
            let why = format!(
                "upgrade to v{} refused: {refused}, so it cannot be handed over; v{} keeps serving, nothing lost; {}",
                green.version,
                self.version,
                super::snapshot_limit::FIX
            );
            self.parts.status.record(&name, why.clone());
            return Err(why);
        }
        green.live.begin_turn(None, budget);
        let refused = match green.live.call_restore(&self.version, &state).await {
            Ok(Ok(())) => None,
            Ok(Err(reason)) => Some(reason),
            Err(trap) => Some(format!("trapped: {trap:#}")),
        };
        if let Some(reason) = refused {
            let why = format!(
                "upgrade to v{} aborted: its restore refused the state of v{} ({reason}); v{} keeps serving, nothing lost",
                green.version, self.version, self.version
            );
            self.parts.status.record(&name, why.clone());
            return Err(why);
        }
        let pause = paused.elapsed();

        if self.previous.is_some() {
            self.retire_previous("replaced by a newer upgrade");
        }
        let blue = self.live.replace(green.live).expect("checked above");
        let from_version = std::mem::replace(&mut self.version, green.version);
        let blue_code = std::mem::replace(&mut self.parts.code, green.code);
        let state_bytes = state.len() as u64;
        // A trap in the new version restarts it from this state (its restore converts it).
        self.last_snapshot = Some((from_version.clone(), state.clone()));
        self.since_snapshot = 0;
        self.previous = Some(Previous {
            live: blue,
            version: from_version.clone(),
            code: blue_code,
            swap_state: state,
            retire_at: Instant::now() + self.rollback_window,
            processed_at_swap: self.processed(),
        });
        self.parts.status.set_serving(
            &self.version,
            &self.parts.code.digest(),
            Some(&from_version),
        );
        let report = SwapReport {
            agent: name.clone(),
            from_version,
            to_version: self.version.clone(),
            pause_us: pause.as_micros() as u64,
            state_bytes,
            lost_messages: 0,
            rollback_window_secs: self.rollback_window.as_secs(),
        };
        self.parts.status.record(
            &name,
            format!(
                "upgraded v{} → v{} (swap: {} bytes of state, paused {} µs); v{} kept warm for {} s",
                report.from_version, report.to_version, report.state_bytes, report.pause_us, report.from_version, report.rollback_window_secs
            ),
        );
        Ok(report)
    }

    async fn rollback(&mut self, force: bool) -> Result<SwapReport, String> {
        let name = self.parts.identity.name.clone();
        let budget = self.budget();
        let Some(mut previous) = self.previous.take() else {
            return Err(format!(
                "agent '{name}' has no previous version kept warm (no upgrade yet, or it was promoted or its rollback window closed); upgrade to the old component instead"
            ));
        };
        let paused = Instant::now();
        let state = match self.live.as_mut() {
            Some(green) => {
                green.begin_turn(None, budget);
                green.call_snapshot().await.map_err(|trap| {
                    format!("v{} trapped taking its snapshot ({trap:#})", self.version)
                })
            }
            None => Err(format!("v{} is restarting", self.version)),
        };
        // A state over the limit is not handed back: like a refusal of the old version.
        let state = state.and_then(|state| {
            self.admit_snapshot(&self.version, &state)
                .map(|()| state)
                .map_err(|refused| format!("{refused}; {}", super::snapshot_limit::FIX))
        });
        let refused = match &state {
            Ok(state) => {
                previous.live.begin_turn(None, budget);
                match previous.live.call_restore(&self.version, state).await {
                    Ok(Ok(())) => None,
                    Ok(Err(reason)) => Some((reason, false)),
                    Err(trap) => Some((format!("trapped: {trap:#}"), true)),
                }
            }
            Err(why) => Some((why.clone(), false)),
        };
        let mut lost = 0;
        if let Some((reason, blue_broken)) = refused {
            let since = self.processed().saturating_sub(previous.processed_at_swap);
            if !force {
                if blue_broken {
                    previous.live = self
                        .instance_with_state(
                            &previous.code,
                            &previous.version,
                            &previous.swap_state,
                        )
                        .await?;
                }
                self.previous = Some(previous);
                let why = format!(
                    "rollback refused: v{} cannot take the state of v{} ({reason}); v{} keeps serving. `host rollback {name} --force` restores v{} from its state at the swap, losing the effects of {since} message(s) handled since",
                    self.previous.as_ref().map(|p| p.version.as_str()).unwrap_or_default(), self.version, self.version,
                    self.previous.as_ref().map(|p| p.version.as_str()).unwrap_or_default()
                );
                self.parts.status.record(&name, why.clone());
                return Err(why);
            }
            // A restore that returned an error left the old version's state as it was at
            // the swap (the SDK's contract); one that trapped needs a fresh instance.
            if blue_broken {
                previous.live = self
                    .instance_with_state(&previous.code, &previous.version, &previous.swap_state)
                    .await?;
            }
            lost = since;
        }
        let state_bytes = state.as_ref().map(|s| s.len() as u64).unwrap_or(0);
        let pause = paused.elapsed();
        let from_version = std::mem::replace(&mut self.version, previous.version);
        self.live = Some(previous.live);
        self.parts.code = previous.code;
        self.last_snapshot = None;
        self.since_snapshot = 0;
        self.snapshot_to_store().await;
        self.parts
            .status
            .set_serving(&self.version, &self.parts.code.digest(), None);
        let report = SwapReport {
            agent: name.clone(),
            from_version,
            to_version: self.version.clone(),
            pause_us: pause.as_micros() as u64,
            state_bytes,
            lost_messages: lost,
            rollback_window_secs: 0,
        };
        let forced = if force && lost > 0 {
            format!(" (forced: the effects of {lost} message(s) were lost)")
        } else {
            String::new()
        };
        self.parts.status.record(
            &name,
            format!(
                "rolled back v{} → v{} (paused {} µs){forced}",
                report.from_version, report.to_version, report.pause_us
            ),
        );
        Ok(report)
    }

    /// A fresh instance of `code`, initialised, with `state` (written by `version`) restored.
    pub(super) async fn instance_with_state(
        &mut self,
        code: &Code,
        version: &str,
        state: &[u8],
    ) -> Result<Live, String> {
        let budget = self.budget();
        let p = &self.parts;
        let name = p.identity.name.clone();
        let me = p.identity.wit_ref();
        let fail = |e: String| format!("cannot re-create v{version} of agent '{name}': {e}");
        let mut live = instantiate(&p.engine, code, p.caps.clone(), p.limits)
            .await
            .map_err(|e| fail(format!("{e:#}")))?;
        live.begin_turn(None, budget);
        live.call_init(&me)
            .await
            .map_err(|e| fail(format!("{e:#}")))?
            .map_err(fail)?;
        live.begin_turn(None, budget);
        live.call_restore_on_start(version, state)
            .await
            .map_err(|e| fail(format!("{e:#}")))?
            .map_err(fail)?;
        Ok(live)
    }
}
