//! The host side of the WIT imports. One module per interface; each checks the agent's
//! manifest at the top of every call and answers `error::denied` naming the grant to add.

mod bucket;
pub mod files;
pub mod kv;
pub mod llm;
pub mod log_rate;
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

/// Counts a refused call, logs a sample of them, and builds the `denied` error the agent
/// receives.
///
/// Every denial is counted (`agent_host_denied_calls_total`); only the first, then at most
/// one a second per agent, is logged, saying how many were not since the previous line: one
/// message can make a million denied calls, and a line for each flooded the log.
pub(crate) fn deny(
    identity: &crate::agent::Identity,
    metrics: &crate::telemetry::AgentMetrics,
    why: String,
) -> WitError {
    metrics.denied.inc();
    match metrics.denial_log.sample() {
        None => {}
        Some(0) => tracing::warn!(agent = %identity.name, "denied: {why}"),
        Some(unlogged) => tracing::warn!(
            agent = %identity.name,
            "denied: {why} ({unlogged} more denied calls since the previous line were not logged; {} in all, see agent_host_denied_calls_total)",
            metrics.denied.get()
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_denial_is_counted_and_only_a_sample_is_logged() {
        let metrics = crate::telemetry::Metrics::new().for_agent("a", "default");
        let identity = crate::agent::Identity::new("default", "a", "0");
        let log = crate::telemetry::fields::log_of(|| {
            for _ in 0..10_000 {
                let e = deny(&identity, &metrics, "agent 'a' may not".to_string());
                assert!(matches!(e, WitError::Denied(why) if why == "agent 'a' may not"));
            }
        });
        assert_eq!(metrics.denied.get(), 10_000, "every one counted");
        let lines: Vec<&str> = log.lines().collect();
        assert!(
            (1..=2).contains(&lines.len()),
            "the first at once, then at most one a second: {log}"
        );
        assert!(
            lines[0].ends_with("denied: agent 'a' may not agent=a"),
            "{log}"
        );
    }
}
