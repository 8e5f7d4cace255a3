use std::fmt;

pub use crate::bindings::agent::host::types::Error as HostError;

/// The error an agent's handler returns: any displayable error converts into it with `?`.
pub struct AgentError(String);

/// The result type of agent code.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

impl AgentError {
    pub fn new(text: impl Into<String>) -> Self {
        AgentError(text.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

impl<E: fmt::Display> From<E> for AgentError {
    fn from(e: E) -> Self {
        AgentError(e.to_string())
    }
}

impl fmt::Debug for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AgentError {
    /// The text handed to the host (we avoid `Display` so `From<E: Display>` stays coherent).
    #[allow(clippy::inherent_to_string)]
    pub fn to_string(&self) -> String {
        self.0.clone()
    }
}

/// Plain words for a host error, e.g. `denied: add "x" to [messaging] publish in the manifest`.
pub fn describe(e: &HostError) -> String {
    match e {
        HostError::Denied(why) => format!("denied: {why}"),
        HostError::Unavailable(why) => format!("unavailable: {why}"),
        HostError::Timeout => "timed out".to_string(),
        HostError::Invalid(why) => format!("invalid: {why}"),
        HostError::QuotaExceeded(why) => format!("quota exceeded: {why}"),
        HostError::Internal(why) => format!("host error: {why}"),
    }
}

/// Converts a host call's result into the agent's, keeping the host's words.
pub(crate) fn host<T>(r: std::result::Result<T, HostError>) -> Result<T> {
    r.map_err(|e| AgentError(describe(&e)))
}
