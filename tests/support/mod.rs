//! Shared test support: builds the real plugins, starts real nodes (in process or as a
//! `host run` child process), and cleans up after itself.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use agent_host::bus::BusMessage;
use agent_host::config::NodeConfig;
use agent_host::node::{LoadRequest, Node};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// Builds every plugin in plugins/ for wasm32-wasip2 once per test process and returns
/// the path of the named component.
pub fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let plugins = root().join("plugins");
        let out = Command::new(env!("CARGO"))
            .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
            .current_dir(&plugins)
            .output()
            .expect("run cargo to build the plugins");
        assert!(
            out.status.success(),
            "building plugins failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        plugins.join("target/wasm32-wasip2/release")
    });
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "plugin {name} was not built at {}",
        path.display()
    );
    path
}

/// A node config for tests: its own temp data dir, no HTTP listener.
pub fn test_config(dir: &Path) -> NodeConfig {
    let mut cfg = NodeConfig::default();
    cfg.node.data_dir = dir.to_path_buf();
    cfg.http.listen = None;
    cfg.engine.max_agents = 64;
    cfg
}

/// An in-process node with its temp folder (removed on drop, after the node stops).
pub struct TestNode {
    pub node: Arc<Node>,
    pub dir: tempfile::TempDir,
}

impl TestNode {
    pub async fn start() -> TestNode {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut NodeConfig)) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = test_config(dir.path());
        tweak(&mut cfg);
        let node = Node::start(cfg).await.expect("node starts");
        TestNode { node, dir }
    }

    /// Loads a plugin with a manifest written from `manifest_toml` (may be empty: no
    /// manifest, deny by default).
    pub async fn load(
        &self,
        plugin_name: &str,
        agent_name: &str,
        manifest_toml: &str,
    ) -> agent_host::agent::AgentSummary {
        self.try_load(plugin_name, agent_name, manifest_toml)
            .await
            .expect("agent loads")
    }

    pub async fn try_load(
        &self,
        plugin_name: &str,
        agent_name: &str,
        manifest_toml: &str,
    ) -> anyhow::Result<agent_host::agent::AgentSummary> {
        let manifest = if manifest_toml.is_empty() {
            None
        } else {
            let path = self.dir.path().join(format!("{agent_name}.toml"));
            std::fs::write(&path, manifest_toml).expect("write manifest");
            Some(path)
        };
        let req = LoadRequest {
            component: Some(plugin(plugin_name)),
            manifest,
            name: Some(agent_name.to_string()),
        };
        self.node.load(req).await
    }

    /// Waits (up to 20 s) until agent `name` has handled `n` messages. An agent's reply
    /// leaves while `handle` runs and the message is counted when `handle` returns, so a
    /// requester holding the reply may see the count one short for a moment.
    pub async fn handled_at_least(&self, name: &str, n: u64) {
        let wait = async {
            while self.node.status(name).await.unwrap().handled < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .unwrap_or_else(|_| panic!("{name} handled {n} messages within 20 s"));
    }

    /// Sends `payload` to `subject` and returns the reply payload as text.
    pub async fn ask(&self, subject: &str, payload: &str) -> String {
        let reply = self
            .request(BusMessage::new(subject, payload.as_bytes().to_vec()))
            .await
            .expect("a reply");
        String::from_utf8_lossy(&reply.payload).into_owned()
    }

    pub async fn request(&self, msg: BusMessage) -> anyhow::Result<BusMessage> {
        Ok(self
            .node
            .send(msg, Some(Duration::from_secs(5)))
            .await?
            .expect("a reply when waiting"))
    }

    pub async fn publish(&self, msg: BusMessage) {
        self.node.send(msg, None).await.expect("publish");
    }

    pub async fn stop(self) {
        self.node.shutdown().await;
    }
}

/// GETs `path` from the HTTP server at `addr`: the status code and the whole response.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut body))
        .await
        .unwrap()
        .unwrap();
    let code = body.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body)
}

/// Polls `check` every 10 ms for up to `limit`; true when it held.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check().await
}

/// The `host` binary built for these tests.
pub fn host_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_host"))
}

/// A `host run` child process with its own data dir; killed on drop.
pub struct NodeProcess {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl NodeProcess {
    /// Starts `host run` with `config_toml` (written to the temp dir; may be empty) and
    /// waits until its control socket answers.
    pub fn start(config_toml: &str) -> NodeProcess {
        Self::start_in(tempfile::tempdir().expect("temp dir"), config_toml)
    }

    /// [`NodeProcess::start`] with environment variables set for `host run`.
    pub fn start_with_env(config_toml: &str, env: &[(&str, &str)]) -> NodeProcess {
        Self::start_in_with_env(tempfile::tempdir().expect("temp dir"), config_toml, env)
    }

    /// Starts a node on an existing data dir (a restart keeps its state).
    pub fn start_in(dir: tempfile::TempDir, config_toml: &str) -> NodeProcess {
        Self::start_in_with_env(dir, config_toml, &[])
    }

    fn start_in_with_env(
        dir: tempfile::TempDir,
        config_toml: &str,
        env: &[(&str, &str)],
    ) -> NodeProcess {
        let socket = dir.path().join("host.sock");
        let log = dir.path().join("node.log");
        let mut cmd = Command::new(host_bin());
        cmd.arg("run")
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--control")
            .arg(&socket);
        // Tests run in parallel: each node gets its own free port for /health and /metrics.
        let config_toml = if config_toml.is_empty() {
            "[http]\nlisten = \"127.0.0.1:0\"\n"
        } else {
            config_toml
        };
        let cfg = dir.path().join("node.toml");
        std::fs::write(&cfg, config_toml).expect("write node config");
        cmd.arg("--config").arg(cfg);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        cmd.stdout(Stdio::null())
            .stderr(log_file)
            .env_remove("HOST_CONTROL")
            .env("LOG_LEVEL", "info")
            .envs(env.iter().copied());
        let child = cmd.spawn().expect("start host run");
        let mut p = NodeProcess {
            child,
            dir,
            socket,
            log,
        };
        let start = Instant::now();
        loop {
            if std::os::unix::net::UnixStream::connect(&p.socket).is_ok() {
                break;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("host run exited with {status}:\n{}", p.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "node did not open its control socket:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    /// Runs a client verb against this node.
    pub fn host(&self, args: &[&str]) -> Output {
        Command::new(host_bin())
            .args(args)
            .env("HOST_CONTROL", &self.socket)
            .output()
            .expect("run host")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the node with SIGTERM and starts it again on the same data dir.
    pub fn restart(mut self) -> NodeProcess {
        let status = self.terminate();
        assert!(
            status.success(),
            "node stopped cleanly: {}",
            self.log_text()
        );
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        NodeProcess::start_in(dir, "")
    }

    /// Stops the node with SIGTERM and waits for it (it saves state first).
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                return self.child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
