//! LLM inference through the host (models and budgets from the manifest's `[llm]`).

use crate::bindings::agent::host::llm as wit;
pub use crate::bindings::agent::host::llm::{ChatMessage, Completion, Options, Role};
use crate::error::host;
use crate::Result;

/// Runs a chat completion.
pub fn chat(model: &str, messages: &[ChatMessage], options: &Options) -> Result<Completion> {
    host(wit::chat(model, messages, options))
}

/// Completes a single prompt.
pub fn generate(model: &str, prompt: &str, options: &Options) -> Result<Completion> {
    host(wit::generate(model, prompt, options))
}

/// Embeds each input.
pub fn embed(model: &str, inputs: &[String]) -> Result<Vec<Vec<f32>>> {
    host(wit::embed(model, inputs))
}

/// A chat message with `role` and `content`.
pub fn message(role: Role, content: impl Into<String>) -> ChatMessage {
    ChatMessage { role, content: content.into() }
}

impl Default for Options {
    fn default() -> Self {
        Options { temperature: None, max_tokens: None, top_p: None, stop: Vec::new(), json: false }
    }
}
