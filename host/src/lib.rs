//! The agent host: runs AI agents as sandboxed WebAssembly components.
//!
//! Each capability the WIT world gives an agent (messaging, llm, kv, runtime) is one module
//! under [`capabilities`] that checks the agent's [`manifest`] before doing anything.

pub mod agent;
pub mod bindings;
pub mod bounded;
pub mod bounded_file;
pub mod bus;
pub mod capabilities;
pub mod cli;
pub mod config;
pub mod control;
pub mod convert;
pub mod engine;
pub mod escape;
/// The fuzz targets' properties: for `host/fuzz` (feature `fuzzing`) and the test suite,
/// which replays every input a fuzzer found; not in the shipped binary.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod llm;
pub mod log_sample;
pub mod manifest;
pub mod node;
pub mod private_dir;
pub mod storage;
pub mod subjects;
pub mod telemetry;
pub mod units;
