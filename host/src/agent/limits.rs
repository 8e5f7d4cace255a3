//! What keeps one instance inside its limits, and what a trap was, in words.
//!
//! - Memory: [`Limiter`] refuses linear-memory growth beyond the agent's limit. The refusal
//!   reaches the agent as a failed `memory.grow` (its allocator reports out-of-memory), not
//!   as a host error; it is logged and counted.
//! - CPU per call: the epoch deadline callback (see `instance.rs`) traps a call whose guest
//!   time passes the budget ([`HostCallWatch::running_time`]): the time its polls took, so
//!   a guest waiting on the host — a request, an LLM call, a sleep — or for its next turn
//!   after an epoch yield is not charged for the wait (the call is not being polled then),
//!   and thread CPU time once a call outlasts one epoch tick, so a machine whose cores are
//!   taken by other work does not make a healthy agent trap. What the host does
//!   synchronously inside a host call counts as the call's.
//! - Tables and instances: [`InstanceCounts`] bounds the core instances, tables and
//!   memories one instance may create and how far a table may grow; a component needing
//!   more is refused at load with the field to raise, a refused `table.grow` fails inside
//!   the agent (logged, counted).
//! - Time blocked in one host call: epochs cannot interrupt a guest that is inside a host
//!   call, so [`HostCallWatch::bound`] abandons a call that stays in one host call longer
//!   than the node's host-call limit; the instance is then treated as trapped.

use std::sync::Arc;

use wasmtime::{ResourceLimiter, StoreLimits};

use super::CpuBudgetExceeded;
use crate::telemetry::AgentMetrics;

mod watch;

pub use watch::{within_lifecycle_bound, HostCallTooLong, HostCallWatch, LifecycleTooLong};

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

/// Which limit a trap was, for the `agent_host_limit_hits_total` counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitHit {
    Cpu,
    Stack,
    HostCall,
    /// `init`, `version`, `snapshot` or `restore` ran past its wall-time bound.
    Lifecycle,
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
    if let Some(e) = trap.downcast_ref::<LifecycleTooLong>() {
        return (e.to_string(), Some(LimitHit::Lifecycle));
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
