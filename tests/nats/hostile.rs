//! The security review's holes where the NATS path differs from the embedded bus: agent-ref
//! subscriptions and durable consumers on a real server, JetStream's duplicate window, any
//! NATS client's headers, and the feeding task that fills agents' mailboxes.

use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;

use super::durable::{ask, durable_manifest, durable_node, PROBE_ID};
use super::nats_server::NatsServer;
use super::transport::round_trip;
use crate::support::eventually;

const ADMIN_ID: &str = "01936f11-4ea2-7000-8000-0000000000a1";
const HOSTILE_ID: &str = "01936f11-4ea2-7000-8000-0000000000a2";

/// A series of the node's metrics, as a number (0 when absent).
fn metric(t: &crate::support::TestNode, series: &str) -> u64 {
    let text = t.node.metrics.encode();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{series} "))?.parse().ok())
        .unwrap_or(0)
}

fn misaddressed(agent: &str) -> String {
    format!("agent_host_misaddressed_dropped_total{{agent=\"{agent}\",cluster=\"default\"}}")
}

#[tokio::test]
async fn forged_references_and_overloaded_headers_reach_no_agent_core_or_durable() {
    let Some(server) = NatsServer::start("nats forged references") else {
        return;
    };
    let t = durable_node(&server, |c| c.node.unified_subjects = true).await;
    let admin = format!("[agent]\nname = \"admin-u\"\nid = \"{ADMIN_ID}\"\n");
    t.load("probe", "admin-u", &admin).await;
    t.load("probe", "vault", &durable_manifest("vault", PROBE_ID, ""))
        .await;
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut dlq = client.subscribe("agent.dlq.>").await.unwrap();
    round_trip(&client).await;

    // A subject naming victim-u with the id of another agent: dropped by that agent's runner
    // on its core subscription and on its durable consumer alike (acked, never redelivered).
    for id in [ADMIN_ID, PROBE_ID] {
        let forged = format!("agent.default.victim-u.{id}.command.cmd");
        client.publish(forged, "seen".into()).await.unwrap();
    }
    client.flush().await.unwrap();
    let both = eventually(Duration::from_secs(20), async || {
        metric(&t, &misaddressed("admin-u")) == 1 && metric(&t, &misaddressed("vault")) == 1
    })
    .await;
    assert!(both, "{}", t.node.metrics.encode());
    let own = |name: &str, id: &str| format!("agent.default.{name}.{id}.command.cmd");
    assert_eq!(ask(&client, &own("admin-u", ADMIN_ID), "seen").await, "1");
    assert_eq!(ask(&client, &own("vault", PROBE_ID), "seen").await, "1");

    // More headers than agents accept, from a client the server lets through: dead-lettered
    // without reaching `handle`, the agent unharmed.
    for name in ["admin-u", "vault"] {
        let mut headers = HeaderMap::new();
        for i in 0..300 {
            headers.append(format!("X-{i}").as_str(), "v");
        }
        let subject = format!("agent.to.{name}.cmd");
        client
            .publish_with_headers(subject, headers, "seen".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        let dead = tokio::time::timeout(Duration::from_secs(20), dlq.next())
            .await
            .expect("dead-lettered within 20 s")
            .unwrap();
        assert_eq!(dead.subject.as_str(), format!("agent.dlq.{name}"));
        let why = dead.headers.as_ref().unwrap().get("Agent-Error").unwrap();
        assert!(
            why.as_str()
                .contains("the message has 300 headers; agents accept at most 128"),
            "{why:?}"
        );
        assert_eq!(
            ask(&client, &format!("agent.to.{name}.cmd"), "seen").await,
            "2"
        );
    }
    t.stop().await;
}

#[tokio::test]
async fn an_agent_cannot_make_the_stream_or_a_durable_agent_drop_a_clients_message_id() {
    let Some(server) = NatsServer::start("nats dedup poisoning") else {
        return;
    };
    let t = durable_node(&server, |_| {}).await;
    let hostile = format!(
        "[agent]\nname = \"hostile\"\nid = \"{HOSTILE_ID}\"\n[messaging]\npublish = [\"agent.to.vault.>\"]\n"
    );
    t.load("hostile", "hostile", &hostile).await;
    t.load("probe", "vault", &durable_manifest("vault", PROBE_ID, ""))
        .await;
    let client = async_nats::connect(server.url()).await.unwrap();

    // The attacker stores id "order-42" in the stream first ...
    let reply = ask(
        &client,
        "agent.to.hostile.x",
        "publish-id agent.to.vault.cmd order-42 seen",
    )
    .await;
    assert_eq!(reply, "publish-id: published order-42");
    assert_eq!(ask(&client, "agent.to.vault.cmd", "seen").await, "2");

    // ... and the client's own "order-42" is still stored, delivered and answered.
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "order-42");
    let request = async_nats::Request::new()
        .headers(headers)
        .payload("seen".into())
        .timeout(Some(Duration::from_secs(20)));
    let reply = client
        .send_request("agent.to.vault.cmd", request)
        .await
        .expect("the client's order-42 is answered");
    assert_eq!(String::from_utf8_lossy(&reply.payload), "3");
    t.stop().await;
}

#[tokio::test]
async fn a_busy_agents_mailbox_fed_from_nats_holds_mailbox_max_bytes() {
    let Some(server) = NatsServer::start("nats mailbox bytes") else {
        return;
    };
    const MIB: u64 = 1 << 20;
    const BIG: usize = 1_000_000;
    let url = server.url();
    let t = crate::support::TestNode::start_with(move |c| {
        c.nats.url = Some(url);
        c.node.mailbox_max_bytes = 4 * MIB;
    })
    .await;
    let manifest = "[agent]\nname = \"hostile\"\n[limits]\nmax_message_bytes = \"1MiB\"\n";
    t.load("hostile", "hostile", manifest).await;
    let client = async_nats::connect(server.url()).await.unwrap();
    client
        .publish("agent.to.hostile.x", "sleep 2000".into())
        .await
        .unwrap();
    for _ in 0..40 {
        let payload = vec![b'x'; BIG];
        client
            .publish("agent.to.hostile.big", payload.into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let mut peak = 0;
    let drained = eventually(Duration::from_secs(30), async || {
        let s = t.node.status("hostile").await.unwrap();
        peak = peak.max(s.queued_bytes);
        s.errors + s.dropped == 40
    })
    .await;
    let s = t.node.status("hostile").await.unwrap();
    assert!(drained, "every message handled or dropped: {s:?}");
    assert!(s.dropped >= 30, "{s:?}");
    assert!(peak <= 4 * MIB + BIG as u64, "queued at most {peak} bytes");
    assert_eq!((s.queued_bytes, t.node.mailboxes.used()), (0, 0));
    t.stop().await;
}
