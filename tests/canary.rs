//! Canary upgrades: an operator moves conversations to a new version in steps while health
//! gates compare it with the old one; a breach rolls back by itself; nothing is lost,
//! handled twice or reordered, and the agent keeps one consistent state throughout.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_host::agent::canary::share_bucket;
use agent_host::agent::plan::RolloutPlan;
use agent_host::bus::BusMessage;
use support::{plugin, TestNode};

const CMD: &str = "agent.to.counter.cmd";

fn plan(steps: &str, interval: &str, gates: &[&str]) -> RolloutPlan {
    let gates: Vec<String> = gates.iter().map(|g| g.to_string()).collect();
    RolloutPlan::from_args("--steps", Some(steps), Some(interval), &gates).unwrap()
}

fn in_conversation(conversation: &str, payload: &str, reply_to: String) -> BusMessage {
    BusMessage {
        reply_to: Some(reply_to),
        headers: vec![("Conversation-Id".into(), conversation.into())],
        ..BusMessage::new(CMD, payload.as_bytes().to_vec())
    }
}

/// What the client saw: the count each `add 1` was answered with, by conversation and
/// sequence number.
struct Streamed {
    sent: u64,
    replies: HashMap<u64, Vec<u64>>,
    conversations: u64,
}

impl Streamed {
    /// No message lost or handled twice, per-conversation order kept, and the counts are
    /// exactly 1..=sent: one consistent state across both versions.
    fn assert_exactly_once_in_order(&self) {
        let mut counts = Vec::with_capacity(self.sent as usize);
        for seq in 0..self.sent {
            let got = self.replies.get(&seq).map(Vec::as_slice).unwrap_or(&[]);
            assert_eq!(got.len(), 1, "request {seq} got {} replies", got.len());
            counts.push(got[0]);
        }
        for c in 0..self.conversations {
            let mine: Vec<u64> = (c..self.sent)
                .step_by(self.conversations as usize)
                .map(|s| self.replies[&s][0])
                .collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "conversation {c} was reordered: {mine:?}"
            );
        }
        counts.sort_unstable();
        let expected: Vec<u64> = (1..=self.sent).collect();
        assert!(
            counts == expected,
            "each add counted exactly once (first differences: {:?})",
            counts
                .iter()
                .zip(&expected)
                .filter(|(a, b)| a != b)
                .take(5)
                .collect::<Vec<_>>()
        );
    }
}

/// A client streaming `add 1` over `conversations` conversations with 64 requests in
/// flight, and a fire-and-forget `get` in the same conversation every `get_every` adds,
/// until `stop` is set; then it waits for every outstanding reply.
fn stream(
    t: &TestNode,
    conversations: u64,
    get_every: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Streamed> {
    let bus = t.node.bus.clone();
    tokio::spawn(async move {
        let mut replies_sub = bus.subscribe("_INBOX.canary.>", 4096).await.unwrap();
        let mut replies: HashMap<u64, Vec<u64>> = HashMap::new();
        let send = |seq: u64| {
            let bus = bus.clone();
            async move {
                let conv = format!("conversation-{}", seq % conversations);
                let add = in_conversation(
                    &conv,
                    "add 1",
                    format!("_INBOX.canary.{}.{seq}", seq % conversations),
                );
                bus.publish(add).await.unwrap();
                if get_every > 0 && seq.is_multiple_of(get_every) {
                    let get = in_conversation(&conv, "get", format!("_INBOX.probe.{seq}"));
                    bus.publish(get).await.unwrap();
                }
            }
        };
        let mut sent = 0u64;
        while sent < 64 {
            send(sent).await;
            sent += 1;
        }
        let mut received = 0u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while received < sent {
            let reply = tokio::time::timeout_at(deadline, replies_sub.next())
                .await
                .expect("replies keep coming")
                .unwrap();
            let seq: u64 = reply.subject.rsplit('.').next().unwrap().parse().unwrap();
            let count: u64 = std::str::from_utf8(&reply.payload)
                .unwrap()
                .parse()
                .unwrap();
            replies.entry(seq).or_default().push(count);
            received += 1;
            if !stop.load(Ordering::Acquire) {
                send(sent).await;
                sent += 1;
            }
        }
        // A duplicate would arrive after the last expected reply: give it a moment.
        while let Ok(Some(reply)) =
            tokio::time::timeout(Duration::from_millis(100), replies_sub.next()).await
        {
            let seq: u64 = reply.subject.rsplit('.').next().unwrap().parse().unwrap();
            replies.entry(seq).or_default().push(0);
        }
        Streamed {
            sent,
            replies,
            conversations,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_moves_conversations_in_steps_to_100_percent_under_load_with_one_consistent_state()
{
    let t = TestNode::start().await;
    t.load("counter", "counter", "").await;
    let stop = Arc::new(AtomicBool::new(false));
    let client = stream(&t, 8, 10, stop.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;

    let run = t
        .node
        .start_canary(
            "counter",
            &plugin("counter_v2"),
            plan("10,25,50,100", "400ms", &["error_rate<5%", "traps<1"]),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            run.started.from_version.as_str(),
            run.started.to_version.as_str()
        ),
        ("0.1.0", "0.2.0")
    );
    let mut seen_both = false;
    let mut percents = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Some(c) = t.node.status("counter").await.unwrap().canary else {
            break;
        };
        if percents.last() != Some(&c.percent) {
            percents.push(c.percent);
        }
        seen_both |= c.blue_messages > 0 && c.green_messages > 0 && c.switches > 0;
    }
    let outcome = run.outcome().await.unwrap();
    assert!(outcome.completed, "{}", outcome.text);
    assert!(outcome.text.contains("canary complete"), "{}", outcome.text);
    assert!(
        seen_both,
        "both versions served while the canary ran, handing the state across"
    );
    assert!(
        percents.windows(2).all(|w| w[0] < w[1]) && percents.len() >= 3,
        "steps only grow: {percents:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Release);
    let streamed = client.await.unwrap();
    let s = t.node.status("counter").await.unwrap();
    eprintln!(
        "{} adds streamed through the canary; traps {} restarts {} last error {:?}",
        streamed.sent, s.traps, s.restarts, s.last_error
    );
    streamed.assert_exactly_once_in_order();
    assert_eq!(t.ask(CMD, "get").await, streamed.sent.to_string());

    let status = t.node.status("counter").await.unwrap();
    assert_eq!(status.version, "0.2.0");
    assert_eq!(
        status.previous_version.as_deref(),
        Some("0.1.0"),
        "blue stays warm for the rollback window, as after a swap"
    );
    assert!(status.canary.is_none());
    assert_eq!((status.errors, status.traps), (0, 0));
    let events: Vec<&str> = status.events.iter().map(|e| e.text.as_str()).collect();
    for expected in [
        "canary v0.1.0 → v0.2.0 started: 10%",
        "canary step 10% → 25%",
        "canary step 25% → 50%",
        "canary step 50% → 100%",
        "canary complete: v0.2.0 serves every conversation",
    ] {
        assert!(
            events.iter().any(|e| e.contains(expected)),
            "{expected}: {events:#?}"
        );
    }
    let metrics = t.node.metrics.encode();
    assert!(
        metrics.contains(
            "agent_host_upgrade_events_total{agent=\"counter\",cluster=\"default\",event=\"canary_step\"} 3"
        ),
        "{}",
        metrics.lines().filter(|l| l.contains("upgrade")).collect::<Vec<_>>().join("\n")
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_whose_error_rate_breaches_its_gate_rolls_back_by_itself_losing_nothing() {
    let t = TestNode::start().await;
    t.load("counter", "counter", "").await;
    let stop = Arc::new(AtomicBool::new(false));
    // One `get` in 8 messages: the regressed release fails each one it serves.
    let client = stream(&t, 8, 8, stop.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;

    let run = t
        .node
        .start_canary(
            "counter",
            &plugin("counter_regressed"),
            plan("50,100", "400ms", &["error_rate<5%"]),
        )
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), run.outcome())
        .await
        .expect("the canary ends")
        .unwrap();
    assert!(!outcome.completed, "{}", outcome.text);
    assert!(
        outcome.text.contains("canary rolled back at 50%")
            && outcome.text.contains("automatic rollback")
            && outcome.text.contains("error_rate<5%: green"),
        "{}",
        outcome.text
    );
    stop.store(true, Ordering::Release);
    let streamed = client.await.unwrap();
    let status = t.node.status("counter").await.unwrap();
    eprintln!(
        "{} adds streamed; traps {} restarts {} last error {:?}; events {:#?}",
        streamed.sent, status.traps, status.restarts, status.last_error, status.events
    );
    streamed.assert_exactly_once_in_order();
    assert_eq!(t.ask(CMD, "get").await, streamed.sent.to_string());

    assert_eq!(
        (status.version.as_str(), status.previous_version.clone()),
        ("0.1.0", None)
    );
    assert!(status.canary.is_none());
    let events: Vec<&str> = status.events.iter().map(|e| e.text.as_str()).collect();
    assert!(
        events
            .iter()
            .filter(|e| e.starts_with("canary check at 50% failed"))
            .count()
            == 2,
        "two failed checks in a row roll back: {events:#?}"
    );
    t.stop().await;
}

#[tokio::test]
async fn a_conversation_stays_on_one_version_and_the_share_follows_its_hash() {
    let t = TestNode::start().await;
    t.load("counter", "counter", "").await;
    t.node
        .start_canary("counter", &plugin("counter_v2"), plan("50,100", "1h", &[]))
        .await
        .unwrap();
    // `stats` exists only in v0.2.0: a reply says the message was served by green.
    let mut replies = t.node.bus.subscribe("_INBOX.stats.>", 1024).await.unwrap();
    for round in 0..3 {
        for c in 0..40 {
            let msg = in_conversation(
                &format!("c-{c}"),
                "stats",
                format!("_INBOX.stats.{c}.{round}"),
            );
            t.publish(msg).await;
        }
    }
    // The conversations whose hash puts them on green (50 %), each owed 3 replies; wait for
    // all of them, then a quiet spell for any green should not have sent.
    let on_green = |c: u64| share_bucket(&format!("c-{c}")) < 50;
    let owed = 3 * (0..40).filter(|&c| on_green(c)).count();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (mut green, mut got): (HashMap<u64, u32>, usize) = (HashMap::new(), 0);
    loop {
        let wait = if got < owed {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        } else {
            Duration::from_millis(300)
        };
        let Ok(Some(reply)) = tokio::time::timeout(wait, replies.next()).await else {
            break;
        };
        let c: u64 = reply.subject.split('.').nth(2).unwrap().parse().unwrap();
        assert!(String::from_utf8_lossy(&reply.payload).contains("version=0.2.0"));
        *green.entry(c).or_default() += 1;
        got += 1;
    }
    for c in 0..40 {
        let expected = if on_green(c) { 3 } else { 0 };
        assert_eq!(
            green.get(&c).copied().unwrap_or(0),
            expected,
            "conversation c-{c}: all of its messages on one version, the one its hash picks"
        );
    }
    assert!(
        green.len() > 5 && green.len() < 35,
        "about half the conversations on green: {}",
        green.len()
    );
    t.stop().await;
}

#[tokio::test]
async fn rollback_and_promote_end_a_canary_on_command_and_a_second_upgrade_waits() {
    let t = TestNode::start().await;
    t.load("counter", "counter", "").await;
    let v2 = plugin("counter_v2");
    let run = t
        .node
        .start_canary("counter", &v2, plan("50,100", "1h", &[]))
        .await
        .unwrap();
    for c in 0..10 {
        let msg = BusMessage {
            headers: vec![("Conversation-Id".into(), format!("c-{c}"))],
            ..BusMessage::new(CMD, "add 2")
        };
        t.request(msg).await.unwrap();
    }
    let err = t
        .node
        .upgrade("counter", &v2)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("runs a canary") && err.contains("host rollback counter"),
        "{err}"
    );
    let err = t
        .node
        .start_canary("counter", &v2, plan("50,100", "1h", &[]))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("already runs a canary of v0.2.0 (50%"),
        "{err}"
    );

    let report = t.node.rollback("counter", false).await.unwrap();
    assert_eq!(
        (report.from_version.as_str(), report.to_version.as_str()),
        ("0.2.0", "0.1.0")
    );
    assert_eq!(report.lost_messages, 0);
    assert_eq!(t.ask(CMD, "get").await, "20", "one state, wherever it was");
    let outcome = run.outcome().await.unwrap();
    assert!(!outcome.completed && outcome.text.contains("rolled back by the operator"));
    assert!(t.node.status("counter").await.unwrap().canary.is_none());

    let run = t
        .node
        .start_canary("counter", &v2, plan("10,100", "1h", &[]))
        .await
        .unwrap();
    let text = t.node.promote("counter").await.unwrap();
    assert!(text.contains("v0.1.0 retired"), "{text}");
    assert!(run.outcome().await.unwrap().completed);
    let status = t.node.status("counter").await.unwrap();
    assert_eq!(
        (status.version.as_str(), status.previous_version.clone()),
        ("0.2.0", None)
    );
    assert_eq!(t.ask(CMD, "stats").await, "count=20 adds=0 version=0.2.0");
    t.stop().await;
}

#[tokio::test]
async fn a_canary_whose_new_version_refuses_the_state_is_refused_and_blue_is_untouched() {
    let t = TestNode::start().await;
    t.load("counter", "counter", "").await;
    t.ask(CMD, "add 4").await;
    let err = t
        .node
        .start_canary(
            "counter",
            &plugin("counter_broken"),
            plan("10,100", "1s", &[]),
        )
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("canary of v0.2.1 refused")
            && err.contains("cannot read the state of v0.1.0")
            && err.contains("v0.1.0 keeps serving, nothing lost"),
        "{err}"
    );
    assert_eq!(t.ask(CMD, "add 1").await, "5");
    let status = t.node.status("counter").await.unwrap();
    assert!(status.canary.is_none() && status.previous_version.is_none());
    t.stop().await;
}

#[tokio::test]
async fn a_canary_the_old_version_could_not_roll_back_from_is_refused() {
    let t = TestNode::start().await;
    // Blue is the release whose restore refuses everything: no conversation could move back.
    t.load("counter_broken", "counter", "").await;
    t.ask(CMD, "add 3").await;
    let err = t
        .node
        .start_canary("counter", &plugin("counter_v2"), plan("10,100", "1s", &[]))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("v0.2.1 cannot take the state of v0.2.0 back")
            && err.contains("--strategy swap"),
        "{err}"
    );
    assert_eq!(t.ask(CMD, "get").await, "3", "blue untouched");
    t.stop().await;
}

#[tokio::test]
async fn a_canary_of_a_component_of_another_world_is_refused() {
    let t = TestNode::start().await;
    t.load("counter", "counter", "").await;
    let bad = t.dir.path().join("bad.wasm");
    std::fs::write(&bad, wat::parse_str("(component)").unwrap()).unwrap();
    let err = t
        .node
        .start_canary("counter", &bad, plan("10,100", "1s", &[]))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("refused, the running version is untouched")
            && err.contains("agent:host/agent world"),
        "{err}"
    );
    assert!(t.node.status("counter").await.unwrap().canary.is_none());
    t.stop().await;
}
