//! An agent whose `init` or `restore` keeps making short host calls (each within the
//! per-call bound) holds up nothing but itself, and not for long: the node's control API
//! answers meanwhile, the load or the upgrade is cut at its wall-time bound, and a serving
//! version keeps serving.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_host::agent::AgentState;
use agent_host::node::LoadRequest;

use super::{has, HOSTILE, MACHINE};
use crate::support::{eventually, host_bin, plugin, TestNode};

/// `hostile` loaded as `name`, its `init` or `restore` (`which`) looping on 500 ms sleeps.
fn sleepy(name: &str, which: &str) -> String {
    HOSTILE.replace("name = \"hostile\"", &format!("name = \"{name}\""))
        + &format!("[config]\n{which} = \"sleepy\"\n")
}

/// Runs `f` and returns its output with how long it took.
async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = f.await;
    (out, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_init_holds_up_only_its_own_load_and_is_cut_at_init_timeout_ms() {
    let _shared = MACHINE.read().await;
    let t = TestNode::start_with(|c| {
        c.defaults.host_call_timeout_ms = 300;
        c.defaults.init_timeout_ms = 2_000;
    })
    .await;
    t.load("echo", "echo", "").await;
    let manifest = t.dir.path().join("sleeper.toml");
    std::fs::write(&manifest, sleepy("sleeper", "init")).unwrap();
    let node = t.node.clone();
    let load = tokio::spawn(async move {
        let req = LoadRequest {
            component: Some(plugin("hostile")),
            manifest: Some(manifest),
            name: None,
        };
        timed(node.load(req)).await
    });
    // The component compiles first (seconds on a busy machine), then init runs.
    let loading = eventually(Duration::from_secs(30), async || {
        let status = t.node.status("sleeper").await;
        status.is_err_and(|e| e.to_string().contains("is still being loaded")) || load.is_finished()
    })
    .await;
    assert!(
        loading && !load.is_finished(),
        "the sleeper's init is under way"
    );

    // While its init sleeps, the node answers at once and loads another agent.
    let quick = Duration::from_millis(500);
    let (list, took) = timed(t.node.list()).await;
    assert!(
        took < quick && list.len() == 1,
        "list took {took:?}: {list:?}"
    );
    let (echo, took) = timed(t.node.status("echo")).await;
    assert!(took < quick && echo.is_ok(), "status took {took:?}");
    let (health, took) = timed(t.node.health()).await;
    assert!(took < quick && health.0, "health took {took:?}");
    let (other, took) = timed(t.try_load("echo", "echo-2", "")).await;
    assert!(other.is_ok(), "{other:?}");
    assert!(took < Duration::from_secs(2), "another load took {took:?}");
    assert_eq!(t.ask("agent.to.echo-2.x", "hi").await, "hi");
    let err = t
        .try_load("hostile", "sleeper", &sleepy("sleeper", "init"))
        .await
        .unwrap_err();
    has(
        &err.to_string(),
        &["'sleeper' is being loaded on this node right now"],
    );

    // Its init is abandoned at the bound, not after its 20 s of sleeps.
    let (loaded, took) = load.await.unwrap();
    let err = format!("{:#}", loaded.unwrap_err());
    has(
        &err,
        &["agent 'sleeper': init did not finish within 2.0 s ([defaults] init_timeout_ms)"],
    );
    assert!(took < Duration::from_secs(30), "the load took {took:?}");
    let names: Vec<_> = t.node.list().await.into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["echo", "echo-2"], "nothing of the sleeper stays");
    t.stop().await;
}

#[test]
fn a_configured_agent_whose_init_stalls_stops_the_node_start_at_the_bound() {
    let _shared = MACHINE.blocking_read();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("sleeper.toml");
    let hostile = plugin("hostile");
    let manifest_text = sleepy("sleeper", "init").replace(
        "[agent]\n",
        &format!("[agent]\ncomponent = {:?}\n", hostile.display().to_string()),
    );
    std::fs::write(&manifest, manifest_text).unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[http]\nlisten = \"off\"\n[defaults]\ninit_timeout_ms = 1500\n[[agents]]\nmanifest = \"sleeper.toml\"\n",
    )
    .unwrap();
    let started = Instant::now();
    let mut child = Command::new(host_bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("the node was still starting after 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    has(
        &stderr,
        &[
            "sleeper.toml",
            "init did not finish within 1.5 s ([defaults] init_timeout_ms)",
        ],
    );
    // Compiling the component takes a few seconds; the init alone would sleep 60 s.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_whose_restore_stalls_is_aborted_at_handoff_timeout_ms_and_blue_keeps_serving() {
    let _shared = MACHINE.read().await;
    let t = TestNode::start_with(|c| {
        c.defaults.host_call_timeout_ms = 300;
        c.defaults.handoff_timeout_ms = 500;
    })
    .await;
    let blue = t
        .load("hostile", "upgradee", &sleepy("upgradee", "restore"))
        .await;
    assert_eq!(t.ask("agent.to.upgradee.x", "ping").await, "pong");

    // Requests keep coming while the upgrade runs; each is answered within the bound's
    // reach, none waits out the restore's 20 s of sleeps.
    let node = t.node.clone();
    let upgrade =
        tokio::spawn(async move { timed(node.upgrade("upgradee", &plugin("hostile"))).await });
    let mut slowest = Duration::ZERO;
    while !upgrade.is_finished() {
        let (reply, took) = timed(t.ask("agent.to.upgradee.x", "ping")).await;
        assert_eq!(reply, "pong");
        slowest = slowest.max(took);
    }
    let (upgraded, took) = upgrade.await.unwrap();
    let err = format!("{:#}", upgraded.unwrap_err());
    has(
        &err,
        &[
            "upgrade to v0.1.0 aborted",
            "restore did not finish within 0.5 s ([defaults] handoff_timeout_ms)",
            "keeps serving",
        ],
    );
    assert!(took < Duration::from_secs(30), "the upgrade took {took:?}");
    assert!(
        slowest < Duration::from_secs(3),
        "a request waited {slowest:?}"
    );

    let s = t.node.status("upgradee").await.unwrap();
    assert_eq!(s.state, AgentState::Running);
    assert_eq!(
        (s.version.as_str(), s.digest.as_str()),
        ("0.1.0", blue.digest.as_str())
    );
    assert_eq!(s.previous_version, None, "no version was swapped in");
    assert_eq!(s.traps, 0, "blue never trapped");
    assert_eq!(t.ask("agent.to.upgradee.x", "ping").await, "pong");
    t.stop().await;
}
