//! What keeps one instance inside its limits, and what a trap was, in words.
//!
//! - Memory: [`Limiter`] refuses linear-memory growth beyond the agent's limit. The refusal
//!   reaches the agent as a failed `memory.grow` (its allocator reports out-of-memory), not
//!   as a host error; it is logged and counted.
//! - CPU per call: the epoch deadline callback (see `instance.rs`) traps a call whose guest
//!   time passes the budget. Guest time is the smaller of two upper bounds: wall time minus
//!   time spent in host calls, which [`call_hook`] measures for every host call, WASI's and
//!   the epoch yield included (a guest waiting on the host — a request, an LLM call, a
//!   sleep — or for its next turn is not charged for the wait), and the time the call ran
//!   ([`HostCallWatch::running_time`]: thread CPU time once a call outlasts one epoch tick,
//!   so a machine whose cores are taken by other work does not make a healthy agent trap).
//! - Tables and instances: [`InstanceCounts`] bounds the core instances, tables and
//!   memories one instance may create and how far a table may grow; a component needing
//!   more is refused at load with the field to raise, a refused `table.grow` fails inside
//!   the agent (logged, counted).
//! - Time blocked in one host call: epochs cannot interrupt a guest that is inside a host
//!   call, so [`HostCallWatch::bound`] abandons a call that stays in one host call longer
//!   than the node's host-call limit; the instance is then treated as trapped.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::{CallHook, ResourceLimiter, StoreContextMut, StoreLimits};

use super::{AgentStore, CpuBudgetExceeded};
use crate::telemetry::AgentMetrics;

/// How many core instances, tables and memories one instance may create, and how many
/// elements a table may grow to (`[limits]`, node defaults in `[defaults]`). The engine's
/// pool bounds each per component already; these let an operator hold one agent tighter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceCounts {
    pub table_elements: u32,
    pub instances: u32,
    pub tables: u32,
    pub memories: u32,
}

impl Default for InstanceCounts {
    /// The pool's own bounds: nothing tighter than what the engine allows.
    fn default() -> Self {
        use crate::engine::{
            CORE_INSTANCES_PER_COMPONENT, MEMORIES_PER_COMPONENT, TABLES_PER_COMPONENT,
            TABLE_ELEMENTS,
        };
        InstanceCounts {
            table_elements: TABLE_ELEMENTS,
            instances: CORE_INSTANCES_PER_COMPONENT,
            tables: TABLES_PER_COMPONENT,
            memories: MEMORIES_PER_COMPONENT,
        }
    }
}

impl InstanceCounts {
    /// Each count with its field name, for messages.
    pub fn fields(&self) -> [(&'static str, u32); 4] {
        [
            ("table_elements", self.table_elements),
            ("instances", self.instances),
            ("tables", self.tables),
            ("memories", self.memories),
        ]
    }

    /// The first count above what the engine's pool allows: `(field, value, most allowed)`.
    pub fn over_pool(&self) -> Option<(&'static str, u32, u32)> {
        let pool = InstanceCounts::default().fields();
        self.fields()
            .into_iter()
            .zip(pool)
            .find(|((_, value), (_, max))| value > max)
            .map(|((field, value), (_, max))| (field, value, max))
    }

    /// Explains an instantiation refused for one of these counts (wasmtime says "resource
    /// limit exceeded: instance count too high at 3"), or `None` for any other error.
    pub fn explain(&self, error: &wasmtime::Error) -> Option<String> {
        let text = format!("{error:#}");
        let rest = text.split("resource limit exceeded: ").nth(1)?;
        let (field, limit) = match rest.split(' ').next()? {
            "instance" => ("instances", self.instances),
            "table" => ("tables", self.tables),
            "memory" => ("memories", self.memories),
            _ => return None,
        };
        Some(format!(
            "the component needs more {field} than its limit of {limit} ({rest}); raise [limits] {field} in its manifest or [defaults] {field} in the node config"
        ))
    }
}

/// The counts `manifest` asks for, each falling back to the node default; a value above
/// the pool's is refused naming the manifest field.
pub fn counts_for(
    manifest: &crate::manifest::Manifest,
    defaults: &InstanceCounts,
) -> anyhow::Result<InstanceCounts> {
    let l = &manifest.limits;
    let counts = InstanceCounts {
        table_elements: l.table_elements.unwrap_or(defaults.table_elements),
        instances: l.instances.unwrap_or(defaults.instances),
        tables: l.tables.unwrap_or(defaults.tables),
        memories: l.memories.unwrap_or(defaults.memories),
    };
    if let Some((field, value, max)) = counts.over_pool() {
        let file = manifest
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<inline>".into());
        anyhow::bail!(
            "manifest {file}: field limits.{field}: {value} is more than this node's engine allows per component ({max}); expected at most {max}"
        );
    }
    Ok(counts)
}

/// The memory and table limits of one instance, counting and logging every refused growth.
pub struct Limiter {
    inner: StoreLimits,
    memory_bytes: u64,
    table_elements: u32,
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
    pub fn new(
        agent: &str,
        memory_bytes: u64,
        counts: InstanceCounts,
        metrics: Arc<AgentMetrics>,
    ) -> Limiter {
        Limiter {
            inner: wasmtime::StoreLimitsBuilder::new()
                .memory_size(usize::try_from(memory_bytes).unwrap_or(usize::MAX))
                .table_elements(counts.table_elements as usize)
                .instances(counts.instances as usize)
                .tables(counts.tables as usize)
                .memories(counts.memories as usize)
                .build(),
            memory_bytes,
            table_elements: counts.table_elements,
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
        let allow = self.inner.table_growing(current, desired, maximum)?;
        if !allow {
            self.metrics.limits.table.inc();
            if self.metrics.limits.table.get().is_power_of_two() {
                tracing::warn!(
                    agent = %self.agent,
                    "table growth from {current} to {desired} elements refused: over its limit of {} ([limits] table_elements); the agent sees table.grow fail",
                    self.table_elements
                );
            }
        }
        Ok(allow)
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

/// CPU time the calling thread has used, in nanoseconds.
fn thread_cpu_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
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
    /// Nanoseconds the current export call has run, polls finished so far (see
    /// [`Self::running_time`]).
    polled: AtomicU64,
    /// Nanoseconds since [`origin`] when the poll in progress began; 0 when none is.
    poll_began: AtomicU64,
    /// Whether the current call is measured in thread CPU time (from its first check on).
    precise: AtomicBool,
    /// The thread's CPU clock, in nanoseconds, when the poll in progress began (precise).
    poll_cpu_began: AtomicU64,
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// `at` as nanoseconds since [`origin`], never 0 (0 means "none" in the watch's fields).
fn since_origin(at: Instant) -> u64 {
    u64::try_from(at.duration_since(origin()).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl HostCallWatch {
    /// A watch that abandons calls blocked in one host call for longer than `limit`.
    pub fn new(limit: Duration) -> Arc<HostCallWatch> {
        origin();
        Arc::new(HostCallWatch {
            entered: AtomicU64::new(0),
            limit,
            polled: AtomicU64::new(0),
            poll_began: AtomicU64::new(0),
            precise: AtomicBool::new(false),
            poll_cpu_began: AtomicU64::new(0),
        })
    }

    fn enter(&self, at: Instant) {
        self.entered.store(since_origin(at), Ordering::Relaxed);
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
        self.polled.store(0, Ordering::Relaxed);
        self.precise.store(false, Ordering::Relaxed);
        let call = self.timing_polls(call);
        // A call that finishes without waiting never starts the timer.
        tokio::select! {
            biased;
            result = call => result,
            () = self.blocked_too_long() => Err(HostCallTooLong { limit: self.limit }.into()),
        }
    }

    /// How long the current export call has been running, for its CPU budget; call it only
    /// from inside the call (the epoch callback). Until the first check, the wall time of
    /// its polls: the wait for a turn after the epoch yield, long on a busy node, is not in
    /// it. From the first check on, the thread's CPU time during its polls, which a machine
    /// whose cores are taken by other work does not inflate either. Most calls end before
    /// the first check and never read the thread clock (a system call).
    pub fn running_time(&self) -> Duration {
        let finished = self.polled.load(Ordering::Relaxed);
        let current = if self.precise.load(Ordering::Relaxed) {
            thread_cpu_nanos().saturating_sub(self.poll_cpu_began.load(Ordering::Relaxed))
        } else {
            // Charge the wall time of this poll so far and measure the rest in CPU time.
            let wall = match self.poll_began.load(Ordering::Relaxed) {
                0 => 0,
                began => since_origin(Instant::now()).saturating_sub(began),
            };
            self.polled.fetch_add(wall, Ordering::Relaxed);
            self.poll_cpu_began
                .store(thread_cpu_nanos(), Ordering::Relaxed);
            self.precise.store(true, Ordering::Relaxed);
            wall
        };
        Duration::from_nanos(finished.saturating_add(current))
    }

    /// Runs `call`, adding the time of each of its polls to [`Self::running_time`].
    async fn timing_polls<T>(&self, call: impl Future<Output = T>) -> T {
        let mut call = std::pin::pin!(call);
        std::future::poll_fn(|cx| {
            let began = Instant::now();
            if self.precise.load(Ordering::Relaxed) {
                self.poll_cpu_began
                    .store(thread_cpu_nanos(), Ordering::Relaxed);
            } else {
                self.poll_began
                    .store(since_origin(began), Ordering::Relaxed);
            }
            let result = call.as_mut().poll(cx);
            // The call may have switched to CPU time during this poll.
            let took = if self.precise.load(Ordering::Relaxed) {
                thread_cpu_nanos().saturating_sub(self.poll_cpu_began.load(Ordering::Relaxed))
            } else {
                u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX)
            };
            self.poll_began.store(0, Ordering::Relaxed);
            self.polled.fetch_add(took, Ordering::Relaxed);
            result
        })
        .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_default_to_what_the_pool_allows_and_may_not_exceed_it() {
        let pool = InstanceCounts::default();
        assert_eq!(pool.over_pool(), None);
        let more = InstanceCounts {
            tables: pool.tables + 1,
            ..pool
        };
        assert_eq!(
            more.over_pool(),
            Some(("tables", pool.tables + 1, pool.tables))
        );
    }

    #[test]
    fn an_instantiation_over_a_count_names_the_field_to_raise() {
        let counts = InstanceCounts {
            instances: 1,
            ..InstanceCounts::default()
        };
        let e = wasmtime::format_err!("resource limit exceeded: instance count too high at 2");
        let why = counts.explain(&e).unwrap();
        assert_eq!(
            why,
            "the component needs more instances than its limit of 1 (instance count too high at 2); raise [limits] instances in its manifest or [defaults] instances in the node config"
        );
        assert_eq!(counts.explain(&wasmtime::format_err!("other")), None);
    }

    #[test]
    fn a_table_growth_past_table_elements_is_refused_and_counted() {
        let metrics = crate::telemetry::Metrics::new().for_agent("a", "default");
        let counts = InstanceCounts {
            table_elements: 100,
            ..InstanceCounts::default()
        };
        let mut limiter = Limiter::new("a", 1 << 20, counts, metrics.clone());
        assert!(limiter.table_growing(10, 100, None).unwrap());
        assert!(!limiter.table_growing(100, 101, None).unwrap());
        assert_eq!(metrics.limits.table.get(), 1);
    }
}
