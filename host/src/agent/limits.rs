//! What keeps one instance inside its limits, and what a trap was, in words.
//!
//! - Memory: [`Limiter`] refuses linear-memory growth beyond the agent's limit. The refusal
//!   reaches the agent as a failed `memory.grow` (its allocator reports out-of-memory), not
//!   as a host error; it is logged and counted.
//! - CPU per call: the epoch deadline callback (see `instance.rs`) traps a call whose guest
//!   time passes the budget. Guest time is wall time minus time spent in host calls, which
//!   [`call_hook`] measures for every host call, WASI's included, so a guest waiting on the
//!   host (a request, an LLM call, a sleep) is not charged for the wait.
//! - Time blocked in one host call: epochs cannot interrupt a guest that is inside a host
//!   call, so [`HostCallWatch::bound`] abandons a call that stays in one host call longer
//!   than the node's host-call limit; the instance is then treated as trapped.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::{CallHook, ResourceLimiter, StoreContextMut, StoreLimits};

use super::{AgentStore, CpuBudgetExceeded};
use crate::telemetry::AgentMetrics;

/// The memory limit of one instance, counting and logging every refused growth.
pub struct Limiter {
    inner: StoreLimits,
    memory_bytes: u64,
    agent: Arc<str>,
    metrics: Arc<AgentMetrics>,
    /// Refusals since the instance was created (only the first is logged).
    refused: u64,
    /// Refusals before the current export call began.
    refused_before_turn: u64,
    /// Linear memory the instance has grown to (for a canary's memory gate).
    memory_in_use: usize,
}

impl Limiter {
    pub fn new(agent: &str, memory_bytes: u64, metrics: Arc<AgentMetrics>) -> Limiter {
        Limiter {
            inner: wasmtime::StoreLimitsBuilder::new()
                .memory_size(usize::try_from(memory_bytes).unwrap_or(usize::MAX))
                .build(),
            memory_bytes,
            agent: Arc::from(agent),
            metrics,
            refused: 0,
            refused_before_turn: 0,
            memory_in_use: 0,
        }
    }

    /// Marks the start of an export call (for [`Limiter::refused_in_turn`]).
    pub fn begin_turn(&mut self) {
        self.refused_before_turn = self.refused;
    }

    /// Whether a growth was refused during the current export call.
    pub fn refused_in_turn(&self) -> bool {
        self.refused > self.refused_before_turn
    }

    /// Bytes of linear memory the instance grew to.
    pub fn memory_in_use(&self) -> u64 {
        self.memory_in_use as u64
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allow = self.inner.memory_growing(current, desired, maximum)?;
        if allow {
            self.memory_in_use = self.memory_in_use.max(desired);
        } else {
            self.refused += 1;
            self.metrics.limits.memory.inc();
            if self.refused == 1 {
                tracing::warn!(
                    agent = %self.agent,
                    "memory growth from {} to {} refused: over its limit of {} ([limits] memory); the agent sees an allocation failure",
                    crate::units::format_bytes(current as u64),
                    crate::units::format_bytes(desired as u64),
                    crate::units::format_bytes(self.memory_bytes)
                );
            }
        }
        Ok(allow)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Where an instance's host time goes, and since when it is inside the current host call.
#[derive(Default)]
pub struct HostClock {
    /// Time spent in host calls since the current export call began.
    pub spent: Duration,
    /// When the host call in progress began.
    pub entered: Option<Instant>,
}

/// Runs on every transition between the guest and the host: measures host time (so it is
/// not charged as CPU) and tells the watch whether the instance is inside a host call.
pub fn call_hook(mut ctx: StoreContextMut<'_, AgentStore>, hook: CallHook) -> wasmtime::Result<()> {
    let data = ctx.data_mut();
    match hook {
        CallHook::CallingHost => {
            let now = Instant::now();
            data.turn.clock.entered = Some(now);
            data.watch.enter(now);
        }
        CallHook::ReturningFromHost => {
            if let Some(entered) = data.turn.clock.entered.take() {
                data.turn.clock.spent += entered.elapsed();
            }
            data.watch.leave();
        }
        CallHook::CallingWasm | CallHook::ReturningFromWasm => {}
    }
    Ok(())
}

/// The trap raised when a guest stays inside one host call longer than the node allows.
#[derive(Debug, thiserror::Error)]
#[error("blocked in one host call for more than {:.1} s (the node's bound on a host call: [defaults] host_call_timeout_ms, or [llm] timeout_ms if longer, plus a margin)", .limit.as_secs_f64())]
pub struct HostCallTooLong {
    pub limit: Duration,
}

/// Shared between an instance's store and whoever awaits its export calls: since when the
/// instance is inside a host call, readable while the call is in progress.
pub struct HostCallWatch {
    /// Nanoseconds since [`origin`] when the current host call began; 0 when in none.
    entered: AtomicU64,
    limit: Duration,
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl HostCallWatch {
    /// A watch that abandons calls blocked in one host call for longer than `limit`.
    pub fn new(limit: Duration) -> Arc<HostCallWatch> {
        origin();
        Arc::new(HostCallWatch {
            entered: AtomicU64::new(0),
            limit,
        })
    }

    fn enter(&self, at: Instant) {
        let nanos = u64::try_from(at.duration_since(origin()).as_nanos()).unwrap_or(u64::MAX);
        self.entered.store(nanos.max(1), Ordering::Relaxed);
    }

    fn leave(&self) {
        self.entered.store(0, Ordering::Relaxed);
    }

    /// How long the instance has been inside its current host call (zero when in none).
    pub fn in_host_call_for(&self) -> Duration {
        match self.entered.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            nanos => origin()
                .elapsed()
                .saturating_sub(Duration::from_nanos(nanos)),
        }
    }

    /// Runs an export call, abandoning it (an error, as if it trapped) when the instance
    /// stays inside one host call longer than the limit. Dropping the call unwinds the
    /// guest; the instance must not be used again.
    pub async fn bound<T>(
        &self,
        call: impl Future<Output = wasmtime::Result<T>>,
    ) -> wasmtime::Result<T> {
        // A call that finishes without waiting never starts the timer.
        tokio::select! {
            biased;
            result = call => result,
            () = self.blocked_too_long() => Err(HostCallTooLong { limit: self.limit }.into()),
        }
    }

    async fn blocked_too_long(&self) {
        let every = (self.limit / 8).clamp(Duration::from_millis(5), Duration::from_secs(1));
        loop {
            tokio::time::sleep(every).await;
            if self.in_host_call_for() > self.limit {
                return;
            }
        }
    }
}

/// Which limit a trap was, for the `agent_host_limit_hits_total` counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitHit {
    Cpu,
    Stack,
    HostCall,
}

/// A trap in words an operator can act on (the wasm backtrace stays in the debug log), and
/// the limit it hit, if it was one.
pub fn describe_trap(trap: &wasmtime::Error, memory_refused: bool) -> (String, Option<LimitHit>) {
    if let Some(e) = trap.downcast_ref::<CpuBudgetExceeded>() {
        return (e.to_string(), Some(LimitHit::Cpu));
    }
    if let Some(e) = trap.downcast_ref::<HostCallTooLong>() {
        return (e.to_string(), Some(LimitHit::HostCall));
    }
    if let Some(exit) = trap.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return (format!("called exit({})", exit.0), None);
    }
    let oom = if memory_refused {
        "; its memory growth beyond [limits] memory was refused in this call"
    } else {
        ""
    };
    match trap.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::StackOverflow) => (
            "stack overflow: wasm trap: call stack exhausted (unbounded recursion?)".to_string(),
            Some(LimitHit::Stack),
        ),
        Some(wasmtime::Trap::UnreachableCodeReached) => (
            format!("wasm trap: wasm `unreachable` instruction executed: the agent panicked or aborted (its stderr in the log says why){oom}"),
            None,
        ),
        Some(other) => (format!("wasm trap: {other}{oom}"), None),
        None => (format!("{:#}", trap.root_cause()), None),
    }
}
