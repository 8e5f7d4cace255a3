//! Logs, metrics and health: what an operator reads to know what the node is doing.

pub mod fields;
pub mod health;
pub mod http;
pub mod metrics;

pub use metrics::{AgentMetrics, Metrics};

/// Installs the tracing subscriber: `LOG_LEVEL` (or `RUST_LOG`) picks the filter, default
/// `info`. Every field is written through [`fields::EscapedFields`], so text an agent (or a
/// sender) controls cannot break a line or reach a terminal raw. Safe to call twice (the
/// second call is ignored).
pub fn init_logging() {
    let filter = std::env::var("LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("LOG_LEVEL={filter:?} is not a valid filter ({e}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    let _ = tracing_subscriber::fmt()
        .fmt_fields(fields::EscapedFields)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
