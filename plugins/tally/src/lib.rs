//! Records every message it handles by its payload (`m17`, ...) and counts the ones it sees
//! a second time, so a test can check that the host lost and repeated nothing. `report`
//! replies `{distinct} {repeats}`. It keeps no KV, so it works while NATS is away.
use std::collections::BTreeSet;

use agent_sdk::prelude::*;

#[derive(Default, Serialize, Deserialize)]
struct Tally {
    seen: BTreeSet<String>,
    repeats: u64,
}

impl Agent for Tally {
    fn handle(&mut self, msg: Message) -> Result<()> {
        let text = msg.text()?.trim().to_string();
        if text == "report" {
            return msg.reply(format!("{} {}", self.seen.len(), self.repeats));
        }
        if !self.seen.insert(text) {
            self.repeats += 1;
        }
        msg.reply("ok")
    }
}

export_agent!(Tally);
