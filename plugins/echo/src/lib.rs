//! Replies to every message with the payload it received.
use agent_sdk::prelude::*;

#[derive(Default, Serialize, Deserialize)]
struct Echo;

impl Agent for Echo {
    fn handle(&mut self, msg: Message) -> Result<()> {
        msg.reply(&msg.payload)
    }
}

export_agent!(Echo);
