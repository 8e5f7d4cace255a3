//! `/health` and `/metrics` over HTTP for operators and Prometheus.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::health::HealthReport;
use crate::node::Node;

/// Serves until the returned task is aborted. Binding errors are returned at once.
pub async fn serve(
    node: Arc<Node>,
    addr: SocketAddr,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for /health and /metrics: {e}; change [http] listen in the node config (or \"off\")"))?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(node);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("HTTP server stopped: {e}");
        }
    });
    Ok((local, task))
}

/// 200 when every agent runs and the bus is connected, 503 ("degraded") otherwise; the
/// body says which agents are not running and where the bus stands. Agents' texts in it
/// (their last errors) have every control character escaped, C1 and bidi controls too,
/// which JSON itself would let through to a terminal running `curl`.
async fn health(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let report = HealthReport::of(&node).await;
    let code = if report.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = health_body(&report);
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}

/// The JSON of `report`, with the controls JSON leaves raw (DEL, C1, bidi) escaped too.
fn health_body(report: &HealthReport) -> String {
    let json = serde_json::to_string(report).unwrap_or_default();
    crate::escape::for_json(&json).into_owned()
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    node.metrics.set_bus_state(&node.bus.state());
    node.metrics.set_mailboxes_queued(node.mailboxes.used());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        node.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_text_in_health_reaches_no_terminal_raw_and_stays_the_same_json_value() {
        let text = "trap: \u{1b}[2J\u{9b}31m\u{202e}gnirts";
        let report = HealthReport::one_failed_agent(text);
        let body = health_body(&report);
        assert!(
            !body.chars().any(crate::escape::is_hazard),
            "no raw control character: {body:?}"
        );
        let back: HealthReport = serde_json::from_str(&body).unwrap();
        assert_eq!(back.not_running[0].last_error.as_deref(), Some(text));
    }
}
