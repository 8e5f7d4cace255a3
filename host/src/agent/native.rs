//! Native Rust handlers run in place of a component, through the same runner, mailbox and
//! capability checks. They exist as the baseline the dispatch benchmark compares Wasm
//! agents against; agents themselves are always components.

use std::sync::Arc;

use super::AgentStore;
use crate::bindings::Message;

/// Makes a fresh handler for each (re)start, like instantiating a component.
pub type NativeFactory = Arc<dyn Fn() -> Box<dyn NativeGuest> + Send + Sync>;

/// The `guest` exports, in Rust. Host calls go through the same capability modules as a
/// component's imports (e.g. `MessagingView::of(store)`).
#[async_trait::async_trait]
pub trait NativeGuest: Send + 'static {
    fn version(&self) -> String {
        "native".to_string()
    }

    async fn handle(&mut self, store: &mut AgentStore, msg: &Message) -> Result<(), String>;

    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(&mut self, _from_version: &str, _state: &[u8]) -> Result<(), String> {
        Ok(())
    }
}
