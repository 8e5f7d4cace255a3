//! Serves the control API of a running node on its Unix socket.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::protocol::{Reply, Request, Response};
use crate::bus::BusMessage;
use crate::node::Node;

/// Longest request line accepted (a load request is a few hundred bytes; a send carries
/// its payload). A connection is read through this bound, never a whole line first.
const MAX_REQUEST: usize = 16 * 1024 * 1024;

/// Binds the socket (owner-only) and serves requests until the node stops.
pub struct ControlServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl ControlServer {
    pub async fn start(node: Arc<Node>, path: &Path) -> anyhow::Result<ControlServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!(
                    "cannot create {} for the control socket: {e}",
                    dir.display()
                )
            })?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                anyhow::bail!(
                    "a node is already running with control socket {}; stop it, or start this one with another --data-dir or --control",
                    path.display()
                );
            }
            // A socket left behind by a node that died: nobody answers on it.
            std::fs::remove_file(path).map_err(|e| {
                anyhow::anyhow!("cannot remove stale control socket {}: {e}", path.display())
            })?;
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| anyhow::anyhow!("cannot bind control socket {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let node = node.clone();
                        tokio::spawn(async move {
                            if let Err(e) = serve_connection(node, stream).await {
                                tracing::debug!("control connection ended: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!("control socket accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(ControlServer {
            path: path.to_path_buf(),
            task,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_connection(node: Arc<Node>, stream: UnixStream) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Read through a bound: a client sending an endless line gets refused once it
        // passes the limit, instead of the node holding the whole line in memory first.
        let n = (&mut lines)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.len() > MAX_REQUEST && line.last() != Some(&b'\n') {
            let refused = Response::err(format!(
                "request line longer than the {} a control request may be; nothing was done. This connection is closed, since the rest of the line cannot be read as requests",
                crate::units::format_bytes(MAX_REQUEST as u64)
            ));
            send(&mut write, &refused).await?;
            return Ok(());
        }
        let response = match std::str::from_utf8(&line) {
            Ok(text) => match serde_json::from_str::<Request>(text.trim_end()) {
                Ok(req) => handle(&node, req).await,
                Err(e) => Response::err(format!("not a control request ({e}); expected one JSON object per line with a \"verb\"")),
            },
            Err(e) => Response::err(format!(
                "not a control request: the line is not UTF-8 ({e}); expected one JSON object per line with a \"verb\""
            )),
        };
        send(&mut write, &response).await?;
    }
}

/// Writes one response line.
async fn send(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> anyhow::Result<()> {
    let mut out = serde_json::to_vec(response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// Runs one request against the node.
pub async fn handle(node: &Node, req: Request) -> Response {
    let result = match req {
        Request::Load(load) => node.load(load).await.map(Response::ok),
        Request::Unload { name } => node.unload(&name).await.map(Response::ok),
        Request::List => Ok(Response::ok(node.list().await)),
        Request::Health => Ok(Response::ok(
            crate::telemetry::health::HealthReport::of(node).await,
        )),
        Request::Upgrade {
            name,
            component,
            canary: None,
        } => node.upgrade(&name, &component).await.map(Response::ok),
        Request::Upgrade {
            name,
            component,
            canary: Some(plan),
        } => node
            .start_canary(&name, &component, plan)
            .await
            .map(|run| Response::ok(run.started)),
        Request::UpgradeComponent {
            selector,
            component,
            plan,
        } => node
            .upgrade_component(&selector, &component, plan)
            .await
            .map(Response::ok),
        Request::Rollback { name, force } => node.rollback(&name, force).await.map(Response::ok),
        Request::Promote { name } => node
            .promote(&name)
            .await
            .map(|text| Response::ok(serde_json::json!({ "text": text }))),
        Request::Status { name } => match node.status(&name).await {
            Ok(summary) => {
                let grants = node.grants(&name).await.unwrap_or_default();
                Ok(Response::ok(
                    serde_json::json!({ "agent": summary, "grants": grants }),
                ))
            }
            Err(e) => Err(e),
        },
        Request::Send {
            subject,
            headers,
            payload,
            wait_ms,
        } => {
            let msg = BusMessage {
                subject,
                reply_to: None,
                headers,
                payload: Bytes::from(payload),
            };
            node.send(msg, wait_ms.map(Duration::from_millis))
                .await
                .map(|reply| {
                    Response::ok(reply.map(|r| Reply {
                        subject: r.subject,
                        headers: r.headers,
                        payload: r.payload.to_vec(),
                    }))
                })
        }
    };
    result.unwrap_or_else(|e| Response::err(format!("{e:#}")))
}
