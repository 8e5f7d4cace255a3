//! `host run`: a node in the foreground.

use std::path::PathBuf;

use super::verbs::absolute;

use crate::config::NodeConfig;
use crate::control::server::ControlServer;
use crate::node::Node;

pub async fn run(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    control: Option<PathBuf>,
) -> anyhow::Result<()> {
    crate::telemetry::init_logging();
    let mut cfg = NodeConfig::load(config.as_deref())?;
    if let Some(dir) = data_dir {
        cfg.node.data_dir = absolute(&dir)?;
    }
    if let Some(path) = control {
        cfg.control.socket = Some(absolute(&path)?);
    }
    let socket = cfg.control_socket();
    let http = cfg.http.listen;
    let node = Node::start(cfg).await?;
    // The configured agents load first: once the control socket answers, they all serve.
    if let Err(e) = node.load_configured_agents().await {
        node.shutdown().await;
        return Err(e);
    }
    let control = match ControlServer::start(node.clone(), &socket).await {
        Ok(c) => c,
        Err(e) => {
            node.shutdown().await;
            return Err(e);
        }
    };
    let http_task = match http {
        Some(addr) => {
            let (bound, task) = crate::telemetry::http::serve(node.clone(), addr).await?;
            tracing::info!(
                "health and metrics on http://{bound}/health and http://{bound}/metrics"
            );
            Some(task)
        }
        None => None,
    };
    tracing::info!(
        "node '{}' running {} agent(s); control socket {} (try: host list --control {})",
        node.config.node.name,
        node.list().await.len(),
        control.path().display(),
        control.path().display()
    );
    wait_for_shutdown_signal().await;
    tracing::info!("stopping: saving every agent's state");
    node.shutdown().await;
    if let Some(task) = http_task {
        task.abort();
    }
    drop(control);
    tracing::info!("node stopped");
    Ok(())
}

async fn wait_for_shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
