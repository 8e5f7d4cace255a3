//! The host on a real NATS server: the transport's contract, agents behaving exactly as on
//! the embedded bus, any NATS client talking to them, and storage on JetStream KV.
//!
//! Every test starts its own nats-server (tests/support/nats.rs) on a free loopback port
//! with a temp JetStream store and stops it at the end. Without a nats-server binary the
//! tests are skipped loudly, or fail under CI=true.

/// Agents on a NATS node, and plain NATS clients talking to them.
#[path = "nats/agents.rs"]
mod agents;
/// Signing in: credentials in the URL, a credentials file for operator mode.
#[path = "nats/auth.rs"]
mod auth;
/// A three-server NATS cluster: nodes on different servers, fail-over.
#[path = "nats/cluster.rs"]
mod cluster;
/// Durable delivery through JetStream consumers.
#[path = "nats/durable.rs"]
mod durable;
/// Faults with durable agents: server restart, SIGKILL, oversized messages.
#[path = "nats/faults.rs"]
mod faults;
/// The security review's holes where the NATS path differs: references, ids, headers,
/// mailbox bytes.
#[path = "nats/hostile.rs"]
mod hostile;
/// Storage on JetStream KV.
#[path = "nats/kv.rs"]
mod kv;
#[path = "support/nats.rs"]
mod nats_server;
#[path = "support/ollama.rs"]
mod ollama;
/// A client in another language (Python) talking to agents.
#[path = "nats/other_languages.rs"]
mod other_languages;
mod support;
/// The transport on its own.
#[path = "nats/transport.rs"]
mod transport;
