//! LLM inference for agents (docs/design.md, The WIT world and Backends): the backends
//! (Ollama through ollama-rs, OpenAI-compatible servers), and what keeps dozens of agents from overrunning them: a
//! node-wide limiter per backend that is fair across agents, per-agent budgets from the
//! manifest, retries with backoff, a circuit breaker per backend and a wall-clock timeout.
//!
//! The `llm` capability (`crate::capabilities::llm`) checks the manifest and hands calls
//! to [`LlmService`].

pub mod backend;
pub mod breaker;
pub mod budget;
pub mod limiter;
pub mod metrics;
pub mod ndjson;
pub mod ollama;
pub mod openai;
mod service;

pub use backend::{Request, Response};
pub use service::{AgentLlm, LlmService, Slot};
