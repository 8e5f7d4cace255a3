//! The control API: `host load | list | status | unload | send` talk to a running node
//! over a Unix socket only its owner can open, one JSON request and one JSON answer per
//! line (so `socat` or any language can drive a node too).

pub mod client;
pub mod protocol;
pub mod server;

pub use protocol::{Request, Response};
