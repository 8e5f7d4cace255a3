//! Creating an agent's store and live instance from its pre-instantiated component.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Store, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{ResourceTable, WasiCtx};

use super::stdio::LogStream;
use super::{AgentCaps, AgentStore, CpuBudgetExceeded, Turn};
use crate::bindings::Agent;
use crate::engine::{CompiledAgent, Engine};

/// Limits applied to one instance.
#[derive(Clone, Copy, Debug)]
pub struct InstanceLimits {
    pub memory_bytes: u64,
    pub cpu_per_message: Duration,
}

/// A live instance and the store that owns its memory.
pub struct Live {
    pub store: Store<AgentStore>,
    pub bindings: Agent,
}

impl Live {
    /// Opens a turn: sets what host calls check against and arms the CPU deadline.
    pub fn begin_turn(&mut self, reply_to: Option<String>, budget: Duration) {
        let turn = &mut self.store.data_mut().turn;
        turn.reply_to = reply_to;
        turn.started = std::time::Instant::now();
        turn.host_time = Duration::ZERO;
        turn.cpu_budget = budget;
        self.store.set_epoch_deadline(1);
    }
}

/// Instantiates `compiled` with nothing granted through WASI but stdout/stderr (to the log),
/// clocks and randomness.
pub async fn instantiate(
    engine: &Engine,
    compiled: &CompiledAgent,
    caps: Arc<AgentCaps>,
    limits: InstanceLimits,
) -> anyhow::Result<Live> {
    let name = caps.runtime.identity.name.clone();
    let wasi = WasiCtx::builder()
        .stdout(LogStream::new(&name, "stdout"))
        .stderr(LogStream::new(&name, "stderr"))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let store_limits = StoreLimitsBuilder::new()
        .memory_size(usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX))
        .build();
    let data = AgentStore {
        wasi,
        table: ResourceTable::new(),
        limits: store_limits,
        caps,
        turn: Turn::idle(),
    };
    let mut store = Store::new(engine.wasmtime(), data);
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_callback(|ctx| {
        let turn = &ctx.data().turn;
        if turn.cpu_used() > turn.cpu_budget {
            let budget_ms = turn.cpu_budget.as_millis() as u64;
            return Err(CpuBudgetExceeded { budget_ms }.into());
        }
        // Let other agents run on this worker thread, then keep going.
        Ok(UpdateDeadline::Yield(1))
    });
    // Instantiation runs the component's start code: bound it like a call.
    store.data_mut().turn.cpu_budget = limits.cpu_per_message.max(Duration::from_secs(1));
    store.data_mut().turn.started = std::time::Instant::now();
    store.set_epoch_deadline(1);
    let bindings = compiled.pre.instantiate_async(&mut store).await?;
    Ok(Live { store, bindings })
}
