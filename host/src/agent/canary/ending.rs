//! How a canary ends: backwards (blue serves everything with the one state: an operator's
//! rollback or a breached gate) or forwards (green serves everything, blue kept warm for
//! the rollback window as after a swap; a completed step plan or `host promote`).

use std::time::Instant;

use super::{Canary, CanaryOutcome, HandoffFailed};
use crate::agent::runner::Runner;
use crate::agent::upgrade::{Previous, SwapReport};

impl Runner {
    /// Ends the canary with blue serving everything and holding the one state; green is
    /// retired. `force` accepts going back to blue's state at the canary's start when blue
    /// cannot take green's (the lost messages are counted); without it that is refused.
    pub(in crate::agent) async fn end_canary_backwards(
        &mut self,
        why: &str,
        force: bool,
    ) -> Result<SwapReport, String> {
        let name = self.parts.identity.name.clone();
        let paused = Instant::now();
        let green_live = self.canary.as_ref().map(|c| c.green_live);
        let Some(green_live) = green_live else {
            return Err(format!("agent '{name}' runs no canary"));
        };
        let mut lost = 0;
        if green_live {
            let blue_usable = self.canary.as_ref().is_some_and(|c| c.parked.is_some());
            let failed = match blue_usable {
                true => self.handoff().await.err(),
                false => Some(HandoffFailed::RestoreTrapped("blue is gone".into())),
            };
            if let Some(failed) = failed {
                if matches!(failed, HandoffFailed::AgentFailed) {
                    return Err(format!("agent '{name}' failed during the rollback"));
                }
                let c = self.canary.as_ref().expect("a canary");
                let since = self.processed().saturating_sub(c.processed_at_start);
                if !force {
                    let why = format!(
                        "rollback refused: v{} cannot take the state of v{}: {}; the canary goes on. `host rollback {name} --force` restores v{} from its state at the canary's start, losing the effects of {since} message(s) handled since",
                        c.blue_version, c.green_version, failed.text(), c.blue_version
                    );
                    self.parts.status.record(&name, why.clone());
                    return Err(why);
                }
                // Blue's own instance may be gone (its restore trapped): a fresh one from
                // its code and its state at the canary's start.
                let (code, version, state) = (
                    c.blue_code.clone(),
                    c.blue_version.clone(),
                    c.blue_state_at_start.clone(),
                );
                let blue = self.instance_with_state(&code, &version, &state).await?;
                let c = self.canary.as_mut().expect("a canary");
                let green = self.live.replace(blue).expect("green serves");
                drop(green);
                self.version = version.clone();
                self.parts.code = code;
                self.last_snapshot = Some((version, state));
                c.parked = None;
                c.green_live = false;
                lost = since;
            }
        }
        let c = self.canary.take().expect("a canary");
        let report = SwapReport {
            agent: name.clone(),
            from_version: c.green_version.clone(),
            to_version: c.blue_version.clone(),
            pause_us: paused.elapsed().as_micros() as u64,
            state_bytes: self
                .last_snapshot
                .as_ref()
                .map_or(0, |(_, s)| s.len() as u64),
            lost_messages: lost,
            rollback_window_secs: 0,
        };
        let lost_text = match lost {
            0 => String::new(),
            n => format!(" (forced: the effects of {n} message(s) were lost)"),
        };
        let text = format!(
            "canary rolled back at {}%: v{} retired, v{} serves everything with the state ({why}){lost_text}",
            c.percent(),
            c.green_version,
            c.blue_version
        );
        self.finish_canary(c, false, text);
        Ok(report)
    }

    /// Ends the canary with green serving everything; blue stays warm for the rollback
    /// window, exactly as after a swap.
    pub(in crate::agent) async fn complete_canary(
        &mut self,
        why: &str,
    ) -> Result<SwapReport, String> {
        let name = self.parts.identity.name.clone();
        let paused = Instant::now();
        // Blue's state in blue's own form is what `rollback --force` would go back to: when
        // green serves, one round trip produces it.
        for _ in 0..2 {
            let green_live = self.canary.as_ref().map(|c| c.green_live);
            match green_live {
                None => return Err(format!("agent '{name}' runs no canary")),
                Some(true) if self.last_snapshot_is_blue() => break,
                Some(_) => {}
            }
            if let Err(failed) = self.handoff().await {
                let why = format!(
                    "the canary cannot complete: a state hand-off failed: {}",
                    failed.text()
                );
                // A state over the snapshot limit is intact where it is: the canary goes
                // on rather than being forced back to blue's state at its start.
                if !matches!(
                    failed,
                    HandoffFailed::AgentFailed | HandoffFailed::TooLarge(_)
                ) {
                    let _ = self.end_canary_backwards(&why, true).await;
                }
                return Err(why);
            }
        }
        let mut c = self.canary.take().expect("a canary");
        let blue = c.parked.take().expect("blue is parked after the hand-off");
        let (_, swap_state) = self.last_snapshot.clone().expect("set by the hand-off");
        let state_bytes = swap_state.len() as u64;
        self.previous = Some(Previous {
            live: blue.live,
            version: blue.version,
            code: blue.code,
            swap_state,
            retire_at: Instant::now() + self.rollback_window,
            processed_at_swap: self.processed(),
        });
        self.parts.status.set_serving(
            &self.version,
            &self.parts.code.digest(),
            Some(&c.blue_version),
        );
        let report = SwapReport {
            agent: name,
            from_version: c.blue_version.clone(),
            to_version: c.green_version.clone(),
            pause_us: paused.elapsed().as_micros() as u64,
            state_bytes,
            lost_messages: 0,
            rollback_window_secs: self.rollback_window.as_secs(),
        };
        c.step = c.plan.steps.len() - 1;
        let text = format!(
            "canary complete: v{} serves every conversation ({why}); v{} kept warm for {} s",
            c.green_version,
            c.blue_version,
            self.rollback_window.as_secs()
        );
        self.finish_canary(c, true, text);
        Ok(report)
    }

    fn last_snapshot_is_blue(&self) -> bool {
        match (&self.canary, &self.last_snapshot) {
            (Some(c), Some((version, _))) => *version == c.blue_version,
            _ => false,
        }
    }

    fn finish_canary(&mut self, mut c: Box<Canary>, completed: bool, text: String) {
        let name = self.parts.identity.name.clone();
        self.parts.metrics.canary_percent.set(0);
        self.parts.metrics.upgrade_event(match completed {
            true => "canary_completed",
            false => "canary_rolled_back",
        });
        if !completed {
            self.parts
                .status
                .set_serving(&self.version, &self.parts.code.digest(), None);
        }
        self.parts.status.set_canary(None);
        self.parts.status.record(&name, text.clone());
        if let Some(tell) = c.finished.take() {
            let _ = tell.send(CanaryOutcome {
                agent: name,
                completed,
                text,
            });
        }
    }
}
