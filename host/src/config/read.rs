//! Turns a parsed node config document into a validated [`NodeConfig`], one section at a time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::Table;

use super::fields::{FieldError, Section};
use super::{
    AgentEntry, ControlSection, DefaultLimits, EngineSection, HttpSection, NatsSection, NodeConfig,
    NodeSection,
};
use crate::subjects::validate_name;
use crate::units::format_bytes;

const SECTIONS: &[&str] = &[
    "node", "control", "http", "engine", "defaults", "llm", "nats", "agents",
];

pub(super) fn node_config(
    document: &Table,
    source: Option<&Path>,
) -> Result<NodeConfig, FieldError> {
    let root = Section::root(document, SECTIONS)?;
    let engine = engine(&root)?;
    let defaults = defaults(&root, &engine)?;
    Ok(NodeConfig {
        source: source.map(Path::to_path_buf),
        node: node(&root, source)?,
        control: control(&root, source)?,
        http: http(&root)?,
        engine,
        defaults,
        llm: super::llm::llm(&root)?,
        nats: nats(&root, source)?,
        agents: agents(&root, source)?,
        agent_override: Default::default(),
    })
}

/// A path written in the file, relative to the file's folder (or the cwd without a file).
fn resolve(source: Option<&Path>, path: &str) -> PathBuf {
    match source.and_then(Path::parent) {
        Some(dir) => dir.join(path),
        None => PathBuf::from(path),
    }
}

fn path(
    s: &Section,
    key: &str,
    example: &str,
    source: Option<&Path>,
) -> Result<Option<PathBuf>, FieldError> {
    match s.string(key, example)? {
        None => Ok(None),
        Some(p) if p.trim().is_empty() => Err(s.error(
            key,
            format!(
                "is empty; expected a path like {example}, relative to the config file's folder"
            ),
        )),
        Some(p) => Ok(Some(resolve(source, &p))),
    }
}

fn node(root: &Section, source: Option<&Path>) -> Result<NodeSection, FieldError> {
    let s = root.section(
        "node",
        &[
            "name",
            "data_dir",
            "unified_subjects",
            "snapshot_every",
            "max_traps_per_message",
            "dedup_window",
            "mailbox_capacity",
            "mailbox_max_bytes",
            "mailboxes_max_bytes",
            "rollback_window_secs",
            "kv_sync_ms",
            "conversation_header",
        ],
    )?;
    let d = NodeSection::default();
    let no_room = "every message would be dropped";
    let mailbox_max_bytes = s
        .positive_bytes("mailbox_max_bytes", no_room)?
        .unwrap_or(d.mailbox_max_bytes);
    let mailboxes_max_bytes = s
        .positive_bytes("mailboxes_max_bytes", no_room)?
        .unwrap_or(d.mailboxes_max_bytes);
    if mailboxes_max_bytes < mailbox_max_bytes {
        return Err(s.error(
            "mailboxes_max_bytes",
            format!(
                "{} is less than one agent's mailbox_max_bytes ({}); expected the node's total to be at least one mailbox",
                format_bytes(mailboxes_max_bytes),
                format_bytes(mailbox_max_bytes)
            ),
        ));
    }
    let name = s.string("name", "\"node-1\"")?.unwrap_or(d.name);
    validate_name(&name).map_err(|e| s.error("name", e))?;
    let data_dir = match path(&s, "data_dir", "\"data\"", source)? {
        Some(dir) => dir,
        None if source.is_some() => resolve(source, "data"),
        None => d.data_dir,
    };
    Ok(NodeSection {
        name,
        data_dir,
        unified_subjects: s.bool("unified_subjects")?.unwrap_or(d.unified_subjects),
        snapshot_every: s.uint("snapshot_every", "100")?.unwrap_or(d.snapshot_every),
        max_traps_per_message: s
            .positive(
                "max_traps_per_message",
                "3",
                "every message would go to the dead-letter subject before running",
            )?
            .unwrap_or(d.max_traps_per_message),
        dedup_window: s
            .positive(
                "dedup_window",
                "1024",
                "a message published on two subjects would be handled twice",
            )?
            .unwrap_or(d.dedup_window),
        mailbox_capacity: s
            .positive("mailbox_capacity", "4096", "every message would be dropped")?
            .unwrap_or(d.mailbox_capacity),
        mailbox_max_bytes,
        mailboxes_max_bytes,
        rollback_window_secs: s
            .uint("rollback_window_secs", "600")?
            .unwrap_or(d.rollback_window_secs),
        kv_sync_ms: s.uint("kv_sync_ms", "100")?.unwrap_or(d.kv_sync_ms),
        conversation_header: match s.string("conversation_header", "\"Conversation-Id\"")? {
            Some(h) if h.is_empty() || !h.chars().all(|c| c.is_ascii_graphic() && c != ':') => {
                return Err(s.error(
                    "conversation_header",
                    format!("{h:?} is not a header name; expected printable ASCII without spaces or ':', like \"Conversation-Id\""),
                ))
            }
            Some(h) => h,
            None => d.conversation_header,
        },
    })
}

fn control(root: &Section, source: Option<&Path>) -> Result<ControlSection, FieldError> {
    let s = root.section("control", &["socket"])?;
    Ok(ControlSection {
        socket: path(&s, "socket", "\"data/host.sock\"", source)?,
    })
}

fn http(root: &Section) -> Result<HttpSection, FieldError> {
    let s = root.section("http", &["listen"])?;
    let listen = match s.string("listen", "\"127.0.0.1:9464\"")? {
        None => HttpSection::default().listen,
        Some(text) if text.trim().is_empty() || text.trim() == "off" => None,
        Some(text) => Some(text.trim().parse::<SocketAddr>().map_err(|e| {
            s.error(
                "listen",
                format!("{text:?} is not a socket address ({e}); expected an IP and port like \"127.0.0.1:9464\", or \"off\" to disable"),
            )
        })?),
    };
    Ok(HttpSection { listen })
}

fn engine(root: &Section) -> Result<EngineSection, FieldError> {
    let s = root.section(
        "engine",
        &[
            "max_agents",
            "max_memory",
            "epoch_tick_ms",
            "max_component_bytes",
        ],
    )?;
    let d = EngineSection::default();
    Ok(EngineSection {
        max_agents: s
            .positive("max_agents", "1000", "no agent could be loaded")?
            .unwrap_or(d.max_agents),
        max_memory: s
            .positive_bytes("max_memory", "no agent could run")?
            .unwrap_or(d.max_memory),
        epoch_tick_ms: s
            .positive("epoch_tick_ms", "10", "the epoch would never tick")?
            .unwrap_or(d.epoch_tick_ms),
        max_component_bytes: s
            .positive_bytes("max_component_bytes", "no component could be loaded")?
            .unwrap_or(d.max_component_bytes),
    })
}

fn defaults(root: &Section, engine: &EngineSection) -> Result<DefaultLimits, FieldError> {
    let s = root.section(
        "defaults",
        &[
            "memory",
            "cpu_ms_per_message",
            "max_message_bytes",
            "host_call_timeout_ms",
            "files_max_bytes",
            "publish_per_second",
            "log_lines_per_second",
            "table_elements",
            "instances",
            "tables",
            "memories",
            "init_timeout_ms",
            "handoff_timeout_ms",
        ],
    )?;
    let d = DefaultLimits::default();
    let no_zero = "agents without their own limit could not run";
    let memory = s.positive_bytes("memory", no_zero)?.unwrap_or(d.memory);
    if memory > engine.max_memory {
        return Err(s.error(
            "memory",
            format!(
                "{} is larger than engine.max_memory ({}); expected at most engine.max_memory, or raise engine.max_memory",
                format_bytes(memory),
                format_bytes(engine.max_memory)
            ),
        ));
    }
    Ok(DefaultLimits {
        memory,
        cpu_ms_per_message: s
            .positive("cpu_ms_per_message", "200", no_zero)?
            .unwrap_or(d.cpu_ms_per_message),
        max_message_bytes: s
            .positive_bytes("max_message_bytes", no_zero)?
            .unwrap_or(d.max_message_bytes),
        host_call_timeout_ms: s
            .positive(
                "host_call_timeout_ms",
                "30000",
                "every host call would time out",
            )?
            .unwrap_or(d.host_call_timeout_ms),
        files_max_bytes: s
            .positive_bytes(
                "files_max_bytes",
                "read-write [files] directories could hold nothing",
            )?
            .unwrap_or(d.files_max_bytes),
        publish_per_second: s
            .positive(
                "publish_per_second",
                "1000",
                "agents without their own limit could send nothing but replies",
            )?
            .unwrap_or(d.publish_per_second),
        log_lines_per_second: s
            .positive(
                "log_lines_per_second",
                "100",
                "every line agents without their own limit log would be dropped",
            )?
            .unwrap_or(d.log_lines_per_second),
        counts: counts(&s, d.counts)?,
        init_timeout_ms: s
            .positive("init_timeout_ms", "10000", "no agent could be loaded")?
            .unwrap_or(d.init_timeout_ms),
        handoff_timeout_ms: s
            .positive(
                "handoff_timeout_ms",
                "1000",
                "no snapshot could be taken and no upgrade could hand over state",
            )?
            .unwrap_or(d.handoff_timeout_ms),
    })
}

/// `[defaults] table_elements`, `instances`, `tables`, `memories`: at most the pool's.
fn counts(
    s: &Section,
    d: crate::agent::limits::InstanceCounts,
) -> Result<crate::agent::limits::InstanceCounts, FieldError> {
    let no_zero = "no component could be instantiated";
    let counts = crate::agent::limits::InstanceCounts {
        table_elements: s
            .positive("table_elements", "20000", no_zero)?
            .unwrap_or(d.table_elements),
        instances: s
            .positive("instances", "20", no_zero)?
            .unwrap_or(d.instances),
        tables: s.positive("tables", "4", no_zero)?.unwrap_or(d.tables),
        memories: s.positive("memories", "2", no_zero)?.unwrap_or(d.memories),
    };
    match counts.over_pool() {
        None => Ok(counts),
        Some((field, value, max)) => Err(s.error(
            field,
            format!("{value} is more than the engine's pool allows per component ({max}); expected at most {max}"),
        )),
    }
}

/// Checks a JetStream stream name: NATS refuses whitespace, `.`, `*`, `>` and path separators.
pub(super) fn check_stream_name(text: &str) -> Result<(), String> {
    let expected =
        "expected a name like \"AGENT_MESSAGES\" (no spaces, '.', '*', '>', '/' or '\\')";
    if text.is_empty() {
        return Err(format!("is empty; {expected}"));
    }
    if let Some(c) = text
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(format!("{text:?} contains {c:?}; {expected}"));
    }
    Ok(())
}

/// A JetStream replica count: 1 to 5 copies of `what`.
fn replicas(s: &Section, field: &str, what: &str) -> Result<Option<u32>, FieldError> {
    let n = s.positive(field, "3", &format!("{what} needs at least one copy"))?;
    match n {
        Some(n) if n > 5 => Err(s.error(
            field,
            format!("{n} is more than JetStream allows; expected 1 to 5"),
        )),
        other => Ok(other),
    }
}

fn nats(root: &Section, source: Option<&Path>) -> Result<NatsSection, FieldError> {
    let s = root.section(
        "nats",
        &[
            "url",
            "stream_name",
            "kv_bucket",
            "kv_replicas",
            "stream_replicas",
            "credentials_file",
            "connect_timeout_ms",
            "ack_wait_ms",
            "max_deliver",
            "retry_backoff_ms",
            "duplicate_window_secs",
            "max_ack_pending",
            "stream_max_age_secs",
            "subscription_capacity",
            "request_pairing_wait_ms",
        ],
    )?;
    let d = NatsSection::default();
    let url = match s.string("url", "\"nats://127.0.0.1:4222\"")? {
        Some(url) if url.trim().is_empty() => {
            return Err(s.error(
                "url",
                "is empty; expected a URL like \"nats://127.0.0.1:4222\", or leave url out for the embedded bus",
            ))
        }
        other => other.map(|u| u.trim().to_string()),
    };
    let stream_name = s
        .string("stream_name", "\"AGENT_MESSAGES\"")?
        .unwrap_or(d.stream_name);
    check_stream_name(&stream_name).map_err(|e| s.error("stream_name", e))?;
    let kv_bucket = s
        .string("kv_bucket", "\"AGENT_KV\"")?
        .unwrap_or(d.kv_bucket);
    check_bucket_name(&kv_bucket).map_err(|e| s.error("kv_bucket", e))?;
    let kv_replicas = replicas(&s, "kv_replicas", "a bucket")?.unwrap_or(d.kv_replicas);
    let stream_replicas = replicas(&s, "stream_replicas", "a stream")?.unwrap_or(d.stream_replicas);
    let ack_wait_ms = s
        .positive(
            "ack_wait_ms",
            "30000",
            "every message would be redelivered at once",
        )?
        .unwrap_or(d.ack_wait_ms);
    // The default wait stays well inside a short ack_wait; a wait the operator chose is
    // checked below.
    let chosen_wait = s.uint("request_pairing_wait_ms", "500")?;
    let nats = NatsSection {
        url,
        stream_name,
        kv_bucket,
        kv_replicas,
        stream_replicas,
        credentials_file: path(&s, "credentials_file", "\"node.creds\"", source)?,
        connect_timeout_ms: s
            .positive(
                "connect_timeout_ms",
                "5000",
                "no connection could ever be made",
            )?
            .unwrap_or(d.connect_timeout_ms),
        ack_wait_ms,
        max_deliver: s
            .positive("max_deliver", "5", "no message could be delivered")?
            .unwrap_or(d.max_deliver),
        retry_backoff_ms: s
            .uint("retry_backoff_ms", "1000")?
            .unwrap_or(d.retry_backoff_ms),
        duplicate_window_secs: s
            .positive(
                "duplicate_window_secs",
                "120",
                "a message published twice with one Nats-Msg-Id would be stored twice",
            )?
            .unwrap_or(d.duplicate_window_secs),
        max_ack_pending: s
            .positive("max_ack_pending", "64", "no message could be delivered")?
            .unwrap_or(d.max_ack_pending),
        stream_max_age_secs: s
            .uint("stream_max_age_secs", "604800")?
            .unwrap_or(d.stream_max_age_secs),
        subscription_capacity: s
            .positive(
                "subscription_capacity",
                "65536",
                "every message would be dropped",
            )?
            .unwrap_or(d.subscription_capacity),
        request_pairing_wait_ms: chosen_wait
            .unwrap_or(d.request_pairing_wait_ms.min(ack_wait_ms / 4)),
    };
    // A held message is not acknowledged yet: held past ack_wait, the server would send it
    // again while it waits.
    if chosen_wait.is_some() && nats.request_pairing_wait_ms >= nats.ack_wait_ms {
        return Err(s.error(
            "request_pairing_wait_ms",
            format!(
                "{} ms is not shorter than ack_wait_ms ({} ms); expected a wait well inside it (the default is 500 ms, at most a quarter of ack_wait_ms), or raise ack_wait_ms",
                nats.request_pairing_wait_ms, nats.ack_wait_ms
            ),
        ));
    }
    Ok(nats)
}

/// Checks a JetStream KV bucket name: NATS allows only `A-Z a-z 0-9 _ -`.
pub(super) fn check_bucket_name(text: &str) -> Result<(), String> {
    let expected = "expected a name like \"AGENT_KV\" (only A-Z a-z 0-9 _ -)";
    if text.is_empty() {
        return Err(format!("is empty; {expected}"));
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
    {
        return Err(format!("{text:?} contains {c:?}; {expected}"));
    }
    Ok(())
}

fn agents(root: &Section, source: Option<&Path>) -> Result<Vec<AgentEntry>, FieldError> {
    let mut out = Vec::new();
    for entry in root.table_array("agents", &["manifest"])? {
        let manifest =
            path(&entry, "manifest", "\"agents/echo.toml\"", source)?.ok_or_else(|| {
                entry.error(
                    "manifest",
                    "missing; add manifest = \"agents/echo.toml\" to this [[agents]] entry",
                )
            })?;
        out.push(AgentEntry { manifest });
    }
    Ok(out)
}
