//! What the node and the control API can read about an agent without disturbing it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Events kept per agent for `host status`.
const EVENTS_KEPT: usize = 20;

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    Running = 0,
    Restarting = 1,
    Failed = 2,
    Stopped = 3,
}

impl AgentState {
    fn from_u8(v: u8) -> AgentState {
        match v {
            0 => AgentState::Running,
            1 => AgentState::Restarting,
            2 => AgentState::Failed,
            _ => AgentState::Stopped,
        }
    }
}

/// Something that happened to an agent (an upgrade step, a rollback), as `host status`
/// shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub text: String,
}

/// Live facts about an agent that the control API reads without disturbing it.
#[derive(Default)]
pub struct AgentStatus {
    state: AtomicU8,
    pub restarts: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// The serving component's version and digest (they change on upgrade and rollback).
    pub version: Mutex<String>,
    pub digest: Mutex<String>,
    /// The version kept warm for a rollback, while the rollback window is open.
    pub previous_version: Mutex<Option<String>>,
    /// The canary in progress, if any (updated at every step and check).
    pub canary: Mutex<Option<super::canary::CanaryStatus>>,
    events: Mutex<VecDeque<Event>>,
}

impl AgentStatus {
    pub fn state(&self) -> AgentState {
        AgentState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub(crate) fn set_state(&self, s: AgentState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    pub(crate) fn set_error(&self, e: String) {
        *self.last_error.lock().expect("status lock") = Some(e);
    }

    pub(crate) fn set_serving(&self, version: &str, digest: &str, previous: Option<&str>) {
        *self.version.lock().expect("status lock") = version.to_string();
        *self.digest.lock().expect("status lock") = digest.to_string();
        *self.previous_version.lock().expect("status lock") = previous.map(str::to_string);
    }

    /// Logs an event for `agent` and keeps it for `host status`.
    pub(crate) fn record(&self, agent: &str, text: String) {
        tracing::info!(agent = %agent, "{text}");
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut events = self.events.lock().expect("status lock");
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(Event { at_ms, text });
    }

    pub(crate) fn set_canary(&self, canary: Option<super::canary::CanaryStatus>) {
        *self.canary.lock().expect("status lock") = canary;
    }

    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .expect("status lock")
            .iter()
            .cloned()
            .collect()
    }
}

/// What `host list` shows of an agent.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct AgentSummary {
    pub name: String,
    pub cluster: String,
    pub id: String,
    pub version: String,
    pub digest: String,
    pub state: AgentState,
    pub handled: u64,
    pub errors: u64,
    pub traps: u64,
    pub denied: u64,
    /// Messages lost because the agent's mailbox was full (`[node] mailbox_capacity`,
    /// `mailbox_max_bytes`, or the node's `mailboxes_max_bytes`).
    #[serde(default)]
    pub dropped: u64,
    /// Bytes (payloads and headers) waiting in the agent's mailbox now.
    #[serde(default)]
    pub queued_bytes: u64,
    /// Limits the agent ran into since it was loaded.
    #[serde(default)]
    pub limit_hits: LimitHitCounts,
    pub restarts: u64,
    pub dead_lettered: u64,
    pub subscriptions: Vec<String>,
    pub last_error: Option<String>,
    /// The version kept warm for `host rollback`, if any.
    #[serde(default)]
    pub previous_version: Option<String>,
    #[serde(default)]
    pub events: Vec<Event>,
    /// The canary in progress: versions, step, gate readings.
    #[serde(default)]
    pub canary: Option<super::canary::CanaryStatus>,
}

/// How often an agent ran into each limit (`agent_host_limit_hits_total`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitHitCounts {
    /// Calls stopped at `[limits] cpu_ms_per_message`.
    pub cpu: u64,
    /// Memory growths refused at `[limits] memory` (the agent saw an allocation failure).
    pub memory: u64,
    /// Calls trapped by a stack overflow.
    pub stack: u64,
    /// Calls abandoned while blocked in one host call for longer than the node allows.
    pub host_call: u64,
    /// File writes refused at `[files] max_bytes` (the agent saw "no space left").
    #[serde(default)]
    pub files: u64,
    /// Messages refused at `[limits] publish_per_second` (the agent got `quota-exceeded`).
    #[serde(default)]
    pub publish_rate: u64,
    /// Table growths refused at `[limits] table_elements` (the agent saw `table.grow` fail).
    #[serde(default)]
    pub table: u64,
    /// `init`, `version`, `snapshot` or `restore` calls abandoned past their wall-time bound.
    #[serde(default)]
    pub lifecycle: u64,
    /// Log lines (`runtime.log`, stdout, stderr) dropped over `[limits] log_lines_per_second`.
    #[serde(default)]
    pub log_rate: u64,
    /// Snapshots refused at `[limits] max_snapshot_bytes` (not kept, persisted or handed on).
    #[serde(default)]
    pub snapshot: u64,
}
