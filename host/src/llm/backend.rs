//! What every LLM backend implements, and how its failures are classified.
//!
//! A backend only speaks its wire protocol. Limits, retries and the breaker are the
//! service's; to drive them a backend says for each failure whether retrying could help
//! (connection refused, busy) and whether it means the backend is unhealthy (it does not
//! when the model is missing or the request is malformed: the server answered fine).

use std::time::Duration;

use crate::bindings::agent::host::llm::{ChatMessage, Options};
use crate::bindings::WitError;

/// What an agent asked for.
#[derive(Debug, Clone)]
pub enum Request {
    Chat {
        messages: Vec<ChatMessage>,
        options: Options,
    },
    Generate {
        prompt: String,
        options: Options,
    },
    Embed {
        inputs: Vec<String>,
    },
}

impl Request {
    pub fn options_mut(&mut self) -> Option<&mut Options> {
        match self {
            Request::Chat { options, .. } | Request::Generate { options, .. } => Some(options),
            Request::Embed { .. } => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Request::Chat { .. } => "chat",
            Request::Generate { .. } => "generate",
            Request::Embed { .. } => "embed",
        }
    }
}

/// What a backend answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Text {
        text: String,
        model: String,
        prompt_tokens: u32,
        completion_tokens: u32,
    },
    Embeddings {
        vectors: Vec<Vec<f32>>,
        /// Input tokens, as reported, or estimated when the backend does not say.
        tokens: u32,
    },
}

impl Response {
    /// Tokens to charge to the agent's budget.
    pub fn tokens(&self) -> (u32, u32) {
        match self {
            Response::Text {
                prompt_tokens,
                completion_tokens,
                ..
            } => (*prompt_tokens, *completion_tokens),
            Response::Embeddings { tokens, .. } => (*tokens, 0),
        }
    }
}

/// A failed attempt.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What the agent gets if this is the last attempt.
    pub error: WitError,
    /// Retrying after a backoff may succeed (connection refused, busy).
    pub retry: bool,
    /// Counts against the backend's circuit breaker.
    pub unhealthy: bool,
}

impl Failure {
    /// The backend is down or overloaded: retry, and count it.
    pub fn down(why: String) -> Failure {
        Failure {
            error: WitError::Unavailable(why),
            retry: true,
            unhealthy: true,
        }
    }

    /// The backend misbehaved; retrying the same call will not help.
    pub fn broken(why: String) -> Failure {
        Failure {
            error: WitError::Unavailable(why),
            retry: false,
            unhealthy: true,
        }
    }

    /// The backend is fine but cannot serve this call (missing model, bad request).
    pub fn refused(error: WitError) -> Failure {
        Failure {
            error,
            retry: false,
            unhealthy: false,
        }
    }

    /// The backend took longer than the request timeout.
    pub fn timed_out() -> Failure {
        Failure {
            error: WitError::Timeout,
            retry: false,
            unhealthy: true,
        }
    }

    /// Text for logs and the breaker.
    pub fn describe(&self) -> String {
        describe(&self.error)
    }
}

/// Plain words for a WIT error, for logs.
pub fn describe(e: &WitError) -> String {
    match e {
        WitError::Denied(why) => format!("denied: {why}"),
        WitError::Unavailable(why) => format!("unavailable: {why}"),
        WitError::Timeout => "timed out".into(),
        WitError::Invalid(why) => format!("invalid: {why}"),
        WitError::QuotaExceeded(why) => format!("quota exceeded: {why}"),
        WitError::Internal(why) => format!("internal: {why}"),
    }
}

/// The metrics label of a WIT error case.
pub fn error_kind(e: &WitError) -> &'static str {
    match e {
        WitError::Denied(_) => "denied",
        WitError::Unavailable(_) => "unavailable",
        WitError::Timeout => "timeout",
        WitError::Invalid(_) => "invalid",
        WitError::QuotaExceeded(_) => "quota_exceeded",
        WitError::Internal(_) => "internal",
    }
}

/// One LLM server speaking one protocol.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Runs one attempt of `request` against `model`.
    async fn call(&self, model: &str, request: &Request) -> Result<Response, Failure>;
}

/// A rough token count for backends that report none (about 4 characters a token).
pub fn estimate_tokens(texts: &[String]) -> u32 {
    let chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// Builds the HTTP client of a backend: our own timeouts rather than the library's
/// defaults (none), so a dead or hung server cannot hold a call forever.
pub fn http_client(connect: Duration, request: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(connect)
        .timeout(request)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot build the HTTP client for LLM calls: {e}"))
}

/// The most useful part of a `reqwest` error chain, for messages.
pub fn reqwest_reason(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out = format!("{out}: {s}");
        source = s.source();
    }
    out
}
