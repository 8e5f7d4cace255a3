//! Gradual upgrades on a node: a canary of one agent, and a component upgraded across every
//! agent running it in waves, with gates checked between the waves.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::Node;
use crate::agent::canary::{CanaryOutcome, CanaryStart, CanaryStarted};
use crate::agent::gates::{self, GateReading, Window};
use crate::agent::instance::{instantiate, Code};
use crate::agent::plan::RolloutPlan;
use crate::agent::runner::Control;
use crate::agent::upgrade::Green;
use crate::agent::AgentCaps;
use crate::engine::CompiledAgent;
use crate::telemetry::AgentMetrics;

/// A canary that started; `finished` tells how it ended.
pub struct CanaryRun {
    pub started: CanaryStarted,
    pub finished: oneshot::Receiver<CanaryOutcome>,
}

impl CanaryRun {
    /// Waits for the canary to complete or roll back.
    pub async fn outcome(self) -> anyhow::Result<CanaryOutcome> {
        self.finished.await.map_err(|_| {
            anyhow::anyhow!(
                "agent '{}' stopped before its canary ended",
                self.started.agent
            )
        })
    }
}

/// What `host upgrade --component` did, wave by wave.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WaveReport {
    pub selector: String,
    pub to_digest: String,
    /// Every agent that ran the component, in upgrade order.
    pub agents: Vec<String>,
    pub waves: Vec<WaveResult>,
    /// True when every agent was upgraded and every wave passed its gates.
    pub completed: bool,
    pub text: String,
}

/// One wave: which agents, the gate readings, and whether it was rolled back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WaveResult {
    pub percent: u8,
    pub agents: Vec<String>,
    pub readings: Vec<GateReading>,
    pub rolled_back: bool,
    pub text: String,
}

/// Counters of one agent at the start of a wave's interval.
struct Baseline {
    metrics: Arc<AgentMetrics>,
    caps: Arc<AgentCaps>,
    handled: u64,
    errors: u64,
    traps: u64,
    llm: (u64, u64),
}

impl Baseline {
    fn take(metrics: Arc<AgentMetrics>, caps: Arc<AgentCaps>) -> Baseline {
        Baseline {
            handled: metrics.handled.get(),
            errors: metrics.errors.get(),
            traps: metrics.traps.get(),
            llm: caps.llm.call_outcomes(),
            metrics,
            caps,
        }
    }

    /// Adds what happened since the baseline to `window`.
    fn add_to(&self, window: &mut Window) {
        let m = &self.metrics;
        let llm = self.caps.llm.call_outcomes();
        window.handled += m.handled.get() - self.handled;
        window.errors += m.errors.get() - self.errors;
        window.traps += m.traps.get() - self.traps;
        window.llm_calls += llm.0 - self.llm.0;
        window.llm_failures += llm.1 - self.llm.1;
    }
}

impl Node {
    /// Compiles and type-checks a new component off the hot path.
    async fn compile_upgrade(
        &self,
        what: &str,
        component: &Path,
    ) -> anyhow::Result<Arc<CompiledAgent>> {
        let engine = self.engine.clone();
        let path = component.to_path_buf();
        tokio::task::spawn_blocking(move || engine.compile_file(&path, None))
            .await?
            .map_err(|e| {
                anyhow::anyhow!("upgrade of {what} refused, the running version is untouched: {e}")
            })
    }

    /// Green for agent `name`: compiled, instantiated and initialised, nothing running yet.
    pub(super) async fn prepare_green(
        &self,
        name: &str,
        component: &Path,
    ) -> anyhow::Result<Green> {
        let compiled = self
            .compile_upgrade(&format!("'{name}'"), component)
            .await?;
        self.green_of(name, compiled, component).await
    }

    async fn green_of(
        &self,
        name: &str,
        compiled: Arc<CompiledAgent>,
        component: &Path,
    ) -> anyhow::Result<Green> {
        let (code, caps, limits, pin, identity) = {
            let agents = self.agents.lock().await;
            let a = agents
                .get(name)
                .ok_or_else(|| self.unknown_agent(name, &agents))?;
            let (code, caps, limits) = a.instance_parts();
            (
                code,
                caps,
                limits,
                a.manifest.agent.sha256.clone(),
                a.identity.clone(),
            )
        };
        if !code.is_component() {
            anyhow::bail!("agent '{name}' runs native code; only components can be upgraded");
        }
        if let Some(pinned) = pin.filter(|p| !p.eq_ignore_ascii_case(&compiled.digest)) {
            anyhow::bail!(
                "upgrade of '{name}' refused: its manifest pins sha256 {pinned}, and {} has {}; update the pin in the manifest and load it again",
                component.display(),
                compiled.digest
            );
        }
        let code = Code::Wasm(compiled);
        let mut live = instantiate(&self.engine, &code, caps, limits).await?;
        let budget = limits.cpu_per_message.max(Duration::from_secs(1));
        live.begin_turn(None, budget);
        let version = live
            .call_version()
            .await
            .map_err(|e| anyhow::anyhow!("the new version trapped in `version`: {e:#}"))?;
        live.begin_turn(None, budget);
        live.call_init(&identity.wit_ref())
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "v{version} trapped in `init`: {e:#}; the running version is untouched"
                )
            })?
            .map_err(|e| {
                anyhow::anyhow!("v{version}'s `init` failed: {e}; the running version is untouched")
            })?;
        Ok(Green {
            live,
            version,
            code,
        })
    }

    /// Starts a canary of agent `name` on the component at `component` (see
    /// `agent/canary.rs`); returns once both versions serve.
    pub async fn start_canary(
        &self,
        name: &str,
        component: &Path,
        plan: RolloutPlan,
    ) -> anyhow::Result<CanaryRun> {
        plan.validate("--steps").map_err(anyhow::Error::msg)?;
        let green = self.prepare_green(name, component).await?;
        let (tell, finished) = oneshot::channel();
        let start = CanaryStart {
            green,
            plan,
            conversation_header: self.config.node.conversation_header.clone(),
            finished: Some(tell),
        };
        let started = self
            .controls(name)
            .await?
            .ask(|reply| Control::Canary(Box::new(start), reply))
            .await?
            .map_err(anyhow::Error::msg)?;
        Ok(CanaryRun { started, finished })
    }

    /// Upgrades every agent running the component `selector` names (a digest prefix of at
    /// least 6 hex digits, or the component's file name without `.wasm`) in waves: each
    /// wave swaps its share of the agents, then the gates compare the wave with the agents
    /// not upgraded yet over `plan.interval`; a failing wave is rolled back and the upgrade
    /// stops there (earlier waves keep the new version).
    pub async fn upgrade_component(
        &self,
        selector: &str,
        component: &Path,
        plan: RolloutPlan,
    ) -> anyhow::Result<WaveReport> {
        plan.validate("--waves").map_err(anyhow::Error::msg)?;
        let compiled = self
            .compile_upgrade(&format!("component '{selector}'"), component)
            .await?;
        let agents = self.agents_running(selector, &compiled.digest).await?;
        let mut report = WaveReport {
            selector: selector.to_string(),
            to_digest: compiled.digest.clone(),
            agents: agents.clone(),
            waves: Vec::new(),
            completed: false,
            text: String::new(),
        };
        let mut done = 0;
        for &percent in &plan.steps {
            let upto = (agents.len() * usize::from(percent)).div_ceil(100);
            if upto <= done {
                continue;
            }
            let wave: Vec<String> = agents[done..upto].to_vec();
            let rest: Vec<String> = agents[upto..].to_vec();
            let result = self
                .run_wave(percent, &wave, &rest, &compiled, component, &plan)
                .await;
            let failed = result.rolled_back;
            tracing::info!(selector, "{}", result.text);
            report.waves.push(result);
            if failed {
                report.text = format!(
                    "upgrade of component '{selector}' stopped at the {percent}% wave: {} agent(s) keep the new version, {} the old",
                    done,
                    agents.len() - done
                );
                return Ok(report);
            }
            done = upto;
        }
        report.completed = true;
        report.text = format!(
            "component '{selector}' upgraded on {} agent(s) in {} wave(s)",
            agents.len(),
            report.waves.len()
        );
        Ok(report)
    }

    /// Names of the agents running the component `selector` names, not yet at `new_digest`.
    async fn agents_running(
        &self,
        selector: &str,
        new_digest: &str,
    ) -> anyhow::Result<Vec<String>> {
        let by_digest = selector.len() >= 6 && selector.chars().all(|c| c.is_ascii_hexdigit());
        let agents = self.agents.lock().await;
        let mut running = Vec::new();
        let mut components = std::collections::BTreeSet::new();
        for (name, a) in agents.iter() {
            let digest = a.status.digest.lock().expect("status lock").clone();
            let file = self.engine.component_name(&digest).unwrap_or_default();
            components.insert(format!("{file} ({})", &digest[..digest.len().min(12)]));
            let matches = match by_digest {
                true => digest.starts_with(&selector.to_ascii_lowercase()),
                false => file == selector,
            };
            if matches && digest != new_digest {
                running.push(name.clone());
            }
        }
        if running.is_empty() {
            anyhow::bail!(
                "--component {selector}: no agent runs that component (or all run the new one already); give a digest prefix of at least 6 hex digits or a component file name without .wasm. Running: {}",
                components.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        running.sort();
        Ok(running)
    }

    async fn run_wave(
        &self,
        percent: u8,
        wave: &[String],
        rest: &[String],
        compiled: &Arc<CompiledAgent>,
        component: &Path,
        plan: &RolloutPlan,
    ) -> WaveResult {
        let mut result = WaveResult {
            percent,
            agents: wave.to_vec(),
            readings: Vec::new(),
            rolled_back: false,
            text: String::new(),
        };
        let mut swapped = Vec::new();
        for name in wave {
            let outcome = match self.green_of(name, compiled.clone(), component).await {
                Ok(green) => match self.controls(name).await {
                    Ok(c) => c
                        .ask(|reply| Control::Swap(Box::new(green), reply))
                        .await
                        .and_then(|r| r.map_err(anyhow::Error::msg)),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match outcome {
                Ok(_) => swapped.push(name.clone()),
                Err(e) => {
                    let why = format!("the swap of '{name}' failed: {e:#}");
                    result.text = self.roll_back_wave(percent, &swapped, &why).await;
                    result.rolled_back = true;
                    return result;
                }
            }
        }
        let mut failed_in_row = 0;
        loop {
            let (green, blue) = (self.baselines(wave).await, self.baselines(rest).await);
            tokio::time::sleep(plan.interval).await;
            let (mut gw, mut bw) = (Window::default(), Window::default());
            green.iter().for_each(|b| b.add_to(&mut gw));
            blue.iter().for_each(|b| b.add_to(&mut bw));
            let check = gates::evaluate(&plan.gates, &mut gw, &mut bw, 0);
            result.readings = check.readings.clone();
            if !check.failed() {
                result.text = format!(
                    "wave {percent}%: {} upgraded, gates passed",
                    wave.join(", ")
                );
                return result;
            }
            failed_in_row += 1;
            if check.trap_storm() || failed_in_row >= plan.failed_checks {
                let why = format!("gates failed: {}", check.breaches());
                result.text = self.roll_back_wave(percent, wave, &why).await;
                result.rolled_back = true;
                return result;
            }
        }
    }

    async fn baselines(&self, names: &[String]) -> Vec<Baseline> {
        let agents = self.agents.lock().await;
        names
            .iter()
            .filter_map(|n| agents.get(n))
            .map(|a| Baseline::take(a.metrics.clone(), a.instance_parts().1))
            .collect()
    }

    /// Rolls the wave's upgraded agents back; returns what happened in words.
    async fn roll_back_wave(&self, percent: u8, names: &[String], why: &str) -> String {
        let mut failures = Vec::new();
        for name in names {
            if let Err(e) = self.rollback(name, false).await {
                failures.push(format!("'{name}': {e:#}"));
            }
            let agents = self.agents.lock().await;
            if let Some(a) = agents.get(name) {
                a.metrics.upgrade_event("wave_rolled_back");
                a.status
                    .record(name, format!("wave {percent}% rolled back ({why})"));
            }
        }
        let mut text = format!(
            "wave {percent}% rolled back ({why}); {} agent(s) back on the old version",
            names.len() - failures.len()
        );
        if !failures.is_empty() {
            text.push_str(&format!("; rollback failed for {}", failures.join(", ")));
        }
        text
    }
}
