//! One component, many experts: the manifest makes the expert. `[config] model` names the
//! model, `[config] system_prompt` its expertise; optional `temperature` and `max_tokens`
//! tune the answer. A message's payload is the question; it is sent as the last user
//! message after the system prompt, and the completion text is the reply.
//!
//! On an LLM error the expert replies `error: …` (so an asking agent gets an answer, not a
//! timeout) and returns the error (so the host counts it).
use agent_sdk::prelude::*;

#[derive(Default, Serialize, Deserialize)]
struct Expert {
    answered: u64,
}

/// A `[config]` number, or an error naming the key and what is expected.
fn config_number<T: std::str::FromStr>(key: &str, example: &str) -> Result<Option<T>> {
    match runtime::config(key) {
        None => Ok(None),
        Some(text) => text.trim().parse().map(Some).map_err(|_| {
            AgentError::new(format!(
                "[config] {key} = {text:?} is not a number; expected something like {example}"
            ))
        }),
    }
}

fn model() -> Result<String> {
    runtime::config("model")
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| {
            AgentError::new(
                "the expert needs a model: add model = \"llama3.2:1b\" to [config] in its manifest (and the same name to [llm] models)",
            )
        })
}

fn ask(question: &str) -> Result<String> {
    let model = model()?;
    let mut messages = Vec::with_capacity(2);
    if let Some(system) = runtime::config("system_prompt").filter(|s| !s.trim().is_empty()) {
        messages.push(llm::message(llm::Role::System, system));
    }
    messages.push(llm::message(llm::Role::User, question));
    let options = llm::Options {
        temperature: config_number("temperature", "0.2")?,
        max_tokens: config_number("max_tokens", "512")?,
        ..Default::default()
    };
    Ok(llm::chat(&model, &messages, &options)?.text)
}

impl Agent for Expert {
    fn init(&mut self, _me: &AgentRef) -> Result<()> {
        model().map(|_| ())
    }

    fn handle(&mut self, msg: Message) -> Result<()> {
        let question = msg.text()?.trim().to_string();
        if question.is_empty() {
            let e = AgentError::new("empty question: send the question as the message payload");
            msg.reply(format!("error: {}", e.message()))?;
            return Err(e);
        }
        match ask(&question) {
            Ok(answer) => {
                self.answered += 1;
                msg.reply(answer)
            }
            Err(e) => {
                msg.reply(format!("error: {}", e.message()))?;
                Err(e)
            }
        }
    }
}

export_agent!(Expert);
