//! The host side of the WIT imports. One module per interface; each checks the agent's
//! manifest at the top of every call and answers `error::denied` naming the grant to add.

pub mod files;
pub mod kv;
pub mod llm;
pub mod messaging;
pub mod rate;
pub mod runtime;

use wasmtime::component::{HasSelf, Linker};

use crate::agent::AgentStore;
use crate::bindings::agent::host::types;
use crate::bindings::WitError;

/// Links every agent import (not WASI) into `linker`.
pub fn add_to_linker(linker: &mut Linker<AgentStore>) -> wasmtime::Result<()> {
    types::add_to_linker::<AgentStore, HasSelf<AgentStore>>(linker, |s| s)?;
    messaging::add_to_linker(linker)?;
    kv::add_to_linker(linker)?;
    llm::add_to_linker(linker)?;
    runtime::add_to_linker(linker)?;
    Ok(())
}

impl types::Host for AgentStore {}

/// The result every fallible import returns: the outer error traps the instance (host
/// bugs only); the inner one is the agent's to handle.
pub type HostResult<T> = wasmtime::Result<Result<T, WitError>>;

/// Logs and counts a refused call, and builds the `denied` error the agent receives.
pub(crate) fn deny(
    identity: &crate::agent::Identity,
    metrics: &crate::telemetry::AgentMetrics,
    why: String,
) -> WitError {
    metrics.denied.inc();
    tracing::warn!(agent = %identity.name, "denied: {why}");
    WitError::Denied(why)
}

pub(crate) use crate::bounded::within;

/// A backend call that did not answer within `limit`: logged; the agent gets `timeout`,
/// which it can handle.
pub(crate) fn timed_out(agent: &str, what: &str, limit: std::time::Duration) -> WitError {
    tracing::warn!(
        agent = %agent,
        "{what} got no answer within {} ms; the agent gets `timeout`",
        limit.as_millis()
    );
    WitError::Timeout
}
