//! Host-side bindings generated from `wit/`, the single contract with agents.
//!
//! Every import is async (the host may do I/O) and trappable (a host bug becomes a trap of
//! that one instance, never a panic of the node).

wasmtime::component::bindgen!({
    world: "agent",
    path: "../wit",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use agent::host::types::{AgentRef, Error as WitError, Header, Message};
pub use exports::agent::host::guest::Guest;
