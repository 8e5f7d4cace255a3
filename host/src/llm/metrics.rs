//! The LLM metric families: per agent and backend (calls, errors, tokens, queue wait) and
//! per backend (in flight, breaker state and its transitions).
//!
//! They live in the node's one registry (see [`crate::telemetry::Metrics`]), so `/metrics`
//! shows them next to the message counters of the same agent.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::telemetry::metrics::AgentLabels;

/// One agent's calls to one backend.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LlmLabels {
    pub agent: String,
    pub cluster: String,
    pub backend: String,
}

/// A failed call, by the error case the agent received.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LlmErrorLabels {
    pub agent: String,
    pub cluster: String,
    pub backend: String,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub backend: String,
    pub to: String,
}

type WaitFamily = Family<LlmLabels, Histogram, fn() -> Histogram>;

fn wait_histogram() -> Histogram {
    // 10 µs .. ~40 s
    Histogram::new(exponential_buckets(0.00001, 4.0, 12))
}

/// Every LLM metric family of a node. Cheap to clone (the families are shared).
#[derive(Clone)]
pub struct LlmFamilies {
    calls: Family<LlmLabels, Counter>,
    errors: Family<LlmErrorLabels, Counter>,
    prompt_tokens: Family<LlmLabels, Counter>,
    completion_tokens: Family<LlmLabels, Counter>,
    queue_wait: WaitFamily,
    in_flight: Family<BackendLabels, Gauge>,
    breaker_state: Family<BackendLabels, Gauge>,
    breaker_transitions: Family<TransitionLabels, Counter>,
    /// Backend names, so an unloaded agent's series can be removed for each.
    backends: Arc<Mutex<Vec<String>>>,
}

impl Default for LlmFamilies {
    fn default() -> Self {
        LlmFamilies {
            calls: Family::default(),
            errors: Family::default(),
            prompt_tokens: Family::default(),
            completion_tokens: Family::default(),
            queue_wait: Family::new_with_constructor(wait_histogram as fn() -> Histogram),
            in_flight: Family::default(),
            breaker_state: Family::default(),
            breaker_transitions: Family::default(),
            backends: Arc::default(),
        }
    }
}

/// Error label values, one per WIT error case.
pub const ERROR_KINDS: [&str; 6] = [
    "denied",
    "unavailable",
    "timeout",
    "invalid",
    "quota_exceeded",
    "internal",
];

impl LlmFamilies {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "llm_calls",
            "LLM calls an agent made, per backend (refused calls included)",
            self.calls.clone(),
        );
        registry.register(
            "llm_errors",
            "LLM calls that returned an error to the agent, by error case",
            self.errors.clone(),
        );
        registry.register(
            "llm_prompt_tokens",
            "Prompt tokens of an agent's LLM calls",
            self.prompt_tokens.clone(),
        );
        registry.register(
            "llm_completion_tokens",
            "Completion tokens of an agent's LLM calls",
            self.completion_tokens.clone(),
        );
        registry.register(
            "llm_queue_wait_seconds",
            "Time an LLM call waited for a slot of the backend's limiter",
            self.queue_wait.clone(),
        );
        registry.register(
            "llm_in_flight",
            "LLM calls in flight on a backend (never more than its num_parallel)",
            self.in_flight.clone(),
        );
        registry.register(
            "llm_breaker_state",
            "Circuit breaker of a backend: 0 closed, 1 half-open, 2 open",
            self.breaker_state.clone(),
        );
        registry.register(
            "llm_breaker_transitions",
            "Circuit breaker state changes of a backend, by the state entered",
            self.breaker_transitions.clone(),
        );
    }

    /// Records a backend so its series can be cleaned up; returns its gauges.
    pub fn backend(&self, name: &str) -> BackendMetrics {
        let mut names = self.backends.lock().expect("llm metrics lock");
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
        let labels = BackendLabels {
            backend: name.to_string(),
        };
        BackendMetrics {
            in_flight: self.in_flight.get_or_create(&labels).clone(),
            breaker_state: self.breaker_state.get_or_create(&labels).clone(),
            transitions: self.breaker_transitions.clone(),
            backend: name.to_string(),
        }
    }

    /// The handles of one agent on one backend.
    pub fn for_agent(&self, agent: &AgentLabels, backend: &str) -> LlmAgentMetrics {
        let labels = LlmLabels {
            agent: agent.agent.clone(),
            cluster: agent.cluster.clone(),
            backend: backend.to_string(),
        };
        LlmAgentMetrics {
            calls: self.calls.get_or_create(&labels).clone(),
            prompt_tokens: self.prompt_tokens.get_or_create(&labels).clone(),
            completion_tokens: self.completion_tokens.get_or_create(&labels).clone(),
            queue_wait: self.queue_wait.get_or_create(&labels).clone(),
            errors: self.errors.clone(),
            labels,
        }
    }

    /// Forgets an unloaded agent's series on every backend.
    pub(crate) fn remove_agent(&self, agent: &AgentLabels) {
        let names = self.backends.lock().expect("llm metrics lock").clone();
        for backend in names {
            let labels = LlmLabels {
                agent: agent.agent.clone(),
                cluster: agent.cluster.clone(),
                backend,
            };
            self.calls.remove(&labels);
            self.prompt_tokens.remove(&labels);
            self.completion_tokens.remove(&labels);
            self.queue_wait.remove(&labels);
            for error in ERROR_KINDS {
                self.errors.remove(&LlmErrorLabels {
                    agent: labels.agent.clone(),
                    cluster: labels.cluster.clone(),
                    backend: labels.backend.clone(),
                    error: error.to_string(),
                });
            }
        }
    }
}

/// One agent's handles on one backend, looked up once when the agent loads.
#[derive(Clone)]
pub struct LlmAgentMetrics {
    pub labels: LlmLabels,
    pub calls: Counter,
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
    pub queue_wait: Histogram,
    errors: Family<LlmErrorLabels, Counter>,
}

impl LlmAgentMetrics {
    /// Counts a failed call under its error case (`unavailable`, `timeout`, ...).
    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&LlmErrorLabels {
                agent: self.labels.agent.clone(),
                cluster: self.labels.cluster.clone(),
                backend: self.labels.backend.clone(),
                error: kind.to_string(),
            })
            .inc();
    }
}

/// A backend's own gauges.
#[derive(Clone)]
pub struct BackendMetrics {
    pub in_flight: Gauge,
    pub breaker_state: Gauge,
    transitions: Family<TransitionLabels, Counter>,
    backend: String,
}

impl BackendMetrics {
    /// Counts a breaker state change to `to` (`open`, `half_open`, `closed`).
    pub fn transition(&self, to: &str) {
        self.transitions
            .get_or_create(&TransitionLabels {
                backend: self.backend.clone(),
                to: to.to_string(),
            })
            .inc();
    }
}
