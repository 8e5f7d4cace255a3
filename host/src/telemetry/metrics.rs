//! Prometheus metrics of the node and of each agent.
//!
//! Each agent holds its own counter handles (cloned out of the label families once at
//! load), so the message path never looks a label set up.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

pub use crate::llm::metrics::{LlmAgentMetrics, LlmFamilies};

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    pub agent: String,
    pub cluster: String,
}

/// An agent and the limit it ran into (`cpu`, `memory`, `stack`, `host_call`, `files`, `publish_rate`,
/// `table`, `lifecycle`, `log_rate`, `snapshot`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub agent: String,
    pub cluster: String,
    pub limit: &'static str,
}

/// An agent and an upgrade event (`canary_started`, `canary_step`, `canary_check_failed`,
/// `canary_rolled_back`, `canary_completed`, `wave_rolled_back`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpgradeEventLabels {
    pub agent: String,
    pub cluster: String,
    pub event: &'static str,
}

/// The upgrade events counted per agent (kept in one list so an unloaded agent's series go).
pub const UPGRADE_EVENTS: [&str; 6] = [
    "canary_started",
    "canary_step",
    "canary_check_failed",
    "canary_rolled_back",
    "canary_completed",
    "wave_rolled_back",
];

type LatencyFamily = Family<AgentLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 10 µs .. ~2.6 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00001, 4.0, 10,
    ))
}

/// All metric families of a node.
pub struct Metrics {
    registry: Mutex<Registry>,
    handled: Family<AgentLabels, Counter>,
    errors: Family<AgentLabels, Counter>,
    traps: Family<AgentLabels, Counter>,
    denied: Family<AgentLabels, Counter>,
    dropped: Family<AgentLabels, Counter>,
    duplicates: Family<AgentLabels, Counter>,
    misaddressed: Family<AgentLabels, Counter>,
    paired_late: Family<AgentLabels, Counter>,
    unpaired: Family<AgentLabels, Counter>,
    limit_hits: Family<LimitLabels, Counter>,
    canary_percent: Family<AgentLabels, Gauge>,
    upgrade_events: Family<UpgradeEventLabels, Counter>,
    latency: LatencyFamily,
    agents: Gauge,
    rss_bytes: Gauge<u64, AtomicU64>,
    bus_dropped: Gauge<u64, AtomicU64>,
    bus_connected: Gauge,
    bus_reconnects: Gauge<u64, AtomicU64>,
    mailboxes_queued: Gauge<u64, AtomicU64>,
    /// LLM calls, tokens, queue waits and breaker states (see [`LlmFamilies`]).
    pub llm: LlmFamilies,
}

/// The metric handles of one agent.
#[derive(Clone)]
pub struct AgentMetrics {
    pub labels: AgentLabels,
    /// Messages `handle` returned Ok for.
    pub handled: Counter,
    /// Messages `handle` returned an error for.
    pub errors: Counter,
    /// Traps (panics, CPU or memory limits) of the agent's instance.
    pub traps: Counter,
    /// Host calls the manifest refused.
    pub denied: Counter,
    /// Which denied calls are logged: every one is counted in `denied`, a sample is logged
    /// (one a second), so a flood of denied calls cannot flood the log.
    pub denial_log: Arc<crate::log_sample::LogSample>,
    /// Messages dropped because the agent's mailbox was full.
    pub dropped: Counter,
    /// Messages dropped as duplicates (same message id seen twice).
    pub duplicates: Counter,
    /// Messages on the agent's agent-ref subscription whose subject names another cluster
    /// or agent than the one that owns the id (a forged reference): dropped, never handled.
    pub misaddressed: Counter,
    /// Durable stream copies whose core copy came after them, while they were held for it:
    /// each a request that the pairing wait saved from going unanswered (or a publish).
    pub durable_paired_late: Counter,
    /// Durable stream copies held the whole pairing wait and handled without a core copy:
    /// if one was a request, its requester got no reply (raise the wait if this grows).
    pub durable_unpaired: Counter,
    /// Seconds `handle` took per message.
    pub latency: Histogram,
    /// Times the agent ran into each of its limits.
    pub limits: LimitHits,
    /// Share of conversations a running canary routes to the new version (0: none).
    pub canary_percent: Gauge,
    upgrade_events: Family<UpgradeEventLabels, Counter>,
}

impl AgentMetrics {
    /// Counts an upgrade event of this agent (one of [`UPGRADE_EVENTS`]).
    pub fn upgrade_event(&self, event: &'static str) {
        debug_assert!(UPGRADE_EVENTS.contains(&event), "{event}");
        self.upgrade_events
            .get_or_create(&UpgradeEventLabels {
                agent: self.labels.agent.clone(),
                cluster: self.labels.cluster.clone(),
                event,
            })
            .inc();
    }
}

/// Counters of the limits an agent ran into; each is also a trap except `memory` (a
/// refused growth is an allocation failure the agent may handle).
#[derive(Clone)]
pub struct LimitHits {
    /// Calls stopped at `[limits] cpu_ms_per_message`.
    pub cpu: Counter,
    /// Memory growths refused at `[limits] memory`.
    pub memory: Counter,
    /// Calls trapped by a stack overflow.
    pub stack: Counter,
    /// Calls abandoned while blocked in one host call for too long.
    pub host_call: Counter,
    /// File writes refused at `[files] max_bytes`.
    pub files: Counter,
    /// Messages refused at `[limits] publish_per_second`.
    pub publish_rate: Counter,
    /// Table growths refused at `[limits] table_elements`.
    pub table: Counter,
    /// `init`, `version`, `snapshot` or `restore` calls abandoned past their wall-time bound
    /// (`[defaults] init_timeout_ms`, `handoff_timeout_ms`).
    pub lifecycle: Counter,
    /// Log lines of the agent (`runtime.log`, stdout, stderr) dropped over
    /// `[limits] log_lines_per_second`.
    pub log_rate: Counter,
    /// Snapshots refused at `[limits] max_snapshot_bytes`.
    pub snapshot: Counter,
}

impl LimitHits {
    const KINDS: [&'static str; 10] = [
        "cpu",
        "memory",
        "stack",
        "host_call",
        "files",
        "publish_rate",
        "table",
        "lifecycle",
        "log_rate",
        "snapshot",
    ];

    /// The counts so far, as `host status` shows them.
    pub fn counts(&self) -> crate::agent::LimitHitCounts {
        crate::agent::LimitHitCounts {
            cpu: self.cpu.get(),
            memory: self.memory.get(),
            stack: self.stack.get(),
            host_call: self.host_call.get(),
            files: self.files.get(),
            publish_rate: self.publish_rate.get(),
            table: self.table.get(),
            lifecycle: self.lifecycle.get(),
            log_rate: self.log_rate.get(),
            snapshot: self.snapshot.get(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("agent_host");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            handled: Family::default(),
            errors: Family::default(),
            traps: Family::default(),
            denied: Family::default(),
            dropped: Family::default(),
            duplicates: Family::default(),
            misaddressed: Family::default(),
            paired_late: Family::default(),
            unpaired: Family::default(),
            limit_hits: Family::default(),
            canary_percent: Family::default(),
            upgrade_events: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            agents: Gauge::default(),
            rss_bytes: Gauge::default(),
            bus_dropped: Gauge::default(),
            bus_connected: Gauge::default(),
            bus_reconnects: Gauge::default(),
            mailboxes_queued: Gauge::default(),
            llm: LlmFamilies::default(),
        };
        registry.register(
            "messages_handled",
            "Messages an agent handled successfully",
            m.handled.clone(),
        );
        registry.register(
            "handle_errors",
            "Messages an agent's handler returned an error for",
            m.errors.clone(),
        );
        registry.register(
            "traps",
            "Traps of an agent's instance (panic, CPU or memory limit)",
            m.traps.clone(),
        );
        registry.register(
            "denied_calls",
            "Host calls refused by the agent's manifest",
            m.denied.clone(),
        );
        registry.register(
            "mailbox_dropped",
            "Messages dropped because the agent's mailbox was full",
            m.dropped.clone(),
        );
        registry.register(
            "duplicates_dropped",
            "Messages dropped as duplicates of one already handled",
            m.duplicates.clone(),
        );
        registry.register(
            "misaddressed_dropped",
            "Messages dropped because their agent-ref subject names another cluster or agent than the one owning the id",
            m.misaddressed.clone(),
        );
        registry.register(
            "durable_paired_late",
            "Durable stream copies whose core copy came after them, while held for it ([nats] request_pairing_wait_ms)",
            m.paired_late.clone(),
        );
        registry.register(
            "durable_unpaired",
            "Durable stream copies handled without a core copy after the whole pairing wait (a request among them got no reply)",
            m.unpaired.clone(),
        );
        registry.register(
            "limit_hits",
            "Times an agent ran into a limit (cpu, memory, stack, host_call, files, publish_rate, table, lifecycle, log_rate, snapshot)",
            m.limit_hits.clone(),
        );
        registry.register(
            "canary_percent",
            "Share of an agent's conversations a running canary routes to the new version",
            m.canary_percent.clone(),
        );
        registry.register(
            "upgrade_events",
            "Upgrade events of an agent: canary steps, failed checks, rollbacks, completions",
            m.upgrade_events.clone(),
        );
        registry.register(
            "handle_seconds",
            "Time an agent's handle export took per message",
            m.latency.clone(),
        );
        registry.register("agents", "Agents loaded on this node", m.agents.clone());
        registry.register(
            "resident_memory_bytes",
            "Resident memory of the host process",
            m.rss_bytes.clone(),
        );
        registry.register(
            "bus_dropped",
            "Messages the bus dropped for slow subscribers",
            m.bus_dropped.clone(),
        );
        registry.register(
            "bus_connected",
            "1 while the node's bus is connected (NATS: to one of the servers in [nats] url), 0 while it reconnects",
            m.bus_connected.clone(),
        );
        registry.register(
            "bus_reconnects",
            "Times the node's NATS connection was re-established since start",
            m.bus_reconnects.clone(),
        );
        registry.register(
            "mailboxes_queued_bytes",
            "Bytes waiting in every agent mailbox of the node together ([node] mailboxes_max_bytes bounds it)",
            m.mailboxes_queued.clone(),
        );
        m.llm.register(&mut registry);
        *m.registry.lock().expect("metrics registry lock") = registry;
        m
    }

    /// The handles of one agent (created on first use).
    pub fn for_agent(&self, agent: &str, cluster: &str) -> Arc<AgentMetrics> {
        let labels = AgentLabels {
            agent: agent.to_string(),
            cluster: cluster.to_string(),
        };
        Arc::new(AgentMetrics {
            handled: self.handled.get_or_create(&labels).clone(),
            errors: self.errors.get_or_create(&labels).clone(),
            traps: self.traps.get_or_create(&labels).clone(),
            denied: self.denied.get_or_create(&labels).clone(),
            denial_log: Arc::default(),
            dropped: self.dropped.get_or_create(&labels).clone(),
            duplicates: self.duplicates.get_or_create(&labels).clone(),
            misaddressed: self.misaddressed.get_or_create(&labels).clone(),
            durable_paired_late: self.paired_late.get_or_create(&labels).clone(),
            durable_unpaired: self.unpaired.get_or_create(&labels).clone(),
            latency: self.latency.get_or_create(&labels).clone(),
            limits: LimitHits {
                cpu: self.limit_hit(&labels, "cpu"),
                memory: self.limit_hit(&labels, "memory"),
                stack: self.limit_hit(&labels, "stack"),
                host_call: self.limit_hit(&labels, "host_call"),
                files: self.limit_hit(&labels, "files"),
                publish_rate: self.limit_hit(&labels, "publish_rate"),
                table: self.limit_hit(&labels, "table"),
                lifecycle: self.limit_hit(&labels, "lifecycle"),
                log_rate: self.limit_hit(&labels, "log_rate"),
                snapshot: self.limit_hit(&labels, "snapshot"),
            },
            canary_percent: self.canary_percent.get_or_create(&labels).clone(),
            upgrade_events: self.upgrade_events.clone(),
            labels,
        })
    }

    fn limit_hit(&self, agent: &AgentLabels, limit: &'static str) -> Counter {
        self.limit_hits
            .get_or_create(&LimitLabels {
                agent: agent.agent.clone(),
                cluster: agent.cluster.clone(),
                limit,
            })
            .clone()
    }

    /// Forgets an unloaded agent's series.
    pub fn remove_agent(&self, labels: &AgentLabels) {
        self.handled.remove(labels);
        self.errors.remove(labels);
        self.traps.remove(labels);
        self.denied.remove(labels);
        self.dropped.remove(labels);
        self.duplicates.remove(labels);
        self.misaddressed.remove(labels);
        self.paired_late.remove(labels);
        self.unpaired.remove(labels);
        self.latency.remove(labels);
        self.canary_percent.remove(labels);
        for event in UPGRADE_EVENTS {
            self.upgrade_events.remove(&UpgradeEventLabels {
                agent: labels.agent.clone(),
                cluster: labels.cluster.clone(),
                event,
            });
        }
        for limit in LimitHits::KINDS {
            self.limit_hits.remove(&LimitLabels {
                agent: labels.agent.clone(),
                cluster: labels.cluster.clone(),
                limit,
            });
        }
        self.llm.remove_agent(labels);
    }

    pub fn set_agents(&self, n: usize) {
        self.agents.set(n as i64);
    }

    /// Copies the bus's state into its gauges (read when the metrics are scraped).
    pub fn set_bus_state(&self, state: &crate::bus::BusState) {
        self.bus_dropped.set(state.dropped);
        self.bus_connected.set(i64::from(state.connected));
        self.bus_reconnects.set(state.reconnects);
    }

    /// Sets the bytes waiting in the node's mailboxes (read when the metrics are scraped).
    pub fn set_mailboxes_queued(&self, bytes: usize) {
        self.mailboxes_queued.set(bytes as u64);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        self.rss_bytes.set(resident_memory_bytes().unwrap_or(0));
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry lock");
        encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

/// The process's resident set size, from /proc (Linux).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
