//! Version 2 of `counter`: the same commands plus `stats`, and a new state form that also
//! counts the `add` commands. Its `restore` converts version 1's state.
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
        } else if text == "stats" {
            return msg.reply(format!(
                "count={} adds={} version={}",
                self.count,
                self.adds,
                state::my_version()
            ));
        } else if text != "get" {
            return Err(AgentError::new(format!(
                "unknown command '{text}': expected 'add N', 'get' or 'stats'"
            )));
        }
        msg.reply(self.count.to_string())
    }

    fn restore(&mut self, _from_version: &str, saved: &[u8]) -> Result<()> {
        *self = state::read_or_convert::<Self, CounterV1>(saved)?;
        Ok(())
    }
}

export_agent!(Counter);
