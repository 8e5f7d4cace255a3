//! `agent:host/runtime`: who the agent is, its manifest config, logging, the clock.
//!
//! No grant needed: everything here is the agent's own.

use std::collections::BTreeMap;
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
