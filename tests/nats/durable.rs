//! Durable delivery (`[subscriptions] durable = true`): a durable agent reads its messages
//! from the JetStream stream through its own consumers, acks only after `handle` returned Ok,
//! keeps its backlog while it is away, and still answers requests from any NATS client.

use std::time::Duration;

use agent_host::config::NodeConfig;
use async_nats::jetstream;
use futures::StreamExt;

use super::nats_server::NatsServer;
use super::ollama::FakeOllama;
use super::transport::round_trip;
use crate::support::{plugin, TestNode};

pub const COUNTER_ID: &str = "01936f11-4ea2-7000-8000-0000000000c1";
pub const PROBE_ID: &str = "01936f11-4ea2-7000-8000-0000000000c2";

/// A durable manifest for agent `name` with a fixed id (its consumers are named after it).
pub fn durable_manifest(name: &str, id: &str, extra: &str) -> String {
    format!("[agent]\nname = \"{name}\"\nid = \"{id}\"\n[subscriptions]\ndurable = true\n{extra}")
}

/// A node on `server` with durable settings short enough for tests.
pub async fn durable_node(server: &NatsServer, tweak: impl FnOnce(&mut NodeConfig)) -> TestNode {
    let url = server.url();
    TestNode::start_with(move |c| {
        c.nats.url = Some(url);
        c.nats.ack_wait_ms = 1000;
        c.nats.retry_backoff_ms = 50;
        tweak(c);
    })
    .await
}

/// Requests `payload` on `subject` from a plain NATS client; the reply as text. Generous
/// timeout: the suite runs a dozen servers and nodes at once on a shared 2-core machine, and
/// a pull request the server lost is only re-opened after a missed heartbeat (~10 s).
pub async fn ask(client: &async_nats::Client, subject: &str, payload: &str) -> String {
    let reply = tokio::time::timeout(
        Duration::from_secs(30),
        client.send_request(
            subject.to_string(),
            async_nats::Request::new()
                .payload(payload.to_string().into())
                .timeout(Some(Duration::from_secs(30))),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("a reply to {payload:?} on {subject} within 30 s"))
    .unwrap_or_else(|e| panic!("request {payload:?} on {subject}: {e}"));
    String::from_utf8_lossy(&reply.payload).into_owned()
}

/// Publishes `n` plain messages (no reply subject) to agent `name`'s inbox and flushes.
async fn publish_plain(client: &async_nats::Client, name: &str, n: usize) {
    for i in 0..n {
        client
            .publish(format!("agent.to.{name}.x"), format!("plain {i}").into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
}

/// Agent `name`'s durable pairing counters: stream copies whose core copy came while they
/// were held for it, and those handled without one after the whole wait.
pub fn pairing_counts(t: &TestNode, name: &str) -> (u64, u64) {
    let text = t.node.metrics.encode();
    let count = |metric: &str| {
        let series = format!("agent_host_{metric}_total{{agent=\"{name}\",cluster=\"default\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in the metrics:\n{text}"))
    };
    (count("durable_paired_late"), count("durable_unpaired"))
}

#[tokio::test]
async fn a_durable_agent_answers_plain_clients_and_gets_what_was_sent_while_it_was_unloaded() {
    let Some(server) = NatsServer::start("nats durable backlog") else {
        return;
    };
    let t = durable_node(&server, |_| {}).await;
    let manifest = durable_manifest("counter", COUNTER_ID, "");
    let loaded = t.load("counter", "counter", &manifest).await;
    assert!(
        loaded.subscriptions.iter().any(|s| s.contains("durable")),
        "{:?}",
        loaded.subscriptions
    );
    t.load("echo", "echo", "").await;
    let client = async_nats::connect(server.url()).await.unwrap();

    // The stream exists as durable delivery needs it.
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream("AGENT_MESSAGES").await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert!(
        config.no_ack,
        "core requests must get agents' replies, not stream acks"
    );
    assert_eq!(config.subjects, ["agent.>"]);
    assert_eq!(config.duplicate_window, Duration::from_secs(120));

    // Request/reply with the durable agent from a plain client, and with a core agent: the
    // stream never answers in the agent's place.
    for _ in 0..3 {
        client
            .publish("agent.to.counter.add", "add 1".into())
            .await
            .unwrap();
    }
    assert_eq!(ask(&client, "agent.to.counter.get", "get").await, "3");
    assert_eq!(ask(&client, "agent.to.echo.hi", "core").await, "core");

    // While it is unloaded, its messages wait in the stream for it.
    t.node.unload("counter").await.unwrap();
    for _ in 0..2 {
        client
            .publish("agent.to.counter.add", "add 1".into())
            .await
            .unwrap();
    }
    round_trip(&client).await;
    t.load("counter", "counter", &manifest).await;
    assert_eq!(ask(&client, "agent.to.counter.get", "get").await, "5");
    t.stop().await;
}

#[tokio::test]
async fn a_message_whose_handle_keeps_failing_is_retried_then_dead_lettered_with_the_error() {
    let Some(server) = NatsServer::start("nats durable dead letter") else {
        return;
    };
    let t = durable_node(&server, |c| c.nats.max_deliver = 3).await;
    t.load("probe", "probe", &durable_manifest("probe", PROBE_ID, ""))
        .await;
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut dlq = client.subscribe("agent.dlq.probe").await.unwrap();
    round_trip(&client).await;

    client
        .publish("agent.to.probe.cmd", "fail".into())
        .await
        .unwrap();
    let dead = tokio::time::timeout(Duration::from_secs(10), dlq.next())
        .await
        .expect("dead-lettered within 10 s")
        .unwrap();
    assert_eq!(&dead.payload[..], b"fail");
    let headers = dead.headers.expect("headers on the dead letter");
    let error = headers
        .get("Agent-Error")
        .expect("the error header")
        .as_str();
    assert!(error.contains("probe was told to fail"), "{error}");
    assert!(error.contains("each of 3 deliveries"), "{error}");
    assert_eq!(
        headers.get("Agent-Original-Subject").unwrap().as_str(),
        "agent.to.probe.cmd"
    );
    // Three attempts, then nothing more; the agent carries on.
    assert_eq!(ask(&client, "agent.to.probe.cmd", "seen").await, "4");
    let status = t.node.status("probe").await.unwrap();
    assert_eq!((status.errors, status.dead_lettered), (3, 1), "{status:?}");
    t.stop().await;
}

#[tokio::test]
async fn progress_acks_keep_a_handle_longer_than_ack_wait_from_being_redelivered() {
    let Some(server) = NatsServer::start("nats durable progress") else {
        return;
    };
    let fake = FakeOllama::start().await;
    // A handle over twice ack_wait; progress acks every third of it leave a stalled machine
    // about a second before the server would redeliver.
    fake.set(|s| s.delay = Duration::from_millis(4_000));
    let url = fake.url.clone();
    let t = durable_node(&server, move |c| {
        c.nats.ack_wait_ms = 1_500;
        c.llm.ollama_url = url;
    })
    .await;
    let grants = "[llm]\nmodels = [\"slow\"]\n[limits]\ncpu_ms_per_message = 200\n";
    t.load(
        "probe",
        "probe",
        &durable_manifest("probe", PROBE_ID, grants),
    )
    .await;
    let client = async_nats::connect(server.url()).await.unwrap();
    let answer = ask(&client, "agent.to.probe.cmd", "chat slow think hard").await;
    assert!(answer.contains("think hard"), "{answer}");

    let js = jetstream::new(client.clone());
    let stream = js.get_stream("AGENT_MESSAGES").await.unwrap();
    let mut consumer: jetstream::consumer::PullConsumer = stream
        .get_consumer(&format!("agent-{PROBE_ID}-legacy"))
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(
        info.num_redelivered, 0,
        "a 4 s handle with ack_wait 1.5 s was not redelivered"
    );
    assert_eq!(info.num_ack_pending, 0, "and it was acked");
    assert_eq!(fake.requests(), 1, "the LLM was called once");
    t.stop().await;
}

#[tokio::test]
async fn upgrading_a_durable_agent_mid_stream_loses_and_repeats_nothing() {
    let Some(server) = NatsServer::start("nats durable upgrade") else {
        return;
    };
    let t = durable_node(&server, |_| {}).await;
    t.load(
        "counter",
        "counter",
        &durable_manifest("counter", COUNTER_ID, ""),
    )
    .await;
    let client = async_nats::connect(server.url()).await.unwrap();
    const N: usize = 400;
    let publisher = {
        let client = client.clone();
        tokio::spawn(async move {
            for _ in 0..N {
                client
                    .publish("agent.to.counter.add", "add 1".into())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            round_trip(&client).await;
        })
    };
    t.handled_at_least("counter", 50).await;
    let report = t
        .node
        .upgrade("counter", &plugin("counter_v2"))
        .await
        .expect("the upgrade succeeds mid-stream");
    assert!(report.to_version.contains('2'), "{report:?}");
    publisher.await.unwrap();
    assert_eq!(
        ask(&client, "agent.to.counter.get", "get").await,
        N.to_string()
    );
    t.stop().await;
}

#[tokio::test]
async fn a_durable_manifest_on_the_embedded_bus_is_refused_naming_the_field_and_the_fix() {
    let t = TestNode::start().await;
    let err = t
        .try_load(
            "counter",
            "counter",
            &durable_manifest("counter", COUNTER_ID, ""),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("counter.toml"), "{err}");
    assert!(err.contains("field subscriptions.durable"), "{err}");
    assert!(err.contains("NATS_URL"), "{err}");
    assert!(t.node.list().await.is_empty());
    t.stop().await;
}

#[tokio::test]
async fn concurrent_requests_to_a_durable_agent_each_get_their_own_reply() {
    let Some(server) = NatsServer::start("nats durable concurrent requests") else {
        return;
    };
    let t = durable_node(&server, |_| {}).await;
    let id = "01936f11-4ea2-7000-8000-0000000000c4";
    t.load("echo", "echo", &durable_manifest("echo", id, ""))
        .await;
    let client = async_nats::connect(server.url()).await.unwrap();
    // Distinct payloads pair with their own requests; equal ones pair first in, first out.
    let requests = (0..100).map(|i| {
        let client = client.clone();
        let payload = if i % 2 == 0 {
            format!("request {i}")
        } else {
            "same".to_string()
        };
        tokio::spawn(async move {
            let reply = ask(&client, "agent.to.echo.x", &payload).await;
            (payload, reply)
        })
    });
    for (payload, reply) in futures::future::join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
    {
        assert_eq!(reply, payload);
    }
    t.handled_at_least("echo", 100).await;
    assert_eq!(t.node.status("echo").await.unwrap().handled, 100);
    t.stop().await;
}

/// A node whose durable agents wait `wait` for their core copies, inside an `ack_wait` long
/// enough for it (a held message is not acknowledged yet), and the durable echo `name`
/// (agent id `id`) loaded on it; with its manifest, for reloads.
async fn echo_with_pairing_wait(
    server: &NatsServer,
    wait: Duration,
    name: &str,
    id: &str,
) -> (TestNode, String) {
    let t = durable_node(server, |c| {
        c.nats.request_pairing_wait_ms = wait.as_millis() as u64;
        c.nats.ack_wait_ms = 30_000;
    })
    .await;
    let manifest = durable_manifest(name, id, "");
    t.load("echo", name, &manifest).await;
    (t, manifest)
}

/// Stores `messages` (payloads, each with its `Nats-Msg-Id` if given) for durable agent
/// `name` while it is unloaded, so that no core copy of them reaches the node, and loads
/// the agent again: their stream copies then come fresh and alone, as a request's stream
/// copy that overtook its core copy does in a cluster.
async fn store_while_unloaded(
    t: &TestNode,
    client: &async_nats::Client,
    name: &str,
    manifest: &str,
    messages: impl IntoIterator<Item = (String, Option<String>)>,
) {
    t.node.unload(name).await.unwrap();
    for (payload, id) in messages {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = id {
            headers.insert("Nats-Msg-Id", id.as_str());
        }
        client
            .publish_with_headers(format!("agent.to.{name}.x"), headers, payload.into())
            .await
            .unwrap();
    }
    round_trip(client).await;
    t.load("echo", name, manifest).await;
}

/// In a cluster a request's stream copy can reach the node before its core copy (the stream
/// leader is another server). Staged on one server: the message is stored while the agent
/// is unloaded (no core copy reaches the node), the agent is loaded again, and then the same
/// message, with the same `Nats-Msg-Id`, is requested by a plain client (the stream drops
/// the request's own stream copy as a duplicate). With a pairing wait the fresh stream copy
/// waits for its core copy and the requester gets its reply; with 0 it is handled at once
/// and the reply goes nowhere. Either way the agent handles the message once. Plain
/// publishes are never held: their core copies tell the node that no request is coming.
#[tokio::test]
async fn a_request_whose_stream_copy_came_first_is_answered_within_the_pairing_wait() {
    let Some(server) = NatsServer::start("nats durable pairing wait") else {
        return;
    };
    let client = async_nats::connect(server.url()).await.unwrap();
    let cases = [
        (
            "echo-waits",
            "01936f11-4ea2-7000-8000-0000000000d1",
            6000,
            true,
        ),
        (
            "echo-at-once",
            "01936f11-4ea2-7000-8000-0000000000d2",
            0,
            false,
        ),
    ];
    for (name, id, wait_ms, answered) in cases {
        let (t, manifest) =
            echo_with_pairing_wait(&server, Duration::from_millis(wait_ms), name, id).await;
        let msg_id = format!("pairing-{name}");
        let stored = [("first".to_string(), Some(msg_id.clone()))];
        store_while_unloaded(&t, &client, name, &manifest, stored).await;
        if answered {
            // Time for the stream copy to be read and held for its core copy.
            tokio::time::sleep(Duration::from_millis(300)).await;
        } else {
            // Without a wait the stream copy is handled at once: the request must come after.
            t.handled_at_least(name, 1).await;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        let reply = client
            .send_request(
                format!("agent.to.{name}.x"),
                async_nats::Request::new()
                    .headers(headers)
                    .payload("first".into())
                    .timeout(Some(Duration::from_secs(2))),
            )
            .await;
        match (answered, reply) {
            (true, Ok(reply)) => assert_eq!(&reply.payload[..], b"first", "{name}"),
            (false, Err(e)) => assert_eq!(
                e.kind(),
                async_nats::RequestErrorKind::TimedOut,
                "{name}: {e}"
            ),
            (true, Err(e)) => panic!("{name}: the request was not answered: {e}"),
            (false, Ok(_)) => {
                panic!("{name}: answered without a wait; this test no longer shows the race")
            }
        }
        t.handled_at_least(name, 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            t.node.status(name).await.unwrap().handled,
            1,
            "{name}: handled once"
        );
        let late = if answered { 1 } else { 0 };
        assert_eq!(
            pairing_counts(&t, name),
            (late, 0),
            "{name}: paired late, unpaired"
        );
        // Plain publishes are not held for a request: held, 100 of them would take at least
        // two pull batches of the 6 s wait.
        let started = std::time::Instant::now();
        publish_plain(&client, name, 100).await;
        t.handled_at_least(name, 101).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name}: a burst of 100 plain publishes took {:?}",
            started.elapsed()
        );
        assert_eq!(
            pairing_counts(&t, name),
            (late, 0),
            "{name}: after the burst"
        );
        t.stop().await;
    }
}

/// What was stored while the agent was away longer than the pairing wait is a backlog: its
/// core copies came and went long ago, so it is handled at once, not held for them.
#[tokio::test]
async fn a_backlog_older_than_the_pairing_wait_is_not_held() {
    let Some(server) = NatsServer::start("nats durable old backlog") else {
        return;
    };
    let client = async_nats::connect(server.url()).await.unwrap();
    let wait = Duration::from_secs(4);
    let name = "echo-backlog";
    let (t, manifest) =
        echo_with_pairing_wait(&server, wait, name, "01936f11-4ea2-7000-8000-0000000000d5").await;
    t.node.unload(name).await.unwrap();
    publish_plain(&client, name, 20).await;
    tokio::time::sleep(wait + Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    t.load("echo", name, &manifest).await;
    t.handled_at_least(name, 20).await;
    assert!(
        started.elapsed() < wait - Duration::from_millis(500),
        "the old backlog was held for its core copies: {:?}",
        started.elapsed()
    );
    assert_eq!(pairing_counts(&t, name), (0, 0));
    t.stop().await;
}

/// A fresh stream copy whose core copy never comes is handled once the pairing wait is up,
/// and counted: the operator's sign that requests may be going unanswered.
#[tokio::test]
async fn fresh_copies_whose_core_copy_never_comes_are_handled_after_the_wait_and_counted() {
    let Some(server) = NatsServer::start("nats durable unpaired") else {
        return;
    };
    let client = async_nats::connect(server.url()).await.unwrap();
    let wait = Duration::from_secs(3);
    let name = "echo-unpaired";
    let (t, manifest) =
        echo_with_pairing_wait(&server, wait, name, "01936f11-4ea2-7000-8000-0000000000d6").await;
    let started = std::time::Instant::now();
    let stored = ["a", "b"].map(|payload| (payload.to_string(), None));
    store_while_unloaded(&t, &client, name, &manifest, stored).await;
    t.handled_at_least(name, 2).await;
    assert!(
        started.elapsed() >= wait - Duration::from_millis(100),
        "handled before the wait was up: {:?}",
        started.elapsed()
    );
    assert_eq!(pairing_counts(&t, name), (0, 2));
    t.stop().await;
}

/// Messages held for their core copies are handed back to the server when the agent stops,
/// so after a reload they come at once, not after `ack_wait` (30 s here).
#[tokio::test]
async fn messages_held_for_their_request_are_handed_back_when_the_agent_stops() {
    let Some(server) = NatsServer::start("nats durable held on stop") else {
        return;
    };
    let client = async_nats::connect(server.url()).await.unwrap();
    let name = "echo-held";
    let (t, manifest) = echo_with_pairing_wait(
        &server,
        Duration::from_secs(8),
        name,
        "01936f11-4ea2-7000-8000-0000000000d3",
    )
    .await;
    let stored = (0..5).map(|i| (format!("held {i}"), None));
    store_while_unloaded(&t, &client, name, &manifest, stored).await;
    // They reach the node fresh and without core copies, and wait there; the agent stops.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(t.node.status(name).await.unwrap().handled, 0);
    t.node.unload(name).await.unwrap();

    let started = std::time::Instant::now();
    t.load("echo", name, &manifest).await;
    t.handled_at_least(name, 5).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "came back after ack_wait, not at once: {:?}",
        started.elapsed()
    );
    t.stop().await;
}

/// A request whose first `handle` failed without replying is answered by its redelivery:
/// the node keeps the reply subject by stream sequence.
#[tokio::test]
async fn a_request_is_answered_by_its_redelivery_when_the_first_handle_failed() {
    let Some(server) = NatsServer::start("nats durable redelivered request") else {
        return;
    };
    let t = durable_node(&server, |_| {}).await;
    t.load("probe", "probe", &durable_manifest("probe", PROBE_ID, ""))
        .await;
    let client = async_nats::connect(server.url()).await.unwrap();
    assert_eq!(ask(&client, "agent.to.probe.cmd", "flaky").await, "steady");
    t.handled_at_least("probe", 1).await;
    let status = t.node.status("probe").await.unwrap();
    assert_eq!((status.errors, status.handled), (1, 1), "{status:?}");
    t.stop().await;
}
