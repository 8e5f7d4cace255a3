//! Upgrading a component across a node: every agent running it moves to the new version in
//! waves, gates are checked between the waves, and a failing wave is rolled back.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_host::agent::plan::RolloutPlan;
use agent_host::bus::BusMessage;
use support::{plugin, TestNode};

const COUNTERS: [&str; 4] = ["counter-a", "counter-b", "counter-c", "counter-d"];

fn waves(steps: &str, interval: &str, gates: &[&str]) -> RolloutPlan {
    let gates: Vec<String> = gates.iter().map(|g| g.to_string()).collect();
    RolloutPlan::from_args("--waves", Some(steps), Some(interval), &gates).unwrap()
}

async fn four_counters_and_an_echo(t: &TestNode) {
    for (n, name) in COUNTERS.iter().enumerate() {
        t.load("counter", name, "").await;
        t.ask(&format!("agent.to.{name}.cmd"), &format!("add {}", n + 1))
            .await;
    }
    t.load("echo", "echo", "").await;
}

/// Sends `add 1` and `get` to every counter every few milliseconds until stopped.
fn traffic(t: &TestNode, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let bus = t.node.bus.clone();
    tokio::spawn(async move {
        while !stop.load(Ordering::Acquire) {
            for name in COUNTERS {
                for payload in ["add 0", "get"] {
                    let msg = BusMessage {
                        reply_to: Some("_INBOX.waves.ignored".into()),
                        ..BusMessage::new(format!("agent.to.{name}.cmd"), payload)
                    };
                    bus.publish(msg).await.unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_running_a_component_is_upgraded_in_waves_keeping_its_state() {
    let t = TestNode::start().await;
    four_counters_and_an_echo(&t).await;
    let echo_version = t.node.status("echo").await.unwrap().version;
    let report = t
        .node
        .upgrade_component(
            "counter",
            &plugin("counter_v2"),
            waves("50,100", "200ms", &[]),
        )
        .await
        .unwrap();
    assert!(report.completed, "{}", report.text);
    assert_eq!(report.agents, COUNTERS);
    let per_wave: Vec<(u8, usize, bool)> = report
        .waves
        .iter()
        .map(|w| (w.percent, w.agents.len(), w.rolled_back))
        .collect();
    assert_eq!(per_wave, [(50, 2, false), (100, 2, false)]);
    for (n, name) in COUNTERS.iter().enumerate() {
        let status = t.node.status(name).await.unwrap();
        assert_eq!(status.version, "0.2.0", "{name}");
        assert_eq!(
            t.ask(&format!("agent.to.{name}.cmd"), "get").await,
            (n + 1).to_string(),
            "{name} kept its state"
        );
    }
    assert_eq!(
        t.node.status("echo").await.unwrap().version,
        echo_version,
        "an agent of another component is left alone"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_that_fails_its_gates_is_rolled_back_and_the_upgrade_stops() {
    let t = TestNode::start().await;
    four_counters_and_an_echo(&t).await;
    let v1_digest = t.node.status("counter-a").await.unwrap().digest;
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(&t, stop.clone());
    // The regressed release fails every `get`: half of what the first wave handles.
    let report = t
        .node
        .upgrade_component(
            &v1_digest[..12],
            &plugin("counter_regressed"),
            waves("25,50,100", "300ms", &["error_rate<5%"]),
        )
        .await
        .unwrap();
    stop.store(true, Ordering::Release);
    load.await.unwrap();
    assert!(!report.completed);
    assert_eq!(report.waves.len(), 1, "{:#?}", report.waves);
    let wave = &report.waves[0];
    assert!(
        wave.rolled_back && wave.agents == ["counter-a"],
        "{wave:#?}"
    );
    assert!(
        wave.text.contains("wave 25% rolled back") && wave.text.contains("error_rate<5%: green"),
        "{}",
        wave.text
    );
    assert!(
        report.text.contains("stopped at the 25% wave"),
        "{}",
        report.text
    );
    for (n, name) in COUNTERS.iter().enumerate() {
        let status = t.node.status(name).await.unwrap();
        assert_eq!(status.version, "0.1.0", "{name}");
        assert_eq!(
            t.ask(&format!("agent.to.{name}.cmd"), "get").await,
            (n + 1).to_string()
        );
    }
    let a = t.node.status("counter-a").await.unwrap();
    assert!(
        a.events
            .iter()
            .any(|e| e.text.contains("wave 25% rolled back")),
        "{:#?}",
        a.events
    );
    t.stop().await;
}

#[tokio::test]
async fn a_component_no_agent_runs_is_refused_naming_what_runs() {
    let t = TestNode::start().await;
    t.load("echo", "echo", "").await;
    let err = t
        .node
        .upgrade_component("counter", &plugin("counter_v2"), waves("100", "1s", &[]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--component counter: no agent runs that component")
            && err.contains("Running: echo ("),
        "{err}"
    );
    t.stop().await;
}
