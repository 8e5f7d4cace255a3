//! `/health` and `/metrics` over HTTP for operators and Prometheus.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

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
/// body says which agents are not running and where the bus stands.
async fn health(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let report = HealthReport::of(&node).await;
    let code = if report.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report))
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
