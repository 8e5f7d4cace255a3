//! Write an agent for the agent host in a few lines of Rust.
//!
//! ```ignore
//! use agent_sdk::prelude::*;
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Echo;
//!
//! impl Agent for Echo {
//!     fn handle(&mut self, msg: Message) -> Result<()> {
//!         msg.reply(&msg.payload)
//!     }
//! }
//!
//! export_agent!(Echo);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the output `.wasm` is a
//! component the host loads with `host load`.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "agent",
        path: "../wit",
        pub_export_macro: true,
        default_bindings_module: "agent_sdk::bindings",
    });
}

#[doc(hidden)]
pub mod __private;
pub mod alloc;
mod error;
pub mod kv;
pub mod llm;
mod message;
pub mod messaging;
pub mod runtime;
pub mod state;
pub use message::current_reply_to;

pub use bindings::agent::host::messaging::{
    AgentCommand, AgentTarget, Destination, OutgoingRequest,
};
pub use bindings::agent::host::types::{AgentRef, Header, Message};
pub use error::{describe as describe_host_error, AgentError, HostError, Result};
pub use serde::{Deserialize, Serialize};

/// What an agent implements. The host calls `handle` once per message, one message at a
/// time, so `&mut self` is the agent's whole working state.
///
/// `snapshot`/`restore` default to the agent's serde form (JSON), which is what carries the
/// state across a restart after a fault and across an upgrade to a new version.
pub trait Agent: Default + Serialize + serde::de::DeserializeOwned + 'static {
    /// Called once after the instance is created, before any message.
    fn init(&mut self, _me: &AgentRef) -> Result<()> {
        Ok(())
    }

    /// Handles one message. An error is reported to the host (counted, logged) and the
    /// agent keeps running.
    fn handle(&mut self, msg: Message) -> Result<()>;

    /// Serialises the state (default: JSON of `self`).
    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Replaces the state with one written by `snapshot` of version `from_version` (older on
    /// an upgrade, newer on a rollback: see [`state::is_downgrade`]). Override it to convert,
    /// e.g. `*self = state::read_or_convert::<Self, OldState>(state)?`. On error, leave
    /// `self` untouched: the upgrade is aborted (or the rollback refused) with the text.
    fn restore(&mut self, _from_version: &str, state: &[u8]) -> Result<()> {
        *self = serde_json::from_slice(state)
            .map_err(|e| AgentError::new(format!("cannot read saved state: {e}")))?;
        Ok(())
    }

    /// Reports whether the agent can serve; used by the host's health checks.
    fn health(&self) -> Result<()> {
        Ok(())
    }
}

/// Everything an agent usually needs, in one `use`.
pub mod prelude {
    pub use crate::{
        export_agent, kv, llm, messaging, runtime, state, Agent, AgentError, AgentRef, AgentTarget,
        Deserialize, Header, HostError, Message, Result, Serialize,
    };
}

/// Exports `$agent` (a type implementing [`Agent`]) as the component's `guest` interface.
#[macro_export]
macro_rules! export_agent {
    ($agent:ty) => {
        #[doc(hidden)]
        mod __agent_sdk_export {
            use super::*;
            struct Export;
            impl $crate::bindings::exports::agent::host::guest::Guest for Export {
                fn version() -> ::std::string::String {
                    ::std::string::String::from(env!("CARGO_PKG_VERSION"))
                }
                fn init(me: $crate::AgentRef) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::state::set_my_version(env!("CARGO_PKG_VERSION"));
                    $crate::__private::init::<$agent>(me)
                }
                fn handle(msg: $crate::Message) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::handle::<$agent>(msg)
                }
                fn snapshot() -> ::std::vec::Vec<u8> {
                    $crate::__private::snapshot::<$agent>()
                }
                fn restore(
                    from_version: ::std::string::String,
                    state: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::restore::<$agent>(&from_version, &state)
                }
                fn health() -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::health::<$agent>()
                }
            }
            $crate::bindings::export!(Export with_types_in $crate::bindings);
        }
    };
}
