//! What the node and the control API can read about an agent without disturbing it.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use serde::Serialize;

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

/// Live facts about an agent that the control API reads without disturbing it.
#[derive(Default)]
pub struct AgentStatus {
    state: AtomicU8,
    pub restarts: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub last_error: Mutex<Option<String>>,
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
    pub restarts: u64,
    pub dead_lettered: u64,
    pub subscriptions: Vec<String>,
    pub last_error: Option<String>,
}
