//! Any NATS client, in any language, talks to agents as a Rust one does: here Python's
//! nats-py (`tests/nats/clients/python_client.py`), run as a child process against the
//! node's server. `scripts/test.sh` installs nats-py; without it the test fails under
//! CI=true and is skipped loudly otherwise.

use std::process::Command;
use std::time::Duration;

use super::agents::node_on;
use super::durable::COUNTER_ID;
use super::nats_server::NatsServer;
use crate::support::root;

const INSTALL: &str = "install it with `python3 -m pip install 'nats-py>=2.6'`";

/// `python3` if it can import nats-py, else None after saying why (a failure under CI=true).
fn python_with_nats(test: &str) -> Option<&'static str> {
    let probe = Command::new("python3").args(["-c", "import nats"]).output();
    let why = match probe {
        Ok(out) if out.status.success() => return Some("python3"),
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(e) => format!("python3 does not run: {e}"),
    };
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: nats-py is not importable ({why}); {INSTALL}");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED {test}: nats-py is not importable ({why}); {INSTALL} ***\n"
    );
    None
}

#[tokio::test]
async fn a_python_client_publishes_requests_by_inbox_and_agent_ref_and_reads_reply_headers() {
    let Some(server) = NatsServer::start("nats python client") else {
        return;
    };
    let Some(python) = python_with_nats("nats python client") else {
        return;
    };
    let t = node_on(&server).await;
    let echo = t.load("echo", "echo", "").await;
    t.load(
        "counter",
        "counter",
        &format!("[agent]\nname = \"counter\"\nid = \"{COUNTER_ID}\"\n"),
    )
    .await;
    let counter_ref = format!("agent.default.counter.{COUNTER_ID}.command.cmd");
    let script = root().join("tests/nats/clients/python_client.py");
    let run = tokio::process::Command::new(python)
        .arg(&script)
        .arg(server.url())
        .arg(&counter_ref)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the Python client finishes within 60 s")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(seen["echo"], "from python");
    assert_eq!(seen["echo_sender"], format!("default.echo.{}", echo.id));
    assert_eq!(seen["after_publish_and_request"], "7");
    assert_eq!(seen["by_agent_ref"], "7");
    assert_eq!(
        seen["counter_sender"],
        format!("default.counter.{COUNTER_ID}")
    );
    assert_eq!(
        seen["after_dual_publish"], "17",
        "a message dual-published with one Nats-Msg-Id is handled once: {seen}"
    );
    t.stop().await;
}
