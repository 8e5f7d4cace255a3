//! The capability manifest (docs/design.md, Manifest): what one agent may do, deny by default.
//!
//! Every capability call the host serves is checked against a [`Manifest`]. Anything the
//! manifest does not grant is refused, so the manifest is parsed strictly: unknown fields,
//! wrong types and invalid names are load-time errors that name the file, the field path
//! and what was expected, rather than grants that silently do nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::config::fields::{parse_document, FieldError};
use crate::subjects;

mod describe;
mod read;
pub(crate) use read::parse_id;
#[cfg(test)]
mod sandbox_tests;
#[cfg(test)]
mod tests;

/// Cluster an agent joins when its manifest names none.
pub const DEFAULT_CLUSTER: &str = "default";
/// KV quota when `[kv] max_bytes` is absent: enough for small state, not for hoarding.
pub const DEFAULT_KV_MAX_BYTES: u64 = 1 << 20;
/// Largest manifest file read: a manifest is a few KiB of TOML, and a path to a huge file
/// or `/dev/zero` must not fill the node's memory.
pub const MAX_MANIFEST_FILE_BYTES: u64 = 1 << 20;
/// KV key count when `[kv] max_keys` is absent.
pub const DEFAULT_KV_MAX_KEYS: u64 = 10_000;

/// Everything one agent may do, as read from its manifest file.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The file it was read from, for messages; `None` when built in code or parsed inline.
    pub source: Option<PathBuf>,
    pub agent: AgentSection,
    pub subscriptions: Subscriptions,
    pub messaging: MessagingGrants,
    pub llm: LlmGrants,
    pub kv: KvGrants,
    pub limits: Limits,
    /// A private directory for the agent's files (`[files]`); `None`: no file access at all.
    pub files: Option<FilesAccess>,
    /// `[files] max_bytes`: how much a read-write directory may hold; `None` means the
    /// node default (`[defaults] files_max_bytes`). Refused with a read-only grant.
    pub files_max_bytes: Option<u64>,
    /// Free key/values the agent reads with `runtime.config`.
    pub config: BTreeMap<String, String>,
}

/// Where the agent sees its private directory (`[files]`) through WASI.
pub const FILES_GUEST_DIR: &str = "/data";

/// What an agent may do in its private directory (`[files] access`). The directory is
/// `{data_dir}/files/{agent id}` on the host and [`FILES_GUEST_DIR`] in the agent; nothing
/// outside it is reachable (`..`, absolute paths and symlinks are resolved inside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilesAccess {
    ReadOnly,
    ReadWrite,
}

impl FilesAccess {
    /// The manifest spelling, as in `access = "read-only"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FilesAccess::ReadOnly => "read-only",
            FilesAccess::ReadWrite => "read-write",
        }
    }
}

/// Who the agent is and which component runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSection {
    pub name: String,
    pub cluster: String,
    /// A UUID v7; generated at load when the manifest has none (then it changes per load).
    pub id: Uuid,
    /// The component file, resolved against the manifest's folder.
    pub component: Option<PathBuf>,
    /// Lower-case hex SHA-256 the component must have; a mismatch refuses to load.
    pub sha256: Option<String>,
}

/// Which of the agent's own subject patterns (docs/design.md, Subjects) the host subscribes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscriptions {
    /// `agent.to.{name}.>`
    pub legacy: bool,
    /// `agent.broadcast.>`
    pub broadcast: bool,
    /// `agent.*.*.{id}.command.>`
    pub agent_ref: bool,
    /// Read through a JetStream durable consumer instead of core subscriptions.
    pub durable: bool,
}

impl Default for Subscriptions {
    /// An agent hears its own inboxes unless its manifest turns them off.
    fn default() -> Self {
        Subscriptions {
            legacy: true,
            broadcast: true,
            agent_ref: true,
            durable: false,
        }
    }
}

/// Where the agent may publish and whom it may address. The rules below are the ones the
/// messaging capability enforces: there is no other copy of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessagingGrants {
    /// Subject patterns it may `publish` and `request` to.
    pub publish: Vec<String>,
    /// Agent names it may `send` to; `"*"` means any agent.
    pub send: Vec<String>,
}

impl MessagingGrants {
    /// Whether a `publish` pattern covers `subject` (for publish and request).
    pub fn allows_publish(&self, subject: &str) -> bool {
        self.publish
            .iter()
            .any(|pattern| subjects::matches(pattern, subject))
    }

    /// Whether `send` lists the agent named `agent`, or `"*"`.
    pub fn allows_send_to(&self, agent: &str) -> bool {
        self.send
            .iter()
            .any(|granted| granted == "*" || granted == agent)
    }
}

/// Which models the agent may call and how much.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LlmGrants {
    /// Model names; `"*"` means any model. Empty means no LLM access ([`Self::allows_model`]
    /// is the rule the LLM capability enforces).
    pub models: Vec<String>,
    pub max_tokens_per_minute: Option<u64>,
    pub max_requests_per_minute: Option<u32>,
    pub max_tokens_per_call: Option<u32>,
}

impl LlmGrants {
    /// Whether `models` lists `model`, or `"*"`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .iter()
            .any(|granted| granted == "*" || granted == model)
    }
}

/// The agent's key-value quota in its own namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvGrants {
    pub max_bytes: u64,
    pub max_keys: u64,
}

impl Default for KvGrants {
    fn default() -> Self {
        KvGrants {
            max_bytes: DEFAULT_KV_MAX_BYTES,
            max_keys: DEFAULT_KV_MAX_KEYS,
        }
    }
}

/// Resource limits; `None` means "use the node default" from the node config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory: Option<u64>,
    pub cpu_ms_per_message: Option<u64>,
    pub max_message_bytes: Option<u64>,
    /// Messages the agent may originate per second (see `capabilities::rate`).
    pub publish_per_second: Option<u32>,
    /// Lines the agent may write to the node's log per second (`runtime.log`, stdout and
    /// stderr together; see `capabilities::log_rate`).
    pub log_lines_per_second: Option<u32>,
    /// Elements a table may grow to; core instances, tables and memories the component may
    /// create (see `agent::limits::InstanceCounts`).
    pub table_elements: Option<u32>,
    pub instances: Option<u32>,
    pub tables: Option<u32>,
    pub memories: Option<u32>,
    /// Largest snapshot of its state the host keeps, persists or hands to another version;
    /// `None` means the agent's `[kv] max_bytes` (see [`Manifest::max_snapshot_bytes`]).
    pub max_snapshot_bytes: Option<u64>,
}

/// A manifest that cannot be used: which file, which field, what is wrong and expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", render("manifest", .file, .field, .problem))]
pub struct ManifestError {
    pub file: Option<PathBuf>,
    /// Dotted field path such as `messaging.publish[1]`, when the problem is in one field.
    pub field: Option<String>,
    pub problem: String,
}

/// Formats `{kind} {file}: field {field}: {problem}`; shared with the node config error.
pub(crate) fn render(
    kind: &str,
    file: &Option<PathBuf>,
    field: &Option<String>,
    problem: &str,
) -> String {
    let file = match file {
        Some(path) => path.display().to_string(),
        None => "<inline>".to_string(),
    };
    match field {
        Some(field) => format!("{kind} {file}: field {field}: {problem}"),
        None => format!("{kind} {file}: {problem}"),
    }
}

impl ManifestError {
    fn from_field(source: Option<&Path>, e: FieldError) -> Self {
        ManifestError {
            file: source.map(Path::to_path_buf),
            field: e.field,
            problem: e.problem,
        }
    }
}

impl Manifest {
    /// Reads and validates a manifest file; errors name the file, the field path and what was expected.
    pub fn from_file(path: &Path) -> Result<Manifest, ManifestError> {
        Self::from_file_with_name(path, None)
    }

    /// Like [`Manifest::from_file`], with a name to use when `[agent] name` is absent
    /// (for loaders that know the agent's name from elsewhere, e.g. the command line).
    pub fn from_file_with_name(
        path: &Path,
        default_name: Option<&str>,
    ) -> Result<Manifest, ManifestError> {
        let text = crate::bounded_file::read_to_string(path, MAX_MANIFEST_FILE_BYTES).map_err(
            |e| ManifestError {
                file: Some(path.to_path_buf()),
                field: None,
                problem: format!(
                    "cannot read the file: {e}; expected a readable TOML manifest of at most {} (a manifest is a few KiB)",
                    crate::units::format_bytes(MAX_MANIFEST_FILE_BYTES)
                ),
            },
        )?;
        Self::parse_with_name(&text, Some(path), default_name)
    }

    /// Parses text; `source` is used in error messages and to resolve `component`.
    pub fn parse(text: &str, source: Option<&Path>) -> Result<Manifest, ManifestError> {
        Self::parse_with_name(text, source, None)
    }

    /// Like [`Manifest::parse`], with a fallback for a missing `[agent] name`; a name in the
    /// manifest wins over the fallback.
    pub fn parse_with_name(
        text: &str,
        source: Option<&Path>,
        default_name: Option<&str>,
    ) -> Result<Manifest, ManifestError> {
        let document = parse_document(text).map_err(|e| ManifestError::from_field(source, e))?;
        read::manifest(&document, source, default_name)
            .map_err(|e| ManifestError::from_field(source, e))
    }

    /// The deny-by-default manifest for an agent loaded without one: cluster "default", a fresh v7 id, nothing granted except its own subscriptions (legacy, broadcast, agent_ref all on) and KV namespace with default quota.
    pub fn deny_all(name: &str) -> Result<Manifest, ManifestError> {
        subjects::validate_name(name).map_err(|problem| ManifestError {
            file: None,
            field: Some("agent.name".into()),
            problem,
        })?;
        Ok(Manifest {
            source: None,
            agent: AgentSection {
                name: name.to_string(),
                cluster: DEFAULT_CLUSTER.to_string(),
                id: Uuid::now_v7(),
                component: None,
                sha256: None,
            },
            subscriptions: Subscriptions::default(),
            messaging: MessagingGrants::default(),
            llm: LlmGrants::default(),
            kv: KvGrants::default(),
            limits: Limits::default(),
            files: None,
            files_max_bytes: None,
            config: BTreeMap::new(),
        })
    }

    /// The `{cluster}.{name}.{id}` reference the agent runs as.
    pub fn agent_ref(&self) -> String {
        subjects::agent_ref_string(
            &self.agent.cluster,
            &self.agent.name,
            &self.agent.id.to_string(),
        )
    }

    /// The largest snapshot the host takes of this agent: `[limits] max_snapshot_bytes`,
    /// else `[kv] max_bytes`, since a snapshot is stored in the node's KV store like the
    /// agent's own data and should not let it store more than its quota that way.
    pub fn max_snapshot_bytes(&self) -> u64 {
        self.limits.max_snapshot_bytes.unwrap_or(self.kv.max_bytes)
    }

    /// Plain-words summary of everything this agent may do (used by `host check`), including
    /// what it may not do, so an operator can review a manifest without knowing its format.
    pub fn describe(&self) -> String {
        describe::describe(self)
    }
}
