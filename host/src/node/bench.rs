//! What the benchmarks measure of a node from outside its runners: instantiation and the
//! `handle` export alone.

use std::sync::Arc;
use std::time::Duration;

use super::Node;
use crate::agent::instance::{Code, InstanceLimits};

impl Node {
    /// What a new instance of loaded agent `name` needs, for the benchmarks below.
    async fn instance_parts_of(
        &self,
        name: &str,
    ) -> anyhow::Result<(Code, Arc<crate::agent::AgentCaps>, InstanceLimits)> {
        let agents = self.agents.lock().await;
        let a = agents
            .get(name)
            .ok_or_else(|| self.unknown_agent(name, &agents))?;
        Ok(a.instance_parts())
    }

    /// Times `n` instantiations of a loaded agent's component (fresh store each, from the
    /// pooling allocator), for the dispatch benchmark.
    #[doc(hidden)]
    pub async fn bench_instantiate(&self, name: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
        let (compiled, caps, limits) = self.instance_parts_of(name).await?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let started = std::time::Instant::now();
            let live =
                crate::agent::instance::instantiate(&self.engine, &compiled, caps.clone(), limits)
                    .await?;
            out.push(started.elapsed());
            drop(live);
        }
        Ok(out)
    }

    /// For benchmarks: the `handle` export alone, on a fresh live instance of agent `name`
    /// with no bus or runner around it; `n` calls of `msg`, mean time per call. With a
    /// `reply_to` the agent's reply goes through the messaging capability to the bus.
    #[doc(hidden)]
    pub async fn bench_handle(
        &self,
        name: &str,
        msg: &crate::bindings::Message,
        n: usize,
    ) -> anyhow::Result<Duration> {
        let (code, caps, limits) = self.instance_parts_of(name).await?;
        let me = caps.runtime.identity.wit_ref();
        let mut live =
            crate::agent::instance::instantiate(&self.engine, &code, caps, limits).await?;
        live.call_init(&me).await?.map_err(anyhow::Error::msg)?;
        let started = std::time::Instant::now();
        for _ in 0..n {
            live.begin_turn(msg.reply_to.as_deref(), limits.cpu_per_message);
            live.call_handle(msg).await?.map_err(anyhow::Error::msg)?;
        }
        Ok(started.elapsed() / n.max(1) as u32)
    }
}
