//! `add N` adds N to a count kept in its state and mirrored in KV; `get` replies the count.
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
            kv::set("count", self.count.to_string())?;
        } else if text != "get" {
            return Err(AgentError::new(format!(
                "unknown command '{text}': expected 'add N' or 'get'"
            )));
        }
        msg.reply(self.count.to_string())
    }
}

export_agent!(Counter);
