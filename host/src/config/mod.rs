//! The node config: one TOML file for the whole host, plus environment overrides.
//!
//! Everything has a default, so a node starts with no file at all. The environment
//! variables the existing deployment scripts already set (`NATS_URL`, `OLLAMA_HOST`,
//! `SNAPSHOT_FREQUENCY`, ...) override the file, so the same file works in every
//! environment. Like manifests, the file is parsed strictly: unknown fields are errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::manifest::render;

mod env;
pub(crate) mod fields;
mod llm;

pub use llm::{BackendEntry, BackendKind, LlmSection, DEFAULT_BACKEND, DEFAULT_OLLAMA_URL};

pub use env::ENV_VARS;
#[cfg(test)]
mod env_tests;
mod read;
#[cfg(test)]
mod sandbox_tests;
#[cfg(test)]
mod tests;

/// `[engine] max_component_bytes` when the config sets none: far above any agent (a few
/// MiB), far below what would strain a node's memory.
pub const DEFAULT_MAX_COMPONENT_BYTES: u64 = 128 << 20;
/// Largest node config file read: a config is a few KiB of TOML.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// Everything the node needs to start, after defaults and environment overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// The file it was read from; `None` when running on defaults.
    pub source: Option<PathBuf>,
    pub node: NodeSection,
    pub control: ControlSection,
    pub http: HttpSection,
    pub engine: EngineSection,
    pub defaults: DefaultLimits,
    pub llm: LlmSection,
    pub nats: NatsSection,
    /// Agents to load at start, in file order.
    pub agents: Vec<AgentEntry>,
    /// `AGENT_NAME`, `AGENT_ID`, `CAPABILITY_CLUSTER`: identity overrides for the one agent
    /// `agents` lists (see [`AgentOverride`]).
    pub agent_override: AgentOverride,
}

/// The identity variables of the one-agent-per-process deployment (`AGENT_NAME`,
/// `AGENT_ID`, `CAPABILITY_CLUSTER`), kept so its unit files work unchanged: they override
/// the `[agent]` name, id and cluster in the manifest of the single agent the node config
/// lists. With no or several `[[agents]]` they are refused, since they could not say which
/// agent they mean.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentOverride {
    pub name: Option<String>,
    pub id: Option<uuid::Uuid>,
    pub cluster: Option<String>,
}

impl AgentOverride {
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.id.is_none() && self.cluster.is_none()
    }

    /// Puts the overridden fields into `manifest`, logging each change.
    pub fn apply(&self, manifest: &mut crate::manifest::Manifest) {
        let agent = &mut manifest.agent;
        if let Some(name) = &self.name {
            tracing::info!(
                "AGENT_NAME={name} overrides the manifest's name '{}'",
                agent.name
            );
            agent.name = name.clone();
        }
        if let Some(id) = self.id {
            tracing::info!("AGENT_ID={id} overrides the manifest's id {}", agent.id);
            agent.id = id;
        }
        if let Some(cluster) = &self.cluster {
            tracing::info!(
                "CAPABILITY_CLUSTER={cluster} overrides the manifest's cluster '{}'",
                agent.cluster
            );
            agent.cluster = cluster.clone();
        }
    }
}

/// Identity and message-handling policy of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSection {
    pub name: String,
    /// Where snapshots, KV data and the control socket live.
    pub data_dir: PathBuf,
    /// Whether `send` uses the agent-ref subject scheme instead of the legacy one
    /// (docs/design.md, Subjects).
    pub unified_subjects: bool,
    /// Snapshot an agent's state every N messages; 0 means never.
    pub snapshot_every: u32,
    /// A message that traps this many times goes to the dead-letter subject.
    pub max_traps_per_message: u32,
    /// Message ids remembered per agent, so a dual-published message is handled once.
    pub dedup_window: usize,
    /// Messages queued per agent before new ones are dropped and counted.
    pub mailbox_capacity: usize,
    /// Bytes (payloads and headers) queued per agent, over all its subscriptions, before new
    /// messages are dropped and counted like a full mailbox.
    pub mailbox_max_bytes: u64,
    /// Bytes queued in every agent's mailbox on this node together, before new messages are
    /// dropped and counted: what many busy agents may hold at once.
    pub mailboxes_max_bytes: u64,
    /// How long the version an upgrade replaced stays warm for `host rollback` (seconds).
    pub rollback_window_secs: u64,
    /// How soon KV writes and snapshots reach the disk (ms); 0 flushes every write. A crash
    /// loses at most this window of writes; a graceful stop loses nothing.
    pub kv_sync_ms: u64,
    /// The message header naming a conversation: a canary keeps each conversation on one
    /// version by hashing it (see `agent/canary.rs` for messages without it).
    pub conversation_header: String,
}

/// The local control API (docs/design.md, Control).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlSection {
    /// Unix socket path; `None` means `<data_dir>/host.sock` (see [`NodeConfig::control_socket`]).
    pub socket: Option<PathBuf>,
}

/// The `/health` and `/metrics` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSection {
    /// `None` when disabled with `listen = "off"` or `listen = ""`.
    pub listen: Option<SocketAddr>,
}

/// Sizing of the WebAssembly engine's pooling allocator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSection {
    /// Instance slots, which also bounds how many agents can be loaded.
    pub max_agents: u32,
    /// Largest linear memory any agent may get (the pool slot size), in bytes.
    pub max_memory: u64,
    /// How often the epoch ticks; CPU limits are enforced at this granularity.
    pub epoch_tick_ms: u64,
    /// Largest component file `host load` and `host upgrade` read; a bigger one (or
    /// anything but a regular file) is refused before it is read into memory.
    pub max_component_bytes: u64,
}

/// Limits for agents whose manifest leaves them unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultLimits {
    /// Bytes; never more than [`EngineSection::max_memory`].
    pub memory: u64,
    pub cpu_ms_per_message: u64,
    pub max_message_bytes: u64,
    /// How long one host call (request, LLM call) may take before it returns `timeout`.
    pub host_call_timeout_ms: u64,
    /// How much a read-write `[files]` directory may hold when its manifest sets no
    /// `[files] max_bytes`.
    pub files_max_bytes: u64,
    /// Messages an agent may originate per second when its manifest sets no
    /// `[limits] publish_per_second` (replies to the message it handles are free).
    pub publish_per_second: u32,
    /// Lines an agent may write to the node's log per second (`runtime.log`, stdout and
    /// stderr together) when its manifest sets no `[limits] log_lines_per_second`.
    pub log_lines_per_second: u32,
    /// Core instances, tables, memories and table elements for agents whose manifest sets
    /// none; never more than the engine's pool allows per component.
    pub counts: crate::agent::limits::InstanceCounts,
    /// How long an agent's `init`, `version` and the `restore` of its last snapshot may take
    /// in all when it is loaded or restarted (ms); past it the load fails (or the restart is
    /// retried) and the instance is abandoned. Each host call inside is bounded on its own.
    pub init_timeout_ms: u64,
    /// How long a `snapshot`, or a `restore` handing a serving agent's state to another of its
    /// versions (swap, rollback, canary), may take in all (ms): the agent serves nothing
    /// meanwhile. Past it the upgrade is aborted and the serving version keeps serving.
    pub handoff_timeout_ms: u64,
}

/// The message bus backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSection {
    /// NATS server URL; `None` means the embedded in-process bus.
    pub url: Option<String>,
    /// JetStream stream used for durable delivery.
    pub stream_name: String,
    /// JetStream KV bucket holding every agent's storage and snapshots when NATS is used;
    /// nodes sharing a bucket share agents' state, so an agent can move between them.
    pub kv_bucket: String,
    /// Copies of the KV bucket the cluster keeps (1 to 5), used only when the node creates it.
    pub kv_replicas: u32,
    /// A NATS credentials file (user JWT and nkey seed) to sign in with (env `NATS_CREDS`);
    /// user and password or a token go into `url` instead.
    pub credentials_file: Option<std::path::PathBuf>,
    /// Copies of the durable-delivery stream the cluster keeps (1 to 5), used only when the
    /// node creates it: with one copy, durable agents stop while the server holding it is
    /// down.
    pub stream_replicas: u32,
    /// How long the first connection attempt (and each reconnect attempt) may take.
    pub connect_timeout_ms: u64,
    /// Durable delivery (`[subscriptions] durable = true`): how long the server waits for an
    /// agent's ack before it redelivers. Progress acks extend it while `handle` still runs.
    pub ack_wait_ms: u64,
    /// Deliveries of one message to a durable agent before it goes to `agent.dlq.{name}`.
    pub max_deliver: u32,
    /// Delay before redelivering a message whose `handle` returned an error; it doubles with
    /// each further attempt (capped at one minute).
    pub retry_backoff_ms: u64,
    /// How long the stream remembers a `Nats-Msg-Id` to drop a second publish of it.
    pub duplicate_window_secs: u64,
    /// Messages handed to one durable agent and not yet acknowledged, at most.
    pub max_ack_pending: u32,
    /// How long the stream keeps messages, when the node creates it (an existing stream keeps
    /// its own limits).
    pub stream_max_age_secs: u64,
    /// Messages the NATS client buffers per subscription before it drops new ones, logged
    /// as a slow consumer. The host's feeding task keeps these buffers empty (an agent's
    /// inbox is bounded by `[node] mailbox_capacity`); this is the slack for a feeder
    /// that falls behind.
    pub subscription_capacity: u32,
    /// Durable delivery: how long a fresh stream copy whose core copy the node has not seen
    /// waits for it, so that a request answered through the stream still gets its reply
    /// subject. In a cluster a request's stream copy can overtake its core copy. Only such
    /// copies wait, and only until they are this old: on one server, and for plain
    /// publishes, backlogs and redeliveries, nothing waits. Default 500 (at most a quarter
    /// of `ack_wait_ms`); 0 never waits.
    pub request_pairing_wait_ms: u64,
}

/// One agent to load at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEntry {
    /// The manifest path, resolved against the config file's folder.
    pub manifest: PathBuf,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            name: "node".to_string(),
            data_dir: PathBuf::from("./data"),
            unified_subjects: false,
            snapshot_every: 100,
            max_traps_per_message: 3,
            dedup_window: 1024,
            mailbox_capacity: 4096,
            mailbox_max_bytes: 16 << 20,
            mailboxes_max_bytes: 256 << 20,
            rollback_window_secs: 600,
            kv_sync_ms: 100,
            conversation_header: crate::agent::canary::DEFAULT_CONVERSATION_HEADER.to_string(),
        }
    }
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        }
    }
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            max_agents: 1000,
            max_memory: 64 << 20,
            epoch_tick_ms: 10,
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
        }
    }
}

impl Default for DefaultLimits {
    fn default() -> Self {
        DefaultLimits {
            memory: 64 << 20,
            cpu_ms_per_message: 200,
            max_message_bytes: 1 << 20,
            host_call_timeout_ms: 30_000,
            files_max_bytes: 64 << 20,
            publish_per_second: 1000,
            log_lines_per_second: 100,
            counts: crate::agent::limits::InstanceCounts::default(),
            init_timeout_ms: 10_000,
            handoff_timeout_ms: 1_000,
        }
    }
}

impl Default for NatsSection {
    fn default() -> Self {
        NatsSection {
            url: None,
            stream_name: "AGENT_MESSAGES".to_string(),
            kv_bucket: "AGENT_KV".to_string(),
            kv_replicas: 1,
            stream_replicas: 1,
            credentials_file: None,
            connect_timeout_ms: 5000,
            ack_wait_ms: 30_000,
            max_deliver: 5,
            retry_backoff_ms: 1000,
            duplicate_window_secs: 120,
            max_ack_pending: 64,
            stream_max_age_secs: 7 * 24 * 3600,
            subscription_capacity: 65_536,
            request_pairing_wait_ms: 500,
        }
    }
}

impl Default for NodeConfig {
    /// The defaults documented on each field, with no file and no environment applied.
    fn default() -> Self {
        NodeConfig {
            source: None,
            node: NodeSection::default(),
            control: ControlSection::default(),
            http: HttpSection::default(),
            engine: EngineSection::default(),
            defaults: DefaultLimits::default(),
            llm: LlmSection::default(),
            nats: NatsSection::default(),
            agents: Vec::new(),
            agent_override: AgentOverride::default(),
        }
    }
}

/// A config that cannot be used: which file or environment variable, which field, what is
/// wrong and what is expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", render_config(.file, .field, .env_var, .problem))]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    /// Dotted field path such as `defaults.memory`, when the problem is in one field.
    pub field: Option<String>,
    /// The environment variable whose value is wrong, for override errors.
    pub env_var: Option<String>,
    pub problem: String,
}

fn render_config(
    file: &Option<PathBuf>,
    field: &Option<String>,
    env_var: &Option<String>,
    problem: &str,
) -> String {
    match env_var {
        Some(var) => format!("environment variable {var}: {problem}"),
        None => render("config", file, field, problem),
    }
}

impl ConfigError {
    fn in_file(source: Option<&Path>, e: fields::FieldError) -> Self {
        ConfigError {
            file: source.map(Path::to_path_buf),
            field: e.field,
            env_var: None,
            problem: e.problem,
        }
    }

    fn in_env(var: &str, problem: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            field: None,
            env_var: Some(var.to_string()),
            problem: problem.into(),
        }
    }
}

impl NodeConfig {
    /// No file: all defaults (then env overrides).
    pub fn load(path: Option<&Path>) -> Result<NodeConfig, ConfigError> {
        Self::load_with_env(path, &|name| std::env::var(name).ok())
    }

    /// Same, with env lookups injected so tests don't touch the process env.
    pub fn load_with_env(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<NodeConfig, ConfigError> {
        let Some(path) = path else {
            let mut config = NodeConfig::default();
            env::apply(&mut config, env)?;
            return Ok(config);
        };
        let text = crate::bounded_file::read_to_string(path, MAX_CONFIG_FILE_BYTES).map_err(
            |e| ConfigError {
                file: Some(path.to_path_buf()),
                field: None,
                env_var: None,
                problem: format!(
                    "cannot read the file: {e}; expected a readable TOML node config of at most {} (a config is a few KiB)",
                    crate::units::format_bytes(MAX_CONFIG_FILE_BYTES)
                ),
            },
        )?;
        Self::parse(&text, Some(path), env)
    }

    /// Parses config text, then applies environment overrides; `source` names the file in
    /// errors and is the folder relative paths are resolved against.
    pub fn parse(
        text: &str,
        source: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<NodeConfig, ConfigError> {
        let document = fields::parse_document(text).map_err(|e| ConfigError::in_file(source, e))?;
        let mut config =
            read::node_config(&document, source).map_err(|e| ConfigError::in_file(source, e))?;
        env::apply(&mut config, env)?;
        Ok(config)
    }

    /// Control socket path: explicit override, else control.socket, else <data_dir>/host.sock
    ///
    /// The `HOST_CONTROL` override is already folded into `control.socket` at load.
    pub fn control_socket(&self) -> PathBuf {
        self.control
            .socket
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("host.sock"))
    }
}
