//! `agent:host/llm`: chat, generate, embed.
//!
//! Grant: `[llm] models`. Until the node has an LLM backend configured, every permitted
//! call answers `unavailable` naming the setting to add.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use super::{deny, HostResult};
use crate::agent::{AgentStore, Identity};
use crate::bindings::agent::host::llm::{self, ChatMessage, Completion, Options};
use crate::bindings::WitError;
use crate::manifest::LlmGrants;
use crate::telemetry::AgentMetrics;

pub struct LlmCtx {
    pub identity: Identity,
    pub grants: LlmGrants,
    pub metrics: Arc<AgentMetrics>,
}

impl LlmCtx {
    // ---- manifest check ---------------------------------------------------------------
    fn check_model(&self, model: &str) -> Result<(), WitError> {
        if self.grants.models.iter().any(|m| m == "*" || m == model) {
            return Ok(());
        }
        Err(deny(
            &self.identity,
            &self.metrics,
            format!(
                "agent '{}' may not use model '{model}': add \"{model}\" to [llm] models in its manifest",
                self.identity.name
            ),
        ))
    }

    fn no_backend(&self) -> WitError {
        WitError::Unavailable(
            "this node has no LLM backend configured: set [llm] ollama_url in the node config or the OLLAMA_HOST environment variable".into(),
        )
    }

    fn call<T>(&self, model: &str) -> Result<T, WitError> {
        self.check_model(model)?;
        Err(self.no_backend())
    }
}

pub struct LlmView<'a> {
    ctx: &'a LlmCtx,
}

struct LlmData;

impl HasData for LlmData {
    type Data<'a> = LlmView<'a>;
}

pub fn add_to_linker(linker: &mut Linker<AgentStore>) -> wasmtime::Result<()> {
    llm::add_to_linker::<AgentStore, LlmData>(linker, |s| LlmView { ctx: &s.caps.llm })
}

impl llm::Host for LlmView<'_> {
    async fn chat(
        &mut self,
        model: String,
        _messages: Vec<ChatMessage>,
        _options: Options,
    ) -> HostResult<Completion> {
        Ok(self.ctx.call(&model))
    }

    async fn generate(
        &mut self,
        model: String,
        _prompt: String,
        _options: Options,
    ) -> HostResult<Completion> {
        Ok(self.ctx.call(&model))
    }

    async fn embed(&mut self, model: String, _inputs: Vec<String>) -> HostResult<Vec<Vec<f32>>> {
        Ok(self.ctx.call(&model))
    }
}
