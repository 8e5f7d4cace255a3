//! The node config's `[llm]` section: where LLM calls go and how the node protects the
//! backends (and the agents) from each other.
//!
//! The default backend is Ollama at `ollama_url` (env `OLLAMA_HOST`). More backends are
//! `[[llm.backends]]` tables; each names the models it serves, so an agent keeps calling a
//! model by name and the operator decides where that model runs.

use super::fields::{FieldError, Section};

/// The Ollama address used when neither the file nor `OLLAMA_HOST` names one.
pub const DEFAULT_OLLAMA_URL: &str = "http://127.0.0.1:11434";
/// Name of the default backend (the one at `ollama_url`) in metrics and messages.
pub const DEFAULT_BACKEND: &str = "ollama";

/// Where LLM calls go, and the limits that keep one backend (and one agent) from hurting
/// the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmSection {
    /// The default backend's base URL with scheme (an Ollama server).
    pub ollama_url: String,
    /// Calls in flight at once per backend (Ollama's `OLLAMA_NUM_PARALLEL`): the host never
    /// sends a backend more than this, so a small GPU is not overcommitted.
    pub num_parallel: u32,
    /// Calls waiting for a slot per backend; one more is refused with `unavailable` instead
    /// of piling up memory and latency.
    pub queue_capacity: u32,
    /// Wall-clock limit of one call including queueing and retries; `None` means
    /// `[defaults] host_call_timeout_ms`. Epochs cannot interrupt a guest blocked in a host
    /// call, so this is what bounds it.
    pub timeout_ms: Option<u64>,
    /// TCP connect timeout, short so a dead backend is noticed quickly.
    pub connect_timeout_ms: u64,
    /// Extra attempts after a connection error or a busy (503) answer.
    pub retries: u32,
    /// Delay before the first retry; doubles each time.
    pub backoff_ms: u64,
    /// Ollama backends read answers as they are generated (`"stream": true`) instead of
    /// waiting for the whole answer; then a runner that stops mid-answer is noticed after
    /// `idle_timeout_ms` instead of `timeout_ms`, and its error line is reported.
    pub stream: bool,
    /// With `stream`: longest silence within an answer before the call gives up.
    pub idle_timeout_ms: u64,
    /// Consecutive failures that open a backend's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before one probe may try the backend again.
    pub breaker_cooldown_ms: u64,
    /// Backends besides the default one, each serving the models it lists.
    pub backends: Vec<BackendEntry>,
}

/// The wire protocol a backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Ollama's `/api/chat`, `/api/generate`, `/api/embed`.
    Ollama,
    /// `/v1/chat/completions` and `/v1/embeddings` (vLLM, llama.cpp server, LM Studio).
    OpenAi,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Ollama => "ollama",
            BackendKind::OpenAi => "openai",
        }
    }
}

/// One `[[llm.backends]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendEntry {
    /// Shown in metrics and errors; unique, and not `ollama` (the default backend's name).
    pub name: String,
    pub kind: BackendKind,
    /// Base URL with scheme, without the `/v1` or `/api` part.
    pub url: String,
    /// Models this backend serves; a call for one of them goes here instead of Ollama.
    pub models: Vec<String>,
    /// Calls in flight at once on this backend; `None` means `[llm] num_parallel`.
    pub num_parallel: Option<u32>,
    /// Environment variable holding a bearer token for the backend, if it needs one.
    pub api_key_env: Option<String>,
}

impl Default for LlmSection {
    fn default() -> Self {
        LlmSection {
            ollama_url: DEFAULT_OLLAMA_URL.to_string(),
            num_parallel: 2,
            queue_capacity: 64,
            timeout_ms: None,
            connect_timeout_ms: 2_000,
            retries: 2,
            backoff_ms: 100,
            stream: false,
            idle_timeout_ms: 30_000,
            breaker_failures: 5,
            breaker_cooldown_ms: 10_000,
            backends: Vec::new(),
        }
    }
}

const LLM_KEYS: &[&str] = &[
    "ollama_url",
    "num_parallel",
    "queue_capacity",
    "timeout_ms",
    "connect_timeout_ms",
    "retries",
    "backoff_ms",
    "stream",
    "idle_timeout_ms",
    "breaker_failures",
    "breaker_cooldown_ms",
    "backends",
];

const BACKEND_KEYS: &[&str] = &[
    "name",
    "kind",
    "url",
    "models",
    "num_parallel",
    "api_key_env",
];

pub(super) fn llm(root: &Section) -> Result<LlmSection, FieldError> {
    let s = root.section("llm", LLM_KEYS)?;
    let d = LlmSection::default();
    let ollama_url = match s.string("ollama_url", "\"http://127.0.0.1:11434\"")? {
        None => d.ollama_url,
        Some(text) => base_url(&text).map_err(|e| s.error("ollama_url", e))?,
    };
    let mut backends: Vec<BackendEntry> = Vec::new();
    for (i, b) in s.table_array("backends", BACKEND_KEYS)?.iter().enumerate() {
        let entry = backend(b)?;
        if entry.name == DEFAULT_BACKEND || backends.iter().any(|other| other.name == entry.name) {
            return Err(b.error(
                "name",
                format!(
                    "{:?} is already taken (\"{DEFAULT_BACKEND}\" is the default backend at ollama_url); expected a unique name per [[llm.backends]]",
                    entry.name
                ),
            ));
        }
        for (j, model) in entry.models.iter().enumerate() {
            if let Some(other) = backends.iter().find(|o| o.models.contains(model)) {
                return Err(b.error(
                    &format!("models[{j}]"),
                    format!(
                        "model {model:?} is already served by backend {:?} (llm.backends[{}]); a model can go to one backend only",
                        other.name,
                        backends.iter().position(|o| o.name == other.name).unwrap_or(i)
                    ),
                ));
            }
        }
        backends.push(entry);
    }
    Ok(LlmSection {
        ollama_url,
        num_parallel: s
            .positive("num_parallel", "2", "no LLM call could ever run")?
            .unwrap_or(d.num_parallel),
        queue_capacity: s.uint("queue_capacity", "64")?.unwrap_or(d.queue_capacity),
        timeout_ms: s.positive("timeout_ms", "120000", "every LLM call would time out")?,
        connect_timeout_ms: s
            .positive(
                "connect_timeout_ms",
                "2000",
                "no connection could ever be made",
            )?
            .unwrap_or(d.connect_timeout_ms),
        retries: s.uint("retries", "2")?.unwrap_or(d.retries),
        backoff_ms: s.uint("backoff_ms", "100")?.unwrap_or(d.backoff_ms),
        stream: s.bool("stream")?.unwrap_or(d.stream),
        idle_timeout_ms: s
            .positive(
                "idle_timeout_ms",
                "30000",
                "every streamed answer would time out",
            )?
            .unwrap_or(d.idle_timeout_ms),
        breaker_failures: s
            .positive(
                "breaker_failures",
                "5",
                "the breaker would open before any call",
            )?
            .unwrap_or(d.breaker_failures),
        breaker_cooldown_ms: s
            .uint("breaker_cooldown_ms", "10000")?
            .unwrap_or(d.breaker_cooldown_ms),
        backends,
    })
}

fn backend(b: &Section) -> Result<BackendEntry, FieldError> {
    let name = b.string("name", "\"vllm\"")?.ok_or_else(|| {
        b.error(
            "name",
            "missing; add name = \"vllm\" to this [[llm.backends]]",
        )
    })?;
    crate::subjects::validate_name(&name).map_err(|e| b.error("name", e))?;
    let kind =
        match b.string("kind", "\"openai\"")?.as_deref() {
            Some("openai") => BackendKind::OpenAi,
            Some("ollama") => BackendKind::Ollama,
            Some(other) => {
                return Err(b.error(
                    "kind",
                    format!("{other:?} is not a backend kind; expected \"openai\" or \"ollama\""),
                ))
            }
            None => return Err(b.error(
                "kind",
                "missing; add kind = \"openai\" (vLLM, llama.cpp, LM Studio) or kind = \"ollama\"",
            )),
        };
    let url = match b.string("url", "\"http://127.0.0.1:8000\"")? {
        Some(text) => base_url(&text).map_err(|e| b.error("url", e))?,
        None => {
            return Err(b.error(
                "url",
                "missing; add url = \"http://127.0.0.1:8000\" (the server's base URL)",
            ))
        }
    };
    let models = b
        .string_list("models", "[\"qwen2.5:7b\"]")?
        .unwrap_or_default();
    if models.is_empty() {
        return Err(b.error(
            "models",
            "is empty or missing; expected the models this backend serves, like models = [\"qwen2.5:7b\"]",
        ));
    }
    if let Some(i) = models.iter().position(|m| m.trim().is_empty() || m == "*") {
        return Err(b.error(
            &format!("models[{i}]"),
            format!(
                "{:?} is not a model name; expected a name like \"qwen2.5:7b\" (models not listed anywhere go to ollama_url)",
                models[i]
            ),
        ));
    }
    let api_key_env = b.string("api_key_env", "\"VLLM_API_KEY\"")?;
    if let Some(var) = &api_key_env {
        if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(b.error(
                "api_key_env",
                format!("{var:?} is not an environment variable name; expected a name like \"VLLM_API_KEY\""),
            ));
        }
    }
    Ok(BackendEntry {
        name,
        kind,
        url,
        models,
        num_parallel: b.positive("num_parallel", "2", "no call could run on this backend")?,
        api_key_env,
    })
}

/// Normalizes a server address: `host:port` gets `http://`, a trailing `/` is dropped.
/// Accepts what `OLLAMA_HOST` usually holds, so the same value works in file and env.
pub(super) fn base_url(text: &str) -> Result<String, String> {
    let trimmed = text.trim().trim_end_matches('/');
    let expected =
        "expected a URL like \"http://127.0.0.1:11434\" or a host:port like \"127.0.0.1:11434\"";
    if trimmed.is_empty() {
        return Err(format!("is empty; {expected}"));
    }
    let url = match trimmed.split_once("://") {
        None => format!("http://{trimmed}"),
        Some(("http" | "https", rest)) if !rest.is_empty() => trimmed.to_string(),
        Some((scheme, _)) => {
            return Err(format!(
                "{text:?} has the scheme {scheme:?}; {expected} (http or https)"
            ))
        }
    };
    if url.chars().any(char::is_whitespace) {
        return Err(format!("{text:?} contains whitespace; {expected}"));
    }
    Ok(url)
}
