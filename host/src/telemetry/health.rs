//! What `/health` and `host health` report: one summary for a load balancer's probe, an
//! operator's script and a person at the terminal.

use serde::{Deserialize, Serialize};

use crate::agent::AgentState;
use crate::bus::BusState;
use crate::node::Node;

/// `ok` when every agent runs and the bus is connected, else `degraded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthStatus {
    Ok,
    Degraded,
}

impl HealthStatus {
    fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Ok => "ok",
            HealthStatus::Degraded => "degraded",
        }
    }
}

/// The node's health.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthReport {
    pub status: HealthStatus,
    /// Agents loaded.
    pub agents: usize,
    /// The agents that are not running, with why.
    pub not_running: Vec<NotRunning>,
    pub bus: BusState,
}

/// An agent that is not running.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotRunning {
    pub agent: String,
    pub state: AgentState,
    pub last_error: Option<String>,
}

impl HealthReport {
    pub async fn of(node: &Node) -> HealthReport {
        let (agents_ok, agents) = node.health().await;
        let bus = node.bus.state();
        let ok = agents_ok && bus.connected;
        HealthReport {
            status: if ok {
                HealthStatus::Ok
            } else {
                HealthStatus::Degraded
            },
            agents: agents.len(),
            not_running: agents
                .into_iter()
                .filter(|a| a.state != AgentState::Running)
                .map(|a| NotRunning {
                    agent: a.name,
                    state: a.state,
                    last_error: a.last_error,
                })
                .collect(),
            bus,
        }
    }

    pub fn is_ok(&self) -> bool {
        self.status == HealthStatus::Ok
    }

    /// For a terminal: the status, the bus, then each agent that is not running (its error
    /// is the agent's text, so it is escaped).
    pub fn to_text(&self) -> String {
        let bus = &self.bus;
        let attached = match (&bus.server_name, &bus.server_address) {
            (Some(name), Some(address)) => format!(" to {name} at {address}"),
            _ => String::new(),
        };
        let link = if bus.connected {
            format!("connected{attached}")
        } else {
            "DISCONNECTED (reconnecting by itself)".to_string()
        };
        let mut text = format!(
            "status: {}\nagents: {} loaded, {} not running\nbus: {}, {link}; {} reconnect{}, {} dropped\n",
            self.status.as_str(),
            self.agents,
            self.not_running.len(),
            bus.backend,
            bus.reconnects,
            if bus.reconnects == 1 { "" } else { "s" },
            bus.dropped,
        );
        for a in &self.not_running {
            let why = a.last_error.as_deref().unwrap_or("no error recorded");
            let state = serde_json::to_value(a.state).unwrap_or_default();
            let state = state.as_str().unwrap_or("?");
            let line = format!("  {}: {state} ({why})", a.agent);
            text.push_str(&crate::escape::for_line(&line));
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
impl HealthReport {
    /// A degraded report of one failed agent, `evil`, whose last error is `last_error`.
    pub(crate) fn one_failed_agent(last_error: &str) -> HealthReport {
        HealthReport {
            status: HealthStatus::Degraded,
            agents: 1,
            not_running: vec![NotRunning {
                agent: "evil".into(),
                state: AgentState::Failed,
                last_error: Some(last_error.into()),
            }],
            bus: BusState {
                backend: "embedded".into(),
                connected: true,
                server_name: None,
                server_address: None,
                reconnects: 0,
                dropped: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_error_is_shown_on_one_line_without_raw_controls() {
        let report = HealthReport::one_failed_agent("init failed\n  ok: fine\x1b[2J\u{9b}");
        let text = report.to_text();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(
            text.ends_with("  evil: failed (init failed\\n  ok: fine\\u{1b}[2J\\u{9b})\n"),
            "{text}"
        );
    }
}
