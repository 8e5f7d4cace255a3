//! What a message or a mailbox may make the node hold is bounded in bytes, not only in
//! counts: headers weigh their framing and are counted, and an agent's mailbox, and all
//! mailboxes of a node together, hold at most so many bytes; whatever does not fit is
//! refused to its sender or dropped and counted, never queued without end.

use std::time::Duration;

use agent_host::bus::{BusMessage, MAX_HEADERS};

use super::{has, node_with, survived, HOSTILE, MACHINE};
use crate::support::{eventually, TestNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_counted_and_weigh_their_framing_even_when_empty() {
    let _shared = MACHINE.read().await;
    // Room to build many headers in the agent, and a small message limit.
    let roomy = HOSTILE
        .replace("memory = \"16MiB\"", "memory = \"64MiB\"")
        .replace(
            "max_message_bytes = \"64KiB\"",
            "max_message_bytes = \"512\"",
        );
    let (t, _) = node_with(&roomy, 1).await;
    let mut watch = t.node.bus.subscribe("hostile.h", 16).await.unwrap();

    let reply = survived(&t, "headers 20000 - hostile.h").await;
    has(
        &reply,
        &["headers: refused: invalid: the message has 20000 headers; at most 127 are allowed per message (the host adds one more, the sender's Agent-Ref)"],
    );
    let reply = survived(&t, &format!("headers {MAX_HEADERS} X-H hostile.h")).await;
    has(&reply, &["has 128 headers; at most 127"]);
    // 120 three-byte names with empty values: 360 bytes of text, but 852 on the wire.
    let reply = survived(&t, "headers 120 X-H hostile.h").await;
    has(
        &reply,
        &["headers: refused: invalid: payload is 12 bytes and its headers 852 bytes; at most 512 allowed ([limits] max_message_bytes)"],
    );
    let reply = survived(&t, "headers 3 - hostile.h").await;
    has(&reply, &["header name \"\" is not allowed"]);
    // What fits goes out whole, the stamp last.
    assert_eq!(
        survived(&t, "headers 50 X-H hostile.h").await,
        "headers: published 50"
    );
    let got = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.headers.len(), 51, "50 and the Agent-Ref stamp");

    // A client on the embedded bus is held to the same count as on NATS.
    let mut crowded = BusMessage::new("agent.to.echo.x", "hi");
    crowded.headers = (0..1000)
        .map(|i| (format!("X-{i}"), String::new()))
        .collect();
    let err = t.node.send(crowded, None).await.unwrap_err().to_string();
    has(&err, &["the message has 1000 headers; at most 128"]);
    assert_eq!(t.ask("agent.to.echo.x", "still here").await, "still here");
    t.stop().await;
}

/// A node whose agents' mailboxes hold `agent` bytes each and `node` bytes together.
async fn node_with_mailboxes(agent: u64, node: u64) -> TestNode {
    TestNode::start_with(|c| {
        c.node.mailbox_max_bytes = agent;
        c.node.mailboxes_max_bytes = node;
    })
    .await
}

const MIB: u64 = 1 << 20;
/// The size of each message of the floods below: under the bus's 1 MiB payload limit.
const BIG: usize = 1_000_000;

/// Keeps agent `name` (a hostile) busy in a host call for `ms`, without waiting for it.
async fn hold(t: &TestNode, name: &str, ms: u64) {
    t.publish(BusMessage::new(
        format!("agent.to.{name}.x"),
        format!("sleep {ms}"),
    ))
    .await;
}

/// Publishes `n` messages of [`BIG`] bytes to agent `name`.
async fn flood(t: &TestNode, name: &str, n: usize) {
    for _ in 0..n {
        let payload = vec![b'x'; BIG];
        t.publish(BusMessage::new(format!("agent.to.{name}.big"), payload))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_agents_mailbox_holds_mailbox_max_bytes_and_drops_the_rest_counted() {
    let _shared = MACHINE.read().await;
    let t = node_with_mailboxes(4 * MIB, 64 * MIB).await;
    let big_ok = HOSTILE.replace(
        "max_message_bytes = \"64KiB\"",
        "max_message_bytes = \"1MiB\"",
    );
    t.load("hostile", "hostile", &big_ok).await;
    hold(&t, "hostile", 2_000).await;
    flood(&t, "hostile", 40).await;

    let s = t.node.status("hostile").await.unwrap();
    let queued = s.queued_bytes;
    assert!(
        queued <= 4 * MIB + BIG as u64,
        "at most the mailbox and the one message that crossed it: {queued}"
    );
    assert!(s.dropped >= 34, "{} dropped", s.dropped);
    assert!(t.node.mailboxes.used() as u64 <= 4 * MIB + BIG as u64);

    // Once it drains, every message is accounted for: handled (with an error: not an
    // attack it knows) or dropped; the budgets are empty again.
    let all_seen = eventually(Duration::from_secs(20), async || {
        let s = t.node.status("hostile").await.unwrap();
        s.errors + s.dropped == 40
    })
    .await;
    let s = t.node.status("hostile").await.unwrap();
    assert!(all_seen, "{s:?}");
    assert_eq!((s.queued_bytes, t.node.mailboxes.used()), (0, 0));
    has(
        &t.node.metrics.encode(),
        &[&format!(
            "agent_host_mailbox_dropped_total{{agent=\"hostile\",cluster=\"default\"}} {}",
            s.dropped
        )],
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_mailboxes_together_hold_at_most_mailboxes_max_bytes() {
    let _shared = MACHINE.read().await;
    let t = node_with_mailboxes(8 * MIB, 10 * MIB).await;
    let big_ok = HOSTILE.replace(
        "max_message_bytes = \"64KiB\"",
        "max_message_bytes = \"1MiB\"",
    );
    for name in ["a", "b", "c"] {
        let manifest = big_ok.replace("name = \"hostile\"", &format!("name = \"{name}\""));
        t.load("hostile", name, &manifest).await;
        hold(&t, name, 2_000).await;
    }
    for name in ["a", "b", "c"] {
        flood(&t, name, 8).await;
    }
    let queued = t.node.mailboxes.used() as u64;
    assert!(
        queued <= 10 * MIB + 3 * BIG as u64,
        "the node's budget holds (each agent may cross it by one message): {queued}"
    );
    let mut dropped = 0;
    for name in ["a", "b", "c"] {
        dropped += t.node.status(name).await.unwrap().dropped;
    }
    assert!(dropped >= 24 - 13, "{dropped} dropped of 24");
    let drained = eventually(Duration::from_secs(20), async || {
        let mut seen = 0;
        for name in ["a", "b", "c"] {
            let s = t.node.status(name).await.unwrap();
            seen += s.errors + s.dropped;
        }
        seen == 24
    })
    .await;
    assert!(
        drained,
        "every message handled or dropped, none lost uncounted"
    );
    assert_eq!(t.node.mailboxes.used(), 0);
    t.stop().await;
}
