//! The OpenAI-compatible backend: `/v1/chat/completions` and `/v1/embeddings`, as served by
//! vLLM, llama.cpp's server and LM Studio. `generate` is a chat with one user message,
//! since not every such server still serves `/v1/completions`.

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::backend::{estimate_tokens, reqwest_reason, Backend, Failure, Request, Response};
use crate::bindings::agent::host::llm::{ChatMessage, Options, Role};
use crate::bindings::WitError;

pub struct OpenAiBackend {
    name: String,
    url: String,
    http: reqwest::Client,
    api_key: Option<String>,
}

#[derive(Deserialize)]
struct ChatResponse {
    #[serde(default)]
    model: String,
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize, Default)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<Embedding>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Embedding {
    #[serde(default)]
    index: usize,
    embedding: Vec<f32>,
}

fn role(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// The request body of a chat completion, with the agent's options mapped.
pub fn chat_body(model: &str, messages: &[ChatMessage], o: &Options) -> Value {
    let messages: Vec<Value> = messages
        .iter()
        .map(|m| json!({ "role": role(m.role), "content": m.content }))
        .collect();
    let mut body = json!({ "model": model, "messages": messages, "stream": false });
    if let Some(t) = o.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(n) = o.max_tokens {
        body["max_tokens"] = json!(n);
    }
    if let Some(p) = o.top_p {
        body["top_p"] = json!(p);
    }
    if !o.stop.is_empty() {
        body["stop"] = json!(o.stop);
    }
    if o.json {
        body["response_format"] = json!({ "type": "json_object" });
    }
    body
}

fn clamp(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl OpenAiBackend {
    pub fn new(
        name: &str,
        url: &str,
        http: reqwest::Client,
        api_key: Option<String>,
    ) -> OpenAiBackend {
        OpenAiBackend {
            name: name.to_string(),
            url: url.trim_end_matches('/').to_string(),
            http,
            api_key,
        }
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        model: &str,
        path: &str,
        body: &Value,
    ) -> Result<T, Failure> {
        let url = format!("{}{path}", self.url);
        let mut req = self.http.post(&url).json(body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let res = req.send().await.map_err(|e| self.transport(&e))?;
        let status = res.status();
        let bytes = res.bytes().await.map_err(|e| self.transport(&e))?;
        if !status.is_success() {
            return Err(self.status_failure(model, status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            Failure::broken(format!(
                "backend '{}' at {url} answered with JSON this host cannot read ({e}); is it an OpenAI-compatible server?",
                self.name
            ))
        })
    }

    fn transport(&self, e: &reqwest::Error) -> Failure {
        if e.is_timeout() {
            Failure::timed_out()
        } else if e.is_connect() {
            Failure::down(format!(
                "cannot connect to LLM backend '{}' at {} ({}): start the server or fix its url in [[llm.backends]] of the node config",
                self.name,
                self.url,
                reqwest_reason(e)
            ))
        } else {
            Failure::broken(format!(
                "the request to LLM backend '{}' at {} failed: {}",
                self.name,
                self.url,
                reqwest_reason(e)
            ))
        }
    }

    fn status_failure(&self, model: &str, status: StatusCode, body: &[u8]) -> Failure {
        let text = String::from_utf8_lossy(body);
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                let e = v.get("error").or_else(|| v.get("detail"))?;
                e.get("message")
                    .and_then(Value::as_str)
                    .or_else(|| e.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| text.trim().chars().take(300).collect());
        let name = &self.name;
        match status.as_u16() {
            404 => Failure::refused(WitError::Unavailable(format!(
                "model '{model}' is not served by LLM backend '{name}' at {} (404: {message}): load it on that server, or route the model elsewhere in [[llm.backends]] models",
                self.url
            ))),
            401 | 403 => Failure::refused(WitError::Unavailable(format!(
                "LLM backend '{name}' refused the credentials ({status}: {message}): set api_key_env in its [[llm.backends]] entry to a variable holding a valid key"
            ))),
            400 | 422 => Failure::refused(WitError::Invalid(format!(
                "LLM backend '{name}' refused the request ({status}: {message})"
            ))),
            429 | 503 => Failure::down(format!(
                "LLM backend '{name}' is busy ({status}: {message}); lower its num_parallel or retry later"
            )),
            _ => Failure::broken(format!(
                "LLM backend '{name}' at {} failed ({status}: {message})",
                self.url
            )),
        }
    }
}

#[async_trait::async_trait]
impl Backend for OpenAiBackend {
    async fn call(&self, model: &str, request: &Request) -> Result<Response, Failure> {
        let (messages, options) = match request {
            Request::Chat { messages, options } => (messages.clone(), options),
            Request::Generate { prompt, options } => (
                vec![ChatMessage {
                    role: Role::User,
                    content: prompt.clone(),
                }],
                options,
            ),
            Request::Embed { inputs } => {
                let body = json!({ "model": model, "input": inputs });
                let mut r: EmbeddingsResponse = self.post(model, "/v1/embeddings", &body).await?;
                if r.data.len() != inputs.len() {
                    return Err(Failure::broken(format!(
                        "LLM backend '{}' returned {} embeddings for {} inputs",
                        self.name,
                        r.data.len(),
                        inputs.len()
                    )));
                }
                r.data.sort_by_key(|e| e.index);
                let tokens = match r.usage {
                    Some(u) if u.prompt_tokens > 0 => clamp(u.prompt_tokens),
                    _ => estimate_tokens(inputs),
                };
                return Ok(Response::Embeddings {
                    vectors: r.data.into_iter().map(|e| e.embedding).collect(),
                    tokens,
                });
            }
        };
        let body = chat_body(model, &messages, options);
        let r: ChatResponse = self.post(model, "/v1/chat/completions", &body).await?;
        let text = r
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .ok_or_else(|| {
                Failure::broken(format!(
                    "LLM backend '{}' answered without a choice or text",
                    self.name
                ))
            })?;
        let usage = r.usage.unwrap_or_default();
        Ok(Response::Text {
            text,
            model: if r.model.is_empty() {
                model.to_string()
            } else {
                r.model
            },
            prompt_tokens: clamp(usage.prompt_tokens),
            completion_tokens: clamp(usage.completion_tokens),
        })
    }
}
