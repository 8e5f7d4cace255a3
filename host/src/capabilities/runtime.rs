//! `agent:host/runtime`: who the agent is, its manifest config, logging, the clock.
//!
//! No grant needed: everything here is the agent's own. Its log lines are bounded by
//! `[limits] log_lines_per_second` (see [`super::log_rate`]) and escaped by the node's log
//! formatter (see [`crate::telemetry::fields`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::component::{HasData, Linker};

use crate::agent::{AgentStore, Identity};
use crate::bindings::agent::host::runtime::{self, Level};
use crate::bindings::AgentRef;

/// Longest log line an agent may write; longer ones are cut (and say so).
pub const MAX_LOG_LINE: usize = 16 * 1024;

pub struct RuntimeCtx {
    pub identity: Identity,
    pub config: BTreeMap<String, String>,
    /// The agent's log-line budget, shared with its stdout and stderr.
    pub log_rate: Arc<super::log_rate::LogRate>,
}

pub struct RuntimeView<'a> {
    ctx: &'a RuntimeCtx,
}

struct RuntimeData;

impl HasData for RuntimeData {
    type Data<'a> = RuntimeView<'a>;
}

pub fn add_to_linker(linker: &mut Linker<AgentStore>) -> wasmtime::Result<()> {
    runtime::add_to_linker::<AgentStore, RuntimeData>(linker, |s| RuntimeView {
        ctx: &s.caps.runtime,
    })
}

impl runtime::Host for RuntimeView<'_> {
    async fn self_(&mut self) -> wasmtime::Result<AgentRef> {
        Ok(self.ctx.identity.wit_ref())
    }

    async fn config(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.ctx.config.get(&key).cloned())
    }

    async fn log(&mut self, level: Level, text: String) -> wasmtime::Result<()> {
        // Only lines the node's log filter lets through are charged to the log rate.
        let shown = match level {
            Level::Trace => tracing::enabled!(tracing::Level::TRACE),
            Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
            Level::Info => tracing::enabled!(tracing::Level::INFO),
            Level::Warn => tracing::enabled!(tracing::Level::WARN),
            Level::Error => tracing::enabled!(tracing::Level::ERROR),
        };
        if !shown || !self.ctx.log_rate.admit() {
            return Ok(());
        }
        let text = if text.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}… ({} bytes cut)", &text[..cut], text.len() - cut)
        } else {
            text
        };
        let agent = &self.ctx.identity.name;
        match level {
            Level::Trace => tracing::trace!(agent = %agent, "{text}"),
            Level::Debug => tracing::debug!(agent = %agent, "{text}"),
            Level::Info => tracing::info!(agent = %agent, "{text}"),
            Level::Warn => tracing::warn!(agent = %agent, "{text}"),
            Level::Error => tracing::error!(agent = %agent, "{text}"),
        }
        Ok(())
    }

    async fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0))
    }
}
