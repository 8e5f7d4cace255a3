//! Hot upgrade: an operator swaps an agent to a new version while messages keep flowing,
//! the state comes along, and a rollback is one command away.

mod support;

use std::time::Duration;

use agent_host::agent::plan::RolloutPlan;
use agent_host::bus::BusMessage;
use support::{plugin, TestNode};

async fn counter_with(t: &TestNode, component: &str, adds: &[i64]) {
    t.load(component, "counter", "").await;
    for n in adds {
        t.ask("agent.to.counter.cmd", &format!("add {n}")).await;
    }
}

#[tokio::test]
async fn a_swap_carries_the_state_into_the_new_version_which_converts_it() {
    let t = TestNode::start().await;
    counter_with(&t, "counter", &[5, 7]).await;
    let report = t
        .node
        .upgrade("counter", &plugin("counter_v2"))
        .await
        .unwrap();
    assert_eq!(
        (report.from_version.as_str(), report.to_version.as_str()),
        ("0.1.0", "0.2.0")
    );
    assert!(report.state_bytes > 0);
    assert_eq!(
        t.ask("agent.to.counter.cmd", "get").await,
        "12",
        "state came across"
    );
    assert_eq!(t.ask("agent.to.counter.cmd", "add 1").await, "13");
    assert_eq!(
        t.ask("agent.to.counter.cmd", "stats").await,
        "count=13 adds=1 version=0.2.0",
        "new behaviour, converted state"
    );
    let status = t.node.status("counter").await.unwrap();
    assert_eq!(status.version, "0.2.0");
    assert_eq!(status.previous_version.as_deref(), Some("0.1.0"));
    assert!(
        status
            .events
            .iter()
            .any(|e| e.text.contains("upgraded v0.1.0 → v0.2.0")),
        "{:?}",
        status.events
    );
    t.stop().await;
}

#[tokio::test]
async fn a_rollback_hands_the_current_state_back_to_the_old_version() {
    let t = TestNode::start().await;
    counter_with(&t, "counter", &[5]).await;
    t.node
        .upgrade("counter", &plugin("counter_v2"))
        .await
        .unwrap();
    assert_eq!(t.ask("agent.to.counter.cmd", "add 3").await, "8");
    let report = t.node.rollback("counter", false).await.unwrap();
    assert_eq!(
        (report.from_version.as_str(), report.to_version.as_str()),
        ("0.2.0", "0.1.0")
    );
    assert_eq!(report.lost_messages, 0);
    assert_eq!(
        t.ask("agent.to.counter.cmd", "get").await,
        "8",
        "nothing handled by v2 is lost"
    );
    let status = t.node.status("counter").await.unwrap();
    assert_eq!(
        (status.version.as_str(), status.previous_version.clone()),
        ("0.1.0", None)
    );
    let err = t
        .node
        .rollback("counter", false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no previous version kept warm"), "{err}");
    t.stop().await;
}

#[tokio::test]
async fn an_upgrade_whose_restore_fails_is_aborted_and_the_old_version_keeps_serving() {
    let t = TestNode::start().await;
    counter_with(&t, "counter", &[4]).await;
    let err = t
        .node
        .upgrade("counter", &plugin("counter_broken"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("aborted") && err.contains("cannot read the state of v0.1.0"),
        "{err}"
    );
    assert!(err.contains("v0.1.0 keeps serving, nothing lost"), "{err}");
    assert_eq!(t.ask("agent.to.counter.cmd", "add 1").await, "5");
    let status = t.node.status("counter").await.unwrap();
    assert_eq!(
        (status.version.as_str(), status.previous_version.clone()),
        ("0.1.0", None)
    );
    assert!(status.events.iter().any(|e| e.text.contains("aborted")));
    t.stop().await;
}

#[tokio::test]
async fn a_component_of_another_world_is_refused_and_the_agent_is_untouched() {
    let t = TestNode::start().await;
    counter_with(&t, "counter", &[2]).await;
    let bad = t.dir.path().join("bad.wasm");
    std::fs::write(&bad, wat::parse_str("(component)").unwrap()).unwrap();
    let err = t
        .node
        .upgrade("counter", &bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("refused, the running version is untouched")
            && err.contains("agent:host/agent world"),
        "{err}"
    );
    assert_eq!(t.ask("agent.to.counter.cmd", "get").await, "2");
    t.stop().await;
}

#[tokio::test]
async fn a_rollback_the_old_version_cannot_take_is_refused_unless_forced() {
    let t = TestNode::start().await;
    // Blue is the broken release: it serves, but cannot restore anyone's state.
    counter_with(&t, "counter_broken", &[4]).await;
    t.node
        .upgrade("counter", &plugin("counter_v2"))
        .await
        .unwrap();
    assert_eq!(t.ask("agent.to.counter.cmd", "add 1").await, "5");

    let err = t
        .node
        .rollback("counter", false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rollback refused") && err.contains("--force"),
        "{err}"
    );
    assert!(err.contains("losing the effects of 1 message"), "{err}");
    assert_eq!(
        t.ask("agent.to.counter.cmd", "get").await,
        "5",
        "v0.2.0 keeps serving"
    );

    let report = t.node.rollback("counter", true).await.unwrap();
    assert_eq!(report.to_version, "0.2.1");
    assert_eq!(
        report.lost_messages, 2,
        "the add and the get handled by v0.2.0"
    );
    assert_eq!(
        t.ask("agent.to.counter.cmd", "get").await,
        "4",
        "back to the state at the swap"
    );
    t.stop().await;
}

#[tokio::test]
async fn promote_retires_the_old_version() {
    let t = TestNode::start().await;
    counter_with(&t, "counter", &[1]).await;
    t.node
        .upgrade("counter", &plugin("counter_v2"))
        .await
        .unwrap();
    let text = t.node.promote("counter").await.unwrap();
    assert!(text.contains("v0.1.0 retired"), "{text}");
    assert_eq!(
        t.node.status("counter").await.unwrap().previous_version,
        None
    );
    assert!(t.node.rollback("counter", false).await.is_err());
    t.stop().await;
}

/// The invariant under load: while a client streams `add 1` requests over 8 conversations
/// (64 in flight, and a `get` every 8th message), 100 swaps and rollbacks happen, then a
/// canary to 100 %, then a canary of a regressed release that rolls itself back. Every
/// request gets exactly one reply, the replies count 1, 2, 3, … with no gap, repeat or
/// reordering (so each conversation's order is kept too), and the final count equals
/// what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_100_swaps_and_rollbacks_and_two_canaries_lose_duplicate_and_reorder_nothing() {
    let t = TestNode::start().await;
    t.load("counter", "counter", "").await;
    let bus = t.node.bus.clone();
    let client = tokio::spawn(async move {
        let mut replies = bus.subscribe("_INBOX.load.>", 1024).await.unwrap();
        let send = |i: u64| {
            let bus = bus.clone();
            async move {
                let conversation = ("Conversation-Id".to_string(), format!("c-{}", i % 8));
                let msg = BusMessage {
                    reply_to: Some(format!("_INBOX.load.{i}")),
                    headers: vec![conversation.clone()],
                    ..BusMessage::new("agent.to.counter.cmd", "add 1")
                };
                bus.publish(msg).await.unwrap();
                if i.is_multiple_of(8) {
                    let get = BusMessage {
                        reply_to: Some(format!("_INBOX.gets.{i}")),
                        headers: vec![conversation],
                        ..BusMessage::new("agent.to.counter.cmd", "get")
                    };
                    bus.publish(get).await.unwrap();
                }
            }
        };
        let (window, mut sent, mut expected) = (64u64, 0u64, 1u64);
        while sent < window {
            send(sent).await;
            sent += 1;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut stop_at: Option<u64> = None;
        loop {
            let reply = tokio::time::timeout_at(deadline, replies.next())
                .await
                .expect("replies keep coming")
                .unwrap();
            let count: u64 = std::str::from_utf8(&reply.payload)
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                count, expected,
                "replies count up one by one: nothing lost, repeated or reordered"
            );
            expected += 1;
            if stop_at.is_none() && UPGRADES_DONE.load(std::sync::atomic::Ordering::Acquire) {
                stop_at = Some(sent);
            }
            if stop_at.is_some_and(|s| expected > s) {
                return sent;
            }
            if stop_at.is_none() {
                send(sent).await;
                sent += 1;
            }
        }
    });
    let (v1, v2) = (plugin("counter"), plugin("counter_v2"));
    for _ in 0..50 {
        t.node.upgrade("counter", &v2).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        t.node.rollback("counter", false).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    t.node.upgrade("counter", &v1).await.unwrap();

    let steps = |s: &str| RolloutPlan::from_args("--steps", Some(s), Some("300ms"), &[]).unwrap();
    let canary = t
        .node
        .start_canary("counter", &v2, steps("10,25,50,100"))
        .await
        .unwrap();
    let outcome = canary.outcome().await.unwrap();
    assert!(outcome.completed, "{}", outcome.text);
    let regressed = t
        .node
        .start_canary("counter", &plugin("counter_regressed"), steps("50,100"))
        .await
        .unwrap();
    let outcome = regressed.outcome().await.unwrap();
    if client.is_finished() {
        let s = t.node.status("counter").await.unwrap();
        eprintln!(
            "the client stopped early: traps {} restarts {} last error {:?}; events {:#?}",
            s.traps, s.restarts, s.last_error, s.events
        );
    }
    assert!(
        !outcome.completed && outcome.text.contains("automatic rollback"),
        "{}",
        outcome.text
    );
    UPGRADES_DONE.store(true, std::sync::atomic::Ordering::Release);
    let sent = client.await.unwrap();
    eprintln!("{sent} messages streamed through 101 swaps and rollbacks and two canaries");
    assert!(
        sent > 200,
        "the stream kept flowing during the upgrades ({sent} messages)"
    );
    assert_eq!(t.ask("agent.to.counter.cmd", "get").await, sent.to_string());
    let status = t.node.status("counter").await.unwrap();
    assert_eq!(
        status.version, "0.2.0",
        "the rolled-back canary left v0.2.0"
    );
    assert_eq!(status.traps, 0);
    t.stop().await;
}

static UPGRADES_DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[tokio::test]
async fn the_old_version_is_retired_when_the_rollback_window_closes() {
    let t = TestNode::start_with(|c| c.node.rollback_window_secs = 1).await;
    counter_with(&t, "counter", &[3]).await;
    t.node
        .upgrade("counter", &plugin("counter_v2"))
        .await
        .unwrap();
    assert_eq!(
        t.node
            .status("counter")
            .await
            .unwrap()
            .previous_version
            .as_deref(),
        Some("0.1.0")
    );
    // The window is 1 s; a loaded machine may close it a little late, never early.
    let retired = async || {
        let status = t.node.status("counter").await.unwrap();
        status.previous_version.is_none()
    };
    assert!(
        support::eventually(Duration::from_secs(10), retired).await,
        "the old version retired within 10 s"
    );
    let status = t.node.status("counter").await.unwrap();
    assert!(
        status
            .events
            .iter()
            .any(|e| e.text.contains("rollback window closed")),
        "{:?}",
        status.events
    );
    assert!(t.node.rollback("counter", false).await.is_err());
    assert_eq!(t.ask("agent.to.counter.cmd", "get").await, "3");
    t.stop().await;
}
