//! `agent:host/llm`: chat, generate, embed.
//!
//! Grant: `[llm] models` (and the budgets `max_tokens_per_minute`,
//! `max_requests_per_minute`, `max_tokens_per_call`). A permitted call goes to the node's
//! [`LlmService`], which routes it to a backend through the node-wide limiter and breaker.
//! Time spent waiting for the backend is host time: it is not charged to the agent's CPU
//! budget for the message.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{HasData, Linker};

use super::{deny, HostResult};
use crate::agent::{AgentStore, Identity};
use crate::bindings::agent::host::llm::{self, ChatMessage, Completion, Options};
use crate::bindings::WitError;
use crate::llm::{AgentLlm, LlmService, Request, Response};
use crate::manifest::LlmGrants;
use crate::telemetry::AgentMetrics;

/// Longest model name accepted (Ollama names are far shorter).
const MAX_MODEL_NAME: usize = 256;
/// Most inputs one `embed` call may carry.
pub const MAX_EMBED_INPUTS: usize = 1024;
/// Most text one call may carry (messages, prompt, stop strings, inputs): far beyond any
/// model's context window, so only a runaway agent meets it, and then gets `invalid`
/// before its text is sent on.
pub const MAX_INPUT_BYTES: usize = 2 << 20;

/// What the llm import of one agent needs; shared by all its instances, so the budgets
/// are the agent's, not the instance's.
pub struct LlmCtx {
    pub identity: Identity,
    pub grants: LlmGrants,
    pub metrics: Arc<AgentMetrics>,
    pub service: Arc<LlmService>,
    agent: AgentLlm,
}

impl LlmCtx {
    pub fn new(
        identity: Identity,
        grants: LlmGrants,
        metrics: Arc<AgentMetrics>,
        service: Arc<LlmService>,
    ) -> LlmCtx {
        let agent = service.agent(
            &identity.agent_ref,
            &identity.name,
            &grants,
            &metrics.labels,
        );
        LlmCtx {
            identity,
            grants,
            metrics,
            service,
            agent,
        }
    }

    /// `(calls, failures)` of this agent's LLM calls so far (a canary's LLM gate).
    pub fn call_outcomes(&self) -> (u64, u64) {
        self.agent.call_outcomes()
    }

    // ---- manifest check ---------------------------------------------------------------
    fn check_model(&self, model: &str) -> Result<(), WitError> {
        if model.is_empty()
            || model.len() > MAX_MODEL_NAME
            || model.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(WitError::Invalid(format!(
                "{model:?} is not a model name; expected a name like \"llama3.2:1b\""
            )));
        }
        if self.grants.allows_model(model) {
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

    /// Runs one call: manifest check, argument check, then the service.
    async fn call(&self, model: &str, request: Request) -> Result<Response, WitError> {
        self.check_model(model)?;
        check_request(&request)?;
        self.service.call(&self.agent, model, request).await
    }

    async fn complete(&self, model: &str, request: Request) -> Result<Completion, WitError> {
        let started = Instant::now();
        match self.call(model, request).await? {
            Response::Text {
                text,
                model,
                prompt_tokens,
                completion_tokens,
            } => Ok(Completion {
                text,
                model,
                prompt_tokens,
                completion_tokens,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            }),
            Response::Embeddings { .. } => Err(WitError::Internal(
                "the backend answered a completion with embeddings".into(),
            )),
        }
    }
}

fn check_options(o: &Options) -> Result<(), WitError> {
    if let Some(t) = o.temperature.filter(|t| !t.is_finite() || *t < 0.0) {
        return Err(WitError::Invalid(format!(
            "temperature {t} is out of range; expected 0 or more, like 0.7"
        )));
    }
    if let Some(p) = o.top_p.filter(|p| !p.is_finite() || *p <= 0.0 || *p > 1.0) {
        return Err(WitError::Invalid(format!(
            "top-p {p} is out of range; expected more than 0 and at most 1, like 0.9"
        )));
    }
    if o.max_tokens == Some(0) {
        return Err(WitError::Invalid(
            "max-tokens 0 would allow no answer; leave it unset or give a number like 512".into(),
        ));
    }
    Ok(())
}

/// The text a request carries, in bytes.
fn input_bytes(r: &Request) -> usize {
    let stop = |o: &Options| o.stop.iter().map(String::len).sum::<usize>();
    match r {
        Request::Chat { messages, options } => {
            messages.iter().map(|m| m.content.len()).sum::<usize>() + stop(options)
        }
        Request::Generate { prompt, options } => prompt.len() + stop(options),
        Request::Embed { inputs } => inputs.iter().map(String::len).sum(),
    }
}

fn check_request(r: &Request) -> Result<(), WitError> {
    let bytes = input_bytes(r);
    if bytes > MAX_INPUT_BYTES {
        return Err(WitError::Invalid(format!(
            "{} input is {bytes} bytes; at most {MAX_INPUT_BYTES} bytes per call",
            r.kind()
        )));
    }
    match r {
        Request::Chat { messages, options } => {
            if messages.is_empty() {
                return Err(WitError::Invalid(
                    "chat got no messages; send at least one user message".into(),
                ));
            }
            check_options(options)
        }
        Request::Generate { options, .. } => check_options(options),
        Request::Embed { inputs } if inputs.len() > MAX_EMBED_INPUTS => {
            Err(WitError::Invalid(format!(
                "embed got {} inputs; at most {MAX_EMBED_INPUTS} per call",
                inputs.len()
            )))
        }
        Request::Embed { .. } => Ok(()),
    }
}

/// The llm import as seen from one call: the agent's context.
pub struct LlmView<'a> {
    ctx: &'a LlmCtx,
}

impl<'a> LlmView<'a> {
    pub fn of(store: &'a mut AgentStore) -> LlmView<'a> {
        LlmView {
            ctx: &store.caps.llm,
        }
    }
}

struct LlmData;

impl HasData for LlmData {
    type Data<'a> = LlmView<'a>;
}

pub fn add_to_linker(linker: &mut Linker<AgentStore>) -> wasmtime::Result<()> {
    llm::add_to_linker::<AgentStore, LlmData>(linker, |s| LlmView::of(s))
}

impl llm::Host for LlmView<'_> {
    async fn chat(
        &mut self,
        model: String,
        messages: Vec<ChatMessage>,
        options: Options,
    ) -> HostResult<Completion> {
        let result = self
            .ctx
            .complete(&model, Request::Chat { messages, options })
            .await;
        Ok(result)
    }

    async fn generate(
        &mut self,
        model: String,
        prompt: String,
        options: Options,
    ) -> HostResult<Completion> {
        let result = self
            .ctx
            .complete(&model, Request::Generate { prompt, options })
            .await;
        Ok(result)
    }

    async fn embed(&mut self, model: String, inputs: Vec<String>) -> HostResult<Vec<Vec<f32>>> {
        if inputs.is_empty() {
            return Ok(self.ctx.check_model(&model).map(|_| Vec::new()));
        }
        let result = match self.ctx.call(&model, Request::Embed { inputs }).await {
            Ok(Response::Embeddings { vectors, .. }) => Ok(vectors),
            Ok(Response::Text { .. }) => Err(WitError::Internal(
                "the backend answered an embedding with text".into(),
            )),
            Err(e) => Err(e),
        };
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::agent::host::llm::Role;

    fn options(stop: Vec<String>) -> Options {
        Options {
            temperature: None,
            max_tokens: None,
            top_p: None,
            stop,
            json: false,
        }
    }

    #[test]
    fn a_call_carrying_more_text_than_the_bound_is_invalid_before_it_is_sent() {
        let half = "x".repeat(MAX_INPUT_BYTES / 2);
        let message = |content: &str| ChatMessage {
            role: Role::User,
            content: content.to_string(),
        };
        let fits = Request::Chat {
            messages: vec![message(&half), message(&half)],
            options: options(vec![]),
        };
        assert!(check_request(&fits).is_ok());
        let over = Request::Chat {
            messages: vec![message(&half), message(&half)],
            options: options(vec!["s".into()]),
        };
        match check_request(&over) {
            Err(WitError::Invalid(why)) => assert_eq!(
                why,
                format!(
                    "chat input is {} bytes; at most {MAX_INPUT_BYTES} bytes per call",
                    MAX_INPUT_BYTES + 1
                )
            ),
            other => panic!("expected invalid, got {other:?}"),
        }
        let embed = Request::Embed {
            inputs: vec![half.clone(), half.clone(), half],
        };
        assert!(matches!(check_request(&embed), Err(WitError::Invalid(_))));
    }
}
