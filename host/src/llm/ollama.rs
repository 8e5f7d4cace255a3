//! The Ollama backend, on ollama-rs with our own HTTP client.
//!
//! ollama-rs hands back an HTTP error only as the response body text (the status code is
//! lost), so failures are classified by Ollama's own error messages: "model ... not found"
//! (404) means the model must be pulled, "server busy" (503) means retry later.

use ollama_rs::error::OllamaError;
use ollama_rs::generation::chat::request::ChatMessageRequest;
use ollama_rs::generation::chat::{ChatMessage as OllamaMessage, MessageRole};
use ollama_rs::generation::completion::request::GenerationRequest;
use ollama_rs::generation::embeddings::request::{EmbeddingsInput, GenerateEmbeddingsRequest};
use ollama_rs::generation::parameters::FormatType;
use ollama_rs::models::ModelOptions;
use ollama_rs::Ollama;
use std::time::Duration;

use futures::StreamExt as _;

use super::backend::{estimate_tokens, reqwest_reason, Backend, Failure, Request, Response};
use super::ndjson::{self, Event, Lines};
use crate::bindings::agent::host::llm::{ChatMessage, Options, Role};
use crate::bindings::WitError;

pub struct OllamaBackend {
    name: String,
    url: String,
    client: Ollama,
    http: reqwest::Client,
    /// `Some(idle timeout)`: chat and generate read Ollama's stream (see [`super::ndjson`]).
    stream: Option<Duration>,
}

impl OllamaBackend {
    /// `url` is a base URL like `http://127.0.0.1:11434` (a path prefix is kept). With
    /// `stream`, chat and generate read the answer as it is generated and give up when no
    /// line arrives for that long.
    pub fn new(
        name: &str,
        url: &str,
        http: reqwest::Client,
        stream: Option<Duration>,
    ) -> Result<OllamaBackend, String> {
        // ollama-rs appends `api/chat` to the URL text, so it must end with '/'.
        let parsed = reqwest::Url::parse(&format!("{}/", url.trim_end_matches('/')))
            .map_err(|e| format!("LLM backend '{name}': {url:?} is not a URL ({e})"))?;
        Ok(OllamaBackend {
            name: name.to_string(),
            url: url.to_string(),
            client: Ollama::builder()
                .url(parsed)
                .reqwest_client(http.clone())
                .build(),
            http,
            stream,
        })
    }

    /// The ollama-rs client this backend uses (the benchmark calls it directly).
    pub fn client(&self) -> &Ollama {
        &self.client
    }

    fn failure(&self, model: &str, e: OllamaError) -> Failure {
        match e {
            OllamaError::ReqwestError(e) if e.is_timeout() => Failure::timed_out(),
            OllamaError::ReqwestError(e) if e.is_connect() => Failure::down(format!(
                "cannot connect to Ollama (backend '{}') at {} ({}): start it (`ollama serve`) or point [llm] ollama_url in the node config or OLLAMA_HOST at a running server",
                self.name,
                self.url,
                reqwest_reason(&e)
            )),
            OllamaError::ReqwestError(e) => Failure::broken(format!(
                "the request to Ollama (backend '{}') at {} failed: {}",
                self.name,
                self.url,
                reqwest_reason(&e)
            )),
            OllamaError::Other(body) => self.classify_body(model, &body),
            OllamaError::InternalError(e) => self.classify_body(model, &e.message),
            OllamaError::JsonError(e) => Failure::broken(format!(
                "Ollama (backend '{}') at {} answered with JSON this host cannot read ({e}); is it an Ollama server, and a recent one?",
                self.name, self.url
            )),
            OllamaError::ToolCallError(e) => Failure::refused(WitError::Internal(format!(
                "unexpected tool call error from ollama-rs: {e}"
            ))),
        }
    }

    /// Classifies an HTTP error body: `{"error":"..."}` from Ollama, or any text from a proxy.
    fn classify_body(&self, model: &str, body: &str) -> Failure {
        let message = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| body.trim().chars().take(300).collect());
        let lower = message.to_ascii_lowercase();
        if lower.contains("not found") && (lower.contains("model") || lower.contains(model)) {
            return Failure::refused(WitError::Unavailable(format!(
                "model '{model}' is not on the Ollama server (backend '{}') at {} ({message}): pull it there with `ollama pull {model}`",
                self.name, self.url
            )));
        }
        if lower.contains("server busy") || lower.contains("maximum pending requests") {
            return Failure::down(format!(
                "Ollama (backend '{}') at {} is busy ({message}); lower [llm] num_parallel to what OLLAMA_NUM_PARALLEL allows, or retry later",
                self.name, self.url
            ));
        }
        if lower.starts_with("invalid") || lower.contains("cannot unmarshal") {
            return Failure::refused(WitError::Invalid(format!(
                "Ollama (backend '{}') refused the request: {message}",
                self.name
            )));
        }
        Failure::broken(format!(
            "Ollama (backend '{}') at {} failed: {message}",
            self.name, self.url
        ))
    }
}

/// Maps the agent's options onto Ollama's (`max-tokens` is `num_predict`).
pub fn model_options(o: &Options) -> ModelOptions {
    let mut m = ModelOptions::default();
    if let Some(t) = o.temperature {
        m = m.temperature(t);
    }
    if let Some(n) = o.max_tokens {
        m = m.num_predict(i32::try_from(n).unwrap_or(i32::MAX));
    }
    if let Some(p) = o.top_p {
        m = m.top_p(p);
    }
    if !o.stop.is_empty() {
        m = m.stop(o.stop.clone());
    }
    m
}

fn message(m: &ChatMessage) -> OllamaMessage {
    let role = match m.role {
        Role::System => MessageRole::System,
        Role::User => MessageRole::User,
        Role::Assistant => MessageRole::Assistant,
    };
    OllamaMessage::new(role, m.content.clone())
}

impl OllamaBackend {
    /// Chat or generate with `"stream": true`, reading NDJSON lines as they arrive.
    async fn streamed(&self, model: &str, request: &Request) -> Result<Response, Failure> {
        let (path, mut body) = match request {
            Request::Chat { messages, options } => {
                let mut req = ChatMessageRequest::new(
                    model.to_string(),
                    messages.iter().map(message).collect(),
                )
                .options(model_options(options));
                if options.json {
                    req = req.format(FormatType::Json);
                }
                ("api/chat", serde_json::to_value(&req))
            }
            Request::Generate { prompt, options } => {
                let mut req = GenerationRequest::new(model.to_string(), prompt.as_str())
                    .options(model_options(options));
                if options.json {
                    req = req.format(FormatType::Json);
                }
                ("api/generate", serde_json::to_value(&req))
            }
            Request::Embed { .. } => unreachable!("embeddings are not streamed"),
        };
        let body = body
            .as_mut()
            .map(|b| {
                b["stream"] = serde_json::Value::Bool(true);
                b.take()
            })
            .map_err(|e| Failure::refused(WitError::Internal(format!("request JSON: {e}"))))?;
        let url = format!("{}{path}", self.client.url_str());
        let res = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| self.failure(model, OllamaError::ReqwestError(e)))?;
        if !res.status().is_success() {
            let text = res.text().await.unwrap_or_default();
            return Err(self.classify_body(model, &text));
        }
        let idle = self.stream.unwrap_or(Duration::MAX);
        let mut chunks = res.bytes_stream();
        let mut lines = Lines::default();
        let mut text = String::new();
        loop {
            let chunk = match tokio::time::timeout(idle, chunks.next()).await {
                Err(_) => {
                    tracing::warn!(backend = %self.name, "Ollama sent nothing for {} ms in the middle of an answer ([llm] idle_timeout_ms)", idle.as_millis());
                    return Err(Failure::timed_out());
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(self.failure(model, OllamaError::ReqwestError(e)));
                }
                Ok(Some(Ok(bytes))) => bytes,
            };
            for line in lines.push(&chunk) {
                if let Some(done) = self.event(model, &line, &mut text)? {
                    return Ok(done);
                }
            }
        }
        if let Some(line) = lines.finish() {
            if let Some(done) = self.event(model, &line, &mut text)? {
                return Ok(done);
            }
        }
        Err(Failure::broken(format!(
            "the stream from Ollama (backend '{}') at {} ended without its final \"done\": true line; the answer was cut off after {} characters",
            self.name,
            self.url,
            text.len()
        )))
    }

    /// Applies one stream line; `Some` when it was the final one.
    fn event(
        &self,
        model: &str,
        line: &[u8],
        text: &mut String,
    ) -> Result<Option<Response>, Failure> {
        match ndjson::parse(line)
            .map_err(|why| Failure::broken(format!("Ollama (backend '{}'): {why}", self.name)))?
        {
            Event::Token(piece) => {
                text.push_str(&piece);
                Ok(None)
            }
            Event::Error(message) => Err(self.classify_body(model, &message)),
            Event::Done {
                model: answered,
                prompt_tokens,
                completion_tokens,
                text: last,
            } => {
                text.push_str(&last);
                Ok(Some(Response::Text {
                    text: std::mem::take(text),
                    model: if answered.is_empty() {
                        model.to_string()
                    } else {
                        answered
                    },
                    prompt_tokens: count(Some(prompt_tokens)),
                    completion_tokens: count(Some(completion_tokens)),
                }))
            }
        }
    }
}

fn count(n: Option<u64>) -> u32 {
    n.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

#[async_trait::async_trait]
impl Backend for OllamaBackend {
    async fn call(&self, model: &str, request: &Request) -> Result<Response, Failure> {
        match request {
            Request::Chat { .. } | Request::Generate { .. } if self.stream.is_some() => {
                self.streamed(model, request).await
            }
            Request::Chat { messages, options } => {
                let mut req = ChatMessageRequest::new(
                    model.to_string(),
                    messages.iter().map(message).collect(),
                )
                .options(model_options(options));
                if options.json {
                    req = req.format(FormatType::Json);
                }
                let r = self
                    .client
                    .send_chat_messages(req)
                    .await
                    .map_err(|e| self.failure(model, e))?;
                // Ollama omits `prompt_eval_count` for a prompt it had cached, and then
                // ollama-rs drops all counts: estimate them, so budgets still hold.
                let (prompt, completion) = match r.final_data {
                    Some(d) => (count(Some(d.prompt_eval_count)), count(Some(d.eval_count))),
                    None => {
                        let asked: Vec<String> =
                            messages.iter().map(|m| m.content.clone()).collect();
                        (
                            estimate_tokens(&asked),
                            estimate_tokens(std::slice::from_ref(&r.message.content)),
                        )
                    }
                };
                Ok(Response::Text {
                    text: r.message.content,
                    model: r.model,
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                })
            }
            Request::Generate { prompt, options } => {
                let mut req = GenerationRequest::new(model.to_string(), prompt.as_str())
                    .options(model_options(options));
                if options.json {
                    req = req.format(FormatType::Json);
                }
                let r = self
                    .client
                    .generate(req)
                    .await
                    .map_err(|e| self.failure(model, e))?;
                Ok(Response::Text {
                    text: r.response,
                    model: r.model,
                    prompt_tokens: count(r.prompt_eval_count),
                    completion_tokens: count(r.eval_count),
                })
            }
            Request::Embed { inputs } => {
                let req = GenerateEmbeddingsRequest::new(
                    model.to_string(),
                    EmbeddingsInput::Multiple(inputs.clone()),
                );
                let r = self
                    .client
                    .generate_embeddings(req)
                    .await
                    .map_err(|e| self.failure(model, e))?;
                if r.embeddings.len() != inputs.len() {
                    return Err(Failure::broken(format!(
                        "Ollama (backend '{}') returned {} embeddings for {} inputs",
                        self.name,
                        r.embeddings.len(),
                        inputs.len()
                    )));
                }
                // ollama-rs drops Ollama's prompt_eval_count for embeddings: estimate.
                Ok(Response::Embeddings {
                    vectors: r.embeddings,
                    tokens: estimate_tokens(inputs),
                })
            }
        }
    }
}
