//! One running agent: its store data, its live instance, its mailbox and its supervisor.

pub mod canary;
mod dedup;
pub mod durable;
pub mod gates;
pub(crate) mod inbox;
pub mod instance;
pub mod limits;
#[cfg(feature = "bench")]
pub mod native;
pub mod plan;
pub mod runner;
mod snapshot_limit;
pub mod snapshots;
pub mod status;
mod stdio;
mod supervisor;
pub mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

use crate::bindings::AgentRef;
use crate::capabilities::{kv::KvCtx, llm::LlmCtx, messaging::MessagingCtx, runtime::RuntimeCtx};

pub use runner::AgentHandle;
pub use status::{AgentState, AgentStatus, AgentSummary, LimitHitCounts};

/// Who an agent is, as every capability sees it.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cluster: String,
    pub name: String,
    pub id: String,
    /// `{cluster}.{name}.{id}`, stamped on everything the agent sends.
    pub agent_ref: String,
}

impl Identity {
    pub fn new(cluster: &str, name: &str, id: &str) -> Identity {
        Identity {
            cluster: cluster.to_string(),
            name: name.to_string(),
            id: id.to_string(),
            agent_ref: crate::subjects::agent_ref_string(cluster, name, id),
        }
    }

    pub fn wit_ref(&self) -> AgentRef {
        AgentRef {
            cluster: self.cluster.clone(),
            name: self.name.clone(),
            id: self.id.clone(),
        }
    }
}

/// The capability contexts of one agent, shared by its instances (blue and green).
pub struct AgentCaps {
    pub messaging: MessagingCtx,
    pub kv: KvCtx,
    pub llm: LlmCtx,
    pub runtime: RuntimeCtx,
    /// The private directory `[files]` grants, preopened through WASI; `None`: no files.
    pub files: Option<FilesDir>,
}

/// An agent's private directory on the host and what it may do there.
#[derive(Clone)]
pub struct FilesDir {
    pub host_path: std::path::PathBuf,
    pub access: crate::manifest::FilesAccess,
    /// How much a read-write directory may hold (`None` when read-only).
    pub quota: Option<Arc<crate::capabilities::files::FilesQuota>>,
}

impl FilesDir {
    /// `{data_dir}/files/{agent id}`, created owner-only if absent (a new agent starts empty); a
    /// read-write directory gets a quota of `max_bytes`, counted from what it holds now.
    pub fn create(
        data_dir: &std::path::Path,
        identity: &Identity,
        access: crate::manifest::FilesAccess,
        max_bytes: u64,
        metrics: Arc<crate::telemetry::AgentMetrics>,
    ) -> std::io::Result<FilesDir> {
        // Owner-only, like the data dir: an agent's files are its own (they may hold what
        // it was told in confidence), not the other local users'.
        let files = data_dir.join("files");
        let host_path = files.join(&identity.id);
        crate::private_dir::create_private_dir(&host_path)?;
        crate::private_dir::create_private_dir(&files)?;
        let quota = match access {
            crate::manifest::FilesAccess::ReadOnly => None,
            crate::manifest::FilesAccess::ReadWrite => {
                Some(Arc::new(crate::capabilities::files::FilesQuota::new(
                    &host_path,
                    max_bytes,
                    &identity.name,
                    metrics,
                )?))
            }
        };
        Ok(FilesDir {
            host_path,
            access,
            quota,
        })
    }
}

/// State of the export call in progress: what the host needs to check calls and to bound
/// the agent's CPU time.
pub struct Turn {
    /// Reply-to of the message being handled (the agent may always publish there), in a
    /// buffer kept across turns so a turn costs no allocation for it.
    reply_to: String,
    has_reply_to: bool,
    /// Whether the agent replied in this call (one reply is not charged to its publish rate).
    pub replied: bool,
    pub cpu_budget: Duration,
}

impl Turn {
    fn idle() -> Turn {
        Turn {
            reply_to: String::new(),
            has_reply_to: false,
            replied: false,
            cpu_budget: Duration::MAX,
        }
    }

    /// The reply subject of the message being handled, if it asked for a reply.
    pub fn reply_to(&self) -> Option<&str> {
        self.has_reply_to.then_some(self.reply_to.as_str())
    }

    fn set_reply_to(&mut self, reply_to: Option<&str>) {
        self.reply_to.clear();
        self.reply_to.push_str(reply_to.unwrap_or_default());
        self.has_reply_to = reply_to.is_some();
    }
}

/// The data of an agent's wasmtime `Store`.
pub struct AgentStore {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: limits::Limiter,
    /// Since when the instance is inside a host call, for the host-call time bound, and how
    /// long the current call has been polled, for the CPU budget.
    watch: Arc<limits::HostCallWatch>,
    pub(crate) caps: Arc<AgentCaps>,
    pub(crate) turn: Turn,
}

impl AgentStore {
    /// The guest CPU time charged to the current call against `[limits] cpu_ms_per_message`
    /// (see [`limits::HostCallWatch::running_time`]): neither the waits on the host nor the
    /// waits for a turn on a busy node or machine are charged; what the host does
    /// synchronously inside the call is.
    pub fn cpu_used(&self) -> Duration {
        self.watch.running_time()
    }
}

impl WasiView for AgentStore {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The trap raised when a message uses more CPU time than `[limits] cpu_ms_per_message`.
#[derive(Debug, thiserror::Error)]
#[error(
    "used more than its CPU budget of {budget_ms} ms for one call ([limits] cpu_ms_per_message)"
)]
pub struct CpuBudgetExceeded {
    pub budget_ms: u64,
}
