//! The agent host: runs AI agents as sandboxed WebAssembly components.
//!
//! Each capability the WIT world gives an agent (messaging, llm, kv, runtime) is one module
//! under [`capabilities`] that checks the agent's [`manifest`] before doing anything.

pub mod bus;
pub mod config;
pub mod manifest;
pub mod storage;
pub mod subjects;
pub mod units;
