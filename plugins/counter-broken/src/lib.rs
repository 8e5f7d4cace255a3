//! A deliberately broken release of `counter`: it works, but its `restore` refuses every
//! saved state — the abort path of an upgrade (and a refused rollback) in tests.
use agent_sdk::prelude::*;

#[derive(Default, Serialize, Deserialize)]
struct Counter {
    count: i64,
}

impl Agent for Counter {
    fn handle(&mut self, msg: Message) -> Result<()> {
        let text = msg.text()?.trim();
        if let Some(n) = text.strip_prefix("add ") {
            self.count += n
                .trim()
                .parse::<i64>()
                .map_err(|e| AgentError::new(format!("add {n}: {e}")))?;
        } else if text != "get" {
            return Err(AgentError::new(format!("unknown command '{text}'")));
        }
        msg.reply(self.count.to_string())
    }

    fn restore(&mut self, from_version: &str, _saved: &[u8]) -> Result<()> {
        Err(AgentError::new(format!(
            "this release cannot read the state of v{from_version}"
        )))
    }
}

export_agent!(Counter);
