//! The client side of the control API, used by the CLI verbs.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::protocol::{Request, Response};

/// A connection to a running node.
pub struct ControlClient {
    path: PathBuf,
    stream: BufReader<UnixStream>,
}

impl ControlClient {
    /// Connects; when no node runs there, the error says how to start one.
    pub async fn connect(path: &Path) -> anyhow::Result<ControlClient> {
        match UnixStream::connect(path).await {
            Ok(stream) => Ok(ControlClient {
                path: path.to_path_buf(),
                stream: BufReader::new(stream),
            }),
            Err(e) => {
                let why = match e.kind() {
                    std::io::ErrorKind::NotFound => "the control socket does not exist".to_string(),
                    std::io::ErrorKind::ConnectionRefused => {
                        "nothing listens on the control socket (the node stopped)".to_string()
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        "permission denied: the socket belongs to another user".to_string()
                    }
                    _ => e.to_string(),
                };
                anyhow::bail!(
                    "no node is running at {} ({why}); start one with `host run` (same --data-dir), or point --control / HOST_CONTROL at the socket of the node you mean",
                    path.display()
                )
            }
        }
    }

    /// Sends one request; an error answer becomes an `Err` with the node's words.
    pub async fn call(&mut self, req: &Request) -> anyhow::Result<serde_json::Value> {
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        self.stream.get_mut().write_all(&line).await?;
        let mut answer = String::new();
        let n = self.stream.read_line(&mut answer).await?;
        if n == 0 {
            anyhow::bail!(
                "the node at {} closed the connection without answering",
                self.path.display()
            );
        }
        let response: Response = serde_json::from_str(answer.trim_end()).map_err(|e| {
            anyhow::anyhow!("the node answered something that is not a control response: {e}")
        })?;
        if response.ok {
            Ok(response.result.unwrap_or(serde_json::Value::Null))
        } else {
            anyhow::bail!(
                "{}",
                response
                    .error
                    .unwrap_or_else(|| "the node reported an error without text".into())
            )
        }
    }
}
