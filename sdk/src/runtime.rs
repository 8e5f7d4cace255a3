//! Who the agent is, its manifest config, logging through the host, and the clock.

use crate::bindings::agent::host::runtime as wit;
pub use crate::bindings::agent::host::runtime::Level;
use crate::AgentRef;

/// The reference this agent runs as (`cluster.name.id`).
pub fn me() -> AgentRef {
    wit::self_()
}

/// A value from the manifest's `[config]` table.
pub fn config(key: &str) -> Option<String> {
    wit::config(key)
}

/// Logs through the host, tagged with this agent.
pub fn log(level: Level, text: &str) {
    wit::log(level, text)
}

pub fn info(text: &str) {
    log(Level::Info, text)
}

pub fn warn(text: &str) {
    log(Level::Warn, text)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    wit::now()
}
