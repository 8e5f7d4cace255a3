//! `agent:host/kv`: the agent's own key-value namespace.
//!
//! Grant: `[kv] max_bytes` / `max_keys` (quota). The namespace is the agent's id and is
//! never part of what the agent passes, so no agent can reach another's keys.
//!
//! Every backend call is bounded by `[defaults] host_call_timeout_ms`: a backend that hangs
//! (a stalled disk, a NATS server that stopped answering) gives the agent `timeout`, which
//! it can handle, instead of holding the instance until the host-call watch abandons it.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasData, Linker};

use super::HostResult;
use crate::agent::AgentStore;
use crate::bindings::agent::host::kv::{self, CasOutcome, Entry};
use crate::bindings::WitError;
use crate::storage::{self, KvBackend, KvError, Quota};

/// Keys one `list-keys` call returns at most.
pub const MAX_LIST: usize = 10_000;

pub struct KvCtx {
    pub namespace: String,
    pub quota: Quota,
    pub backend: Arc<dyn KvBackend>,
    /// Longest one backend call may take before the agent gets `timeout`.
    pub timeout: Duration,
    /// The agent's name, for the log line of a timed-out call.
    pub agent: Arc<str>,
}

impl KvCtx {
    // ---- manifest check: the quota is enforced by the backend inside the write ---------
    fn quota(&self) -> &Quota {
        &self.quota
    }
}

fn wit_error(e: KvError) -> WitError {
    match e {
        KvError::Invalid(why) => WitError::Invalid(why),
        KvError::QuotaExceeded(why) => WitError::QuotaExceeded(why),
        KvError::Unavailable(why) => WitError::Unavailable(why),
        KvError::Internal(why) => WitError::Internal(why),
    }
}

pub struct KvView<'a> {
    ctx: &'a KvCtx,
}

struct KvData;

impl HasData for KvData {
    type Data<'a> = KvView<'a>;
}

pub fn add_to_linker(linker: &mut Linker<AgentStore>) -> wasmtime::Result<()> {
    kv::add_to_linker::<AgentStore, KvData>(linker, |s| KvView { ctx: &s.caps.kv })
}

impl KvView<'_> {
    /// Runs a backend call, answering `timeout` when the backend does not answer within
    /// the bound.
    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, KvError>>,
    ) -> Result<T, WitError> {
        match super::within(self.ctx.timeout, f).await {
            Some(r) => r.map_err(wit_error),
            None => Err(super::timed_out(
                &self.ctx.agent,
                "a KV call ([defaults] host_call_timeout_ms)",
                self.ctx.timeout,
            )),
        }
    }
}

impl kv::Host for KvView<'_> {
    async fn get(&mut self, key: String) -> HostResult<Option<Entry>> {
        let ctx = self.ctx;
        let r = self.timed(ctx.backend.get(&ctx.namespace, &key)).await;
        Ok(r.map(|e| {
            e.map(|e| Entry {
                value: e.value,
                revision: e.revision,
            })
        }))
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> HostResult<u64> {
        let ctx = self.ctx;
        Ok(self
            .timed(ctx.backend.set(&ctx.namespace, &key, &value, ctx.quota()))
            .await)
    }

    async fn delete(&mut self, key: String) -> HostResult<()> {
        let ctx = self.ctx;
        Ok(self.timed(ctx.backend.delete(&ctx.namespace, &key)).await)
    }

    async fn list_keys(&mut self, prefix: String) -> HostResult<Vec<String>> {
        let ctx = self.ctx;
        Ok(self
            .timed(ctx.backend.list_keys(&ctx.namespace, &prefix, MAX_LIST))
            .await)
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<u64>,
        value: Vec<u8>,
    ) -> HostResult<CasOutcome> {
        let ctx = self.ctx;
        let r = self
            .timed(ctx.backend.compare_and_swap(
                &ctx.namespace,
                &key,
                expected,
                &value,
                ctx.quota(),
            ))
            .await;
        Ok(r.map(|o| match o {
            storage::CasOutcome::Swapped(rev) => CasOutcome::Swapped(rev),
            storage::CasOutcome::Conflict(cur) => CasOutcome::Conflict(cur),
        }))
    }
}
