//! The node's LLM service: routes a model to its backend and runs every call through the
//! agent's budgets, the backend's breaker and limiter, retries with backoff, and one
//! wall-clock timeout around all of it.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::backend::{error_kind, http_client, Backend, Failure, Request, Response};
use super::breaker::Breaker;
use super::budget::Budget;
use super::limiter::Limiter;
use super::metrics::LlmAgentMetrics;
use super::ollama::OllamaBackend;
use super::openai::OpenAiBackend;
use crate::bindings::WitError;
use crate::config::{BackendKind, LlmSection, DEFAULT_BACKEND};
use crate::manifest::LlmGrants;
use crate::telemetry::metrics::AgentLabels;
use crate::telemetry::Metrics;

/// One backend with its limiter and breaker.
pub struct Slot {
    pub name: String,
    pub kind: BackendKind,
    pub url: String,
    backend: Arc<dyn Backend>,
    pub limiter: Arc<Limiter>,
    pub breaker: Breaker,
}

/// Every LLM backend of a node; shared by all agents.
pub struct LlmService {
    slots: Vec<Slot>,
    /// Model name → index in `slots`; other models go to slot 0 (Ollama at `ollama_url`).
    routes: HashMap<String, usize>,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
    metrics: Arc<Metrics>,
}

/// One agent's side of the service: its budgets and metric handles.
pub struct AgentLlm {
    /// The limiter's fairness key: one queue per agent.
    key: Arc<str>,
    budget: Budget,
    labels: AgentLabels,
    /// Per backend, in slot order; created on the first call, so agents that never use a
    /// backend add no series to `/metrics`.
    metrics: Vec<OnceLock<LlmAgentMetrics>>,
    /// Calls made and calls that failed, over every backend (a canary's LLM gate).
    outcomes: CallOutcomes,
}

/// How many LLM calls an agent made and how many failed, read without a label lookup.
#[derive(Default)]
pub struct CallOutcomes {
    pub calls: std::sync::atomic::AtomicU64,
    pub failures: std::sync::atomic::AtomicU64,
}

impl AgentLlm {
    /// `(calls, failures)` since the agent was loaded.
    pub fn call_outcomes(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.outcomes.calls.load(Relaxed),
            self.outcomes.failures.load(Relaxed),
        )
    }
}

impl LlmService {
    /// Builds the backends of `[llm]`. `default_timeout_ms` bounds a call when `[llm]
    /// timeout_ms` is unset. Nothing connects yet: a backend that is down only shows
    /// when it is called.
    pub fn new(
        config: &LlmSection,
        default_timeout_ms: u64,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<LlmService>> {
        let timeout = Duration::from_millis(config.timeout_ms.unwrap_or(default_timeout_ms));
        let http = http_client(Duration::from_millis(config.connect_timeout_ms), timeout)
            .map_err(anyhow::Error::msg)?;
        let mut slots = Vec::with_capacity(config.backends.len() + 1);
        let mut routes = HashMap::new();
        let stream = config
            .stream
            .then(|| Duration::from_millis(config.idle_timeout_ms));
        let default: Arc<dyn Backend> = Arc::new(
            OllamaBackend::new(DEFAULT_BACKEND, &config.ollama_url, http.clone(), stream)
                .map_err(anyhow::Error::msg)?,
        );
        let slot = |name: &str, kind, url: &str, parallel: u32, backend| {
            let m = metrics.llm.backend(name);
            tracing::info!(backend = %name, "LLM backend '{name}' ({}) at {url}: at most {parallel} calls in flight", BackendKind::as_str(kind));
            Slot {
                name: name.to_string(),
                kind,
                url: url.to_string(),
                backend,
                limiter: Limiter::new(
                    parallel as usize,
                    config.queue_capacity as usize,
                    m.in_flight.clone(),
                ),
                breaker: Breaker::new(
                    name,
                    config.breaker_failures,
                    Duration::from_millis(config.breaker_cooldown_ms),
                    m,
                ),
            }
        };
        slots.push(slot(
            DEFAULT_BACKEND,
            BackendKind::Ollama,
            &config.ollama_url,
            config.num_parallel,
            default,
        ));
        for b in &config.backends {
            let api_key = match &b.api_key_env {
                Some(var) => Some(std::env::var(var).map_err(|_| {
                    anyhow::anyhow!("LLM backend '{}': its api_key_env names {var}, which is not set; set it in the node's environment or remove api_key_env", b.name)
                })?),
                None => None,
            };
            let backend: Arc<dyn Backend> = match b.kind {
                BackendKind::Ollama => Arc::new(
                    OllamaBackend::new(&b.name, &b.url, http.clone(), stream)
                        .map_err(anyhow::Error::msg)?,
                ),
                BackendKind::OpenAi => {
                    Arc::new(OpenAiBackend::new(&b.name, &b.url, http.clone(), api_key))
                }
            };
            for model in &b.models {
                routes.insert(model.clone(), slots.len());
            }
            let parallel = b.num_parallel.unwrap_or(config.num_parallel);
            slots.push(slot(&b.name, b.kind, &b.url, parallel, backend));
        }
        Ok(Arc::new(LlmService {
            slots,
            routes,
            timeout,
            retries: config.retries,
            backoff: Duration::from_millis(config.backoff_ms),
            metrics,
        }))
    }

    /// The backend serving `model`.
    pub fn route(&self, model: &str) -> &Slot {
        &self.slots[self.routes.get(model).copied().unwrap_or(0)]
    }

    /// A backend by name (for status and tests).
    pub fn backend(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.name == name)
    }

    /// The state one agent keeps: budgets from its grants, metric handles per backend.
    pub fn agent(
        &self,
        agent_ref: &str,
        name: &str,
        grants: &LlmGrants,
        labels: &AgentLabels,
    ) -> AgentLlm {
        AgentLlm {
            key: Arc::from(agent_ref),
            budget: Budget::new(name, grants),
            labels: labels.clone(),
            metrics: self.slots.iter().map(|_| OnceLock::new()).collect(),
            outcomes: CallOutcomes::default(),
        }
    }

    /// Runs one call of `agent` (the model grant is already checked).
    pub async fn call(
        &self,
        agent: &AgentLlm,
        model: &str,
        request: Request,
    ) -> Result<Response, WitError> {
        let index = self.routes.get(model).copied().unwrap_or(0);
        let slot = &self.slots[index];
        let m = agent.metrics[index]
            .get_or_init(|| self.metrics.llm.for_agent(&agent.labels, &slot.name));
        m.calls.inc();
        let counted = &agent.outcomes;
        counted
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let kind = request.kind();
        let result = self.call_on(slot, agent, m, model, request).await;
        match &result {
            Ok(response) => {
                let (prompt, completion) = response.tokens();
                m.prompt_tokens.inc_by(u64::from(prompt));
                m.completion_tokens.inc_by(u64::from(completion));
                agent
                    .budget
                    .charge(u64::from(prompt) + u64::from(completion));
            }
            Err(e) => {
                counted
                    .failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                m.error(error_kind(e));
                tracing::warn!(agent = %m.labels.agent, backend = %slot.name, "LLM {kind} with model '{model}' failed: {}", super::backend::describe(e));
            }
        }
        result
    }

    async fn call_on(
        &self,
        slot: &Slot,
        agent: &AgentLlm,
        m: &LlmAgentMetrics,
        model: &str,
        mut request: Request,
    ) -> Result<Response, WitError> {
        // A refused call (breaker open) costs the agent nothing from its budgets.
        slot.breaker
            .check()
            .map_err(|refused| WitError::Unavailable(refused.0))?;
        match request.options_mut() {
            Some(options) => options.max_tokens = agent.budget.admit(options.max_tokens)?,
            None => {
                agent.budget.admit(None)?;
            }
        }
        match tokio::time::timeout(self.timeout, self.attempts(slot, agent, m, model, &request))
            .await
        {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(backend = %slot.name, "LLM call with model '{model}' got no answer within {} ms ([llm] timeout_ms)", self.timeout.as_millis());
                Err(WitError::Timeout)
            }
        }
    }

    /// Attempts until success, a failure retrying cannot fix, or the retries are spent.
    async fn attempts(
        &self,
        slot: &Slot,
        agent: &AgentLlm,
        m: &LlmAgentMetrics,
        model: &str,
        request: &Request,
    ) -> Result<Response, WitError> {
        let mut attempt: u32 = 0;
        loop {
            let queued = Instant::now();
            let permit = slot.limiter.acquire(&agent.key).await.map_err(|full| {
                WitError::Unavailable(format!(
                    "LLM backend '{}' already has {} calls waiting, its limit ([llm] queue_capacity = {}); retry later, or raise queue_capacity or num_parallel",
                    slot.name, full.waiting, full.capacity
                ))
            })?;
            m.queue_wait.observe(queued.elapsed().as_secs_f64());
            let admission = slot
                .breaker
                .admit()
                .map_err(|refused| WitError::Unavailable(refused.0))?;
            let result = slot.backend.call(model, request).await;
            drop(permit);
            let failure: Failure = match result {
                Ok(response) => {
                    admission.success();
                    return Ok(response);
                }
                Err(f) => f,
            };
            if failure.unhealthy {
                admission.failure(&failure.describe());
            } else {
                admission.success();
            }
            if !failure.retry || attempt >= self.retries {
                return Err(match failure.error {
                    WitError::Unavailable(why) if attempt > 0 => {
                        WitError::Unavailable(format!("{why} (tried {} times)", attempt + 1))
                    }
                    other => other,
                });
            }
            let delay = self.backoff.saturating_mul(1 << attempt.min(16));
            tracing::debug!(backend = %slot.name, "LLM call failed ({}); retry {} in {} ms", failure.describe(), attempt + 1, delay.as_millis());
            tokio::time::sleep(delay).await;
            attempt += 1;
            if let Err(refused) = slot.breaker.check() {
                return Err(WitError::Unavailable(refused.0));
            }
        }
    }
}
