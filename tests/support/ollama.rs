//! A fake LLM server speaking Ollama's API (`/api/chat`, `/api/generate`, `/api/embed`,
//! `/api/embeddings`) and the OpenAI-compatible one (`/v1/chat/completions`,
//! `/v1/embeddings`) over real HTTP on 127.0.0.1, with switches for the failures a real
//! server has: a model that is not pulled (404), busy (503), a runner that dies
//! mid-generation, responses split into tiny chunks, slow responses. It counts requests and
//! the most it ever had in flight at once, so tests can check the host's limiter.
//!
//! Replies are an echo, so tests know what to expect: [`reply`] of the system prompt and
//! the last user message. Used by tests/llm.rs and host/benches/llm.rs.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt as _;
use serde_json::{json, Value};

/// Ollama's text when its queue is full (`OLLAMA_MAX_QUEUE`).
pub const BUSY: &str = "server busy, please try again.  maximum pending requests exceeded";
/// What Ollama says when the model runner dies while generating.
pub const RUNNER_DIED: &str = "an error was encountered while running the model: unexpected EOF";

/// What the server does; change it at any time with [`FakeOllama::set`].
#[derive(Clone, Debug, Default)]
pub struct Switches {
    /// Models answered with 404 "model not found".
    pub missing_models: Vec<String>,
    /// The next N requests get 503 busy (`u32::MAX`: all of them).
    pub busy: u32,
    /// Requests fail mid-generation (an error line in a stream, 500 otherwise).
    pub mid_stream_error: bool,
    /// Responses are written a few bytes at a time, so lines and JSON span chunks.
    pub split_chunks: bool,
    /// Every request takes this long before answering.
    pub delay: Duration,
    /// Streams end without their final `"done": true` line.
    pub cut_off: bool,
    /// Streams go silent this long after their first line.
    pub stall: Duration,
    /// Answers leave out `prompt_eval_count`, as Ollama does for a cached prompt.
    pub cached_prompt: bool,
}

#[derive(Default)]
struct Shared {
    switches: Mutex<Switches>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    requests: AtomicUsize,
    /// (path, request body) of every request, in arrival order.
    bodies: Mutex<Vec<(String, Value)>>,
    /// `Authorization` headers of OpenAI-style chat requests.
    authorizations: Mutex<Vec<Option<String>>>,
}

/// The server; stops when dropped.
pub struct FakeOllama {
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The text the fake answers for a system prompt and the last user message.
pub fn reply(system: Option<&str>, user: &str) -> String {
    match system {
        Some(s) => format!("[{s}] {user}"),
        None => user.to_string(),
    }
}

/// A loopback URL where nothing listens (connections are refused).
pub fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    format!("http://{addr}")
}

impl FakeOllama {
    pub async fn start() -> FakeOllama {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/api/chat", post(ollama_chat))
            .route("/api/generate", post(ollama_generate))
            .route("/api/embed", post(ollama_embed))
            .route("/api/embeddings", post(ollama_embed))
            .route("/v1/chat/completions", post(openai_chat))
            .route("/v1/embeddings", post(openai_embed))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind the fake LLM server");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        FakeOllama {
            url,
            shared,
            stop: Some(stop),
        }
    }

    /// Changes the switches.
    pub fn set(&self, change: impl FnOnce(&mut Switches)) {
        change(&mut self.shared.switches.lock().unwrap());
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// The most requests that were ever in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// The `Authorization` header of each `/v1/chat/completions` request.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.shared.authorizations.lock().unwrap().clone()
    }

    /// Request bodies received on `path`.
    pub fn bodies(&self, path: &str) -> Vec<Value> {
        let bodies = self.shared.bodies.lock().unwrap();
        bodies
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

impl Drop for FakeOllama {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Counts a request in flight for as long as it lives.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> InFlight {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        shared.requests.fetch_add(1, Ordering::SeqCst);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

enum Outcome {
    Answer,
    Missing,
    Busy,
    Died,
}

/// Records the request, waits the configured delay and picks the outcome for `model`.
async fn begin(shared: &Arc<Shared>, path: &str, body: &Value) -> (InFlight, Outcome, Switches) {
    let guard = InFlight::enter(shared);
    shared
        .bodies
        .lock()
        .unwrap()
        .push((path.to_string(), body.clone()));
    let switches = shared.switches.lock().unwrap().clone();
    if !switches.delay.is_zero() {
        tokio::time::sleep(switches.delay).await;
    }
    let model = body["model"].as_str().unwrap_or_default();
    let outcome = if switches.missing_models.iter().any(|m| m == model) {
        Outcome::Missing
    } else if switches.busy > 0 {
        let mut s = shared.switches.lock().unwrap();
        if s.busy != u32::MAX {
            s.busy = s.busy.saturating_sub(1);
        }
        Outcome::Busy
    } else if switches.mid_stream_error {
        Outcome::Died
    } else {
        Outcome::Answer
    };
    (guard, outcome, switches)
}

/// Writes `bytes` with status `status`: a few bytes per chunk when `split_chunks`, and
/// silent for `stall` after the first line.
fn respond(status: StatusCode, content_type: &str, bytes: Vec<u8>, s: &Switches) -> Response {
    let body = if s.split_chunks || !s.stall.is_zero() {
        let size = if s.split_chunks {
            5
        } else {
            bytes.len().max(1)
        };
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        if !s.stall.is_zero() {
            let first = bytes
                .iter()
                .position(|b| *b == b'\n')
                .map_or(bytes.len(), |i| i + 1);
            chunks.push(bytes[..first].to_vec());
            chunks.extend(bytes[first..].chunks(size).map(<[u8]>::to_vec));
        } else {
            chunks.extend(bytes.chunks(size).map(<[u8]>::to_vec));
        }
        let stall = s.stall;
        Body::from_stream(futures::stream::iter(chunks.into_iter().enumerate()).then(
            move |(i, c)| async move {
                let pause = if i == 1 {
                    stall
                } else {
                    Duration::from_micros(200)
                };
                tokio::time::sleep(pause).await;
                Ok::<_, std::io::Error>(c)
            },
        ))
    } else {
        Body::from(bytes)
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(body)
        .unwrap()
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The echo answer, cut to `limit` words like a model stopping at `num_predict`.
fn answer(system: Option<&str>, user: &str, limit: Option<u64>) -> String {
    let full = reply(system, user);
    match limit {
        Some(n) if words(&full) > n => full
            .split_whitespace()
            .take(n as usize)
            .collect::<Vec<_>>()
            .join(" "),
        _ => full,
    }
}

fn ollama_error(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "error": text }))).into_response()
}

fn ollama_failure(outcome: &Outcome, model: &str) -> Option<Response> {
    match outcome {
        Outcome::Answer => None,
        Outcome::Missing => Some(ollama_error(
            StatusCode::NOT_FOUND,
            &format!("model \"{model}\" not found, try pulling it first"),
        )),
        Outcome::Busy => Some(ollama_error(StatusCode::SERVICE_UNAVAILABLE, BUSY)),
        Outcome::Died => Some(ollama_error(StatusCode::INTERNAL_SERVER_ERROR, RUNNER_DIED)),
    }
}

/// Ollama's NDJSON stream: one line per word, then the final line with the counts (or an
/// error line instead, when the runner dies).
fn ndjson(model: &str, text: &str, prompt_tokens: u64, s: &Switches, chat: bool) -> Vec<u8> {
    let died = s.mid_stream_error;
    let mut out = Vec::new();
    let piece = |content: &str, done: bool| {
        let mut v = json!({ "model": model, "created_at": "2026-01-01T00:00:00Z", "done": done });
        if chat {
            v["message"] = json!({ "role": "assistant", "content": content });
        } else {
            v["response"] = json!(content);
        }
        v
    };
    for (i, w) in text.split_whitespace().enumerate() {
        let content = if i == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        };
        out.extend(serde_json::to_vec(&piece(&content, false)).unwrap());
        out.push(b'\n');
        if died {
            out.extend(serde_json::to_vec(&json!({ "error": RUNNER_DIED })).unwrap());
            out.push(b'\n');
            return out;
        }
    }
    if s.cut_off {
        return out;
    }
    let mut last = piece("", true);
    for (k, v) in totals(prompt_tokens, words(text)) {
        last[k] = v;
    }
    out.extend(serde_json::to_vec(&last).unwrap());
    out.push(b'\n');
    out
}

fn totals(prompt: u64, completion: u64) -> Vec<(&'static str, Value)> {
    vec![
        ("done_reason", json!("stop")),
        ("total_duration", json!(1_000_000)),
        ("load_duration", json!(1_000)),
        ("prompt_eval_count", json!(prompt)),
        ("prompt_eval_duration", json!(1_000)),
        ("eval_count", json!(completion)),
        ("eval_duration", json!(1_000)),
    ]
}

fn chat_parts(messages: &[Value]) -> (Option<String>, String, u64) {
    let system = messages
        .iter()
        .find(|m| m["role"] == "system")
        .and_then(|m| m["content"].as_str())
        .map(str::to_string);
    let user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    let prompt = messages
        .iter()
        .map(|m| words(m["content"].as_str().unwrap_or_default()))
        .sum();
    (system, user, prompt)
}

async fn ollama_chat(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let (_guard, outcome, switches) = begin(&shared, "/api/chat", &body).await;
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let stream = body["stream"].as_bool().unwrap_or(true);
    let (system, user, prompt) = chat_parts(body["messages"].as_array().unwrap_or(&Vec::new()));
    let text = answer(
        system.as_deref(),
        &user,
        body["options"]["num_predict"].as_u64(),
    );
    if stream && matches!(outcome, Outcome::Answer | Outcome::Died) {
        let bytes = ndjson(&model, &text, prompt, &switches, true);
        return respond(StatusCode::OK, "application/x-ndjson", bytes, &switches);
    }
    if let Some(failure) = ollama_failure(&outcome, &model) {
        return failure;
    }
    let mut v = json!({
        "model": model, "created_at": "2026-01-01T00:00:00Z",
        "message": { "role": "assistant", "content": text }, "done": true,
    });
    for (k, val) in totals(prompt, words(&text)) {
        v[k] = val;
    }
    if switches.cached_prompt {
        v.as_object_mut().unwrap().remove("prompt_eval_count");
    }
    respond(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec(&v).unwrap(),
        &switches,
    )
}

async fn ollama_generate(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let (_guard, outcome, switches) = begin(&shared, "/api/generate", &body).await;
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let prompt = body["prompt"].as_str().unwrap_or_default();
    let text = answer(
        body["system"].as_str(),
        prompt,
        body["options"]["num_predict"].as_u64(),
    );
    if body["stream"].as_bool().unwrap_or(true)
        && matches!(outcome, Outcome::Answer | Outcome::Died)
    {
        let bytes = ndjson(&model, &text, words(prompt), &switches, false);
        return respond(StatusCode::OK, "application/x-ndjson", bytes, &switches);
    }
    if let Some(failure) = ollama_failure(&outcome, &model) {
        return failure;
    }
    let mut v = json!({
        "model": model, "created_at": "2026-01-01T00:00:00Z", "response": text, "done": true,
    });
    for (k, val) in totals(words(prompt), words(&text)) {
        v[k] = val;
    }
    respond(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec(&v).unwrap(),
        &switches,
    )
}

/// A deterministic vector per input: [characters, words, 1].
fn vector(text: &str) -> Vec<f32> {
    vec![text.chars().count() as f32, words(text) as f32, 1.0]
}

fn inputs(body: &Value) -> Vec<String> {
    match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().unwrap_or_default().to_string())
            .collect(),
        _ => vec![body["prompt"].as_str().unwrap_or_default().to_string()],
    }
}

async fn ollama_embed(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let (_guard, outcome, switches) = begin(&shared, "/api/embed", &body).await;
    let model = body["model"].as_str().unwrap_or_default().to_string();
    if let Some(failure) = ollama_failure(&outcome, &model) {
        return failure;
    }
    let embeddings: Vec<Vec<f32>> = inputs(&body).iter().map(|t| vector(t)).collect();
    let v = json!({ "model": model, "embeddings": embeddings });
    respond(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec(&v).unwrap(),
        &switches,
    )
}

fn openai_failure(outcome: &Outcome, model: &str) -> Option<Response> {
    let (status, message, kind) = match outcome {
        Outcome::Answer => return None,
        Outcome::Missing => (
            StatusCode::NOT_FOUND,
            format!("The model `{model}` does not exist."),
            "NotFoundError",
        ),
        Outcome::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Server busy".to_string(),
            "ServiceUnavailableError",
        ),
        Outcome::Died => (
            StatusCode::INTERNAL_SERVER_ERROR,
            RUNNER_DIED.to_string(),
            "InternalServerError",
        ),
    };
    Some(
        (
            status,
            Json(json!({ "error": { "message": message, "type": kind, "code": status.as_u16() } })),
        )
            .into_response(),
    )
}

async fn openai_chat(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    shared.authorizations.lock().unwrap().push(
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    );
    let (_guard, outcome, switches) = begin(&shared, "/v1/chat/completions", &body).await;
    let model = body["model"].as_str().unwrap_or_default().to_string();
    if let Some(failure) = openai_failure(&outcome, &model) {
        return failure;
    }
    let (system, user, prompt) = chat_parts(body["messages"].as_array().unwrap_or(&Vec::new()));
    let text = answer(system.as_deref(), &user, body["max_tokens"].as_u64());
    let v = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": model,
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": "stop" }],
        "usage": { "prompt_tokens": prompt, "completion_tokens": words(&text), "total_tokens": prompt + words(&text) },
    });
    respond(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec(&v).unwrap(),
        &switches,
    )
}

async fn openai_embed(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let (_guard, outcome, switches) = begin(&shared, "/v1/embeddings", &body).await;
    let model = body["model"].as_str().unwrap_or_default().to_string();
    if let Some(failure) = openai_failure(&outcome, &model) {
        return failure;
    }
    let inputs = inputs(&body);
    // Out of order on purpose: clients must sort by index.
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| json!({ "object": "embedding", "index": i, "embedding": vector(t) }))
        .collect();
    let tokens: u64 = inputs.iter().map(|t| words(t)).sum();
    let v = json!({ "object": "list", "model": model, "data": data, "usage": { "prompt_tokens": tokens, "total_tokens": tokens } });
    respond(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec(&v).unwrap(),
        &switches,
    )
}
