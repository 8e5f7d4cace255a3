//! A release of `counter` with a regression: it counts like version 2 (and converts
//! version 1's state), but `get` fails. A canary of it must breach its error-rate gate and
//! roll back by itself, with no `add` lost or counted twice.
use agent_sdk::prelude::*;

#[derive(Default, Serialize, Deserialize)]
struct Counter {
    count: i64,
    adds: u64,
}

/// Version 1's state.
#[derive(Deserialize)]
struct CounterV1 {
    count: i64,
}

impl From<CounterV1> for Counter {
    fn from(v1: CounterV1) -> Self {
        Counter {
            count: v1.count,
            adds: 0,
        }
    }
}

impl Agent for Counter {
    fn handle(&mut self, msg: Message) -> Result<()> {
        let text = msg.text()?.trim();
        if let Some(n) = text.strip_prefix("add ") {
            let n = n
                .trim()
                .parse::<i64>()
                .map_err(|e| AgentError::new(format!("add {n}: {e}")))?;
            self.count += n;
            self.adds += 1;
            kv::set("count", self.count.to_string())?;
            return msg.reply(self.count.to_string());
        }
        // The regression: every other command fails.
        Err(AgentError::new(format!(
            "'{text}' failed: this release lost its read path"
        )))
    }

    fn restore(&mut self, _from_version: &str, saved: &[u8]) -> Result<()> {
        *self = state::read_or_convert::<Self, CounterV1>(saved)?;
        Ok(())
    }
}

export_agent!(Counter);
