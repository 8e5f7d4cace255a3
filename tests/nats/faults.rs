//! Faults on NATS with durable agents: the server restarting under load, the host killed
//! with SIGKILL mid-stream, an oversized message. Each is counted, not assumed.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;

use super::durable::{ask, durable_manifest, durable_node, COUNTER_ID, PROBE_ID};
use super::nats_server::NatsServer;
use crate::support::{plugin, NodeProcess};

const TALLY_ID: &str = "01936f11-4ea2-7000-8000-0000000000c3";

/// Messages stored in the stream on `subject`.
async fn stored_on(client: &async_nats::Client, subject: &str) -> u64 {
    let js = jetstream::new(client.clone());
    let stream = js.get_stream("AGENT_MESSAGES").await.unwrap();
    let mut subjects = stream.info_with_subjects(subject).await.unwrap();
    let mut total = 0;
    while let Some((_, n)) = futures::TryStreamExt::try_next(&mut subjects)
        .await
        .unwrap()
    {
        total += n as u64;
    }
    total
}

/// Publishes `n` messages to the tally agent from a client of its own on `url`, 2 ms apart,
/// each with its own `Nats-Msg-Id`; a publish the client cannot hand over (its server is
/// away) is left out, and is not in the stream to be counted against the agent.
pub async fn publish_to_tally(url: String, n: usize) {
    let client = async_nats::connect(url).await.unwrap();
    for i in 0..n {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("m{i}").as_str());
        let _ = client
            .publish_with_headers("agent.to.tally.rec", headers, format!("m{i}").into())
            .await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = client.flush().await;
}

/// The `{distinct} {repeats}` report of the tally agent.
async fn tally_report(client: &async_nats::Client) -> (u64, u64) {
    let text = ask(client, "agent.to.tally.report", "report").await;
    let (distinct, repeats) = text.split_once(' ').expect("'{distinct} {repeats}'");
    (distinct.parse().unwrap(), repeats.parse().unwrap())
}

#[tokio::test]
async fn when_nats_restarts_under_load_a_durable_agent_loses_and_repeats_nothing_and_core_agents_resume(
) {
    let Some(mut server) = NatsServer::start("nats restart with durable agents") else {
        return;
    };
    let t = durable_node(&server, |_| {}).await;
    t.load("tally", "tally", &durable_manifest("tally", TALLY_ID, ""))
        .await;
    t.load("echo", "echo", "").await;

    // A publisher on its own connection, each message with its own Nats-Msg-Id, through
    // the restart (what the client could not hand over while the server was away is not
    // in the stream, and is not counted against the agent).
    const N: usize = 1500;
    let publisher = tokio::spawn(publish_to_tally(server.url(), N));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let server_back = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    });
    publisher.await.unwrap();
    let server = server_back.await.unwrap();

    let client = async_nats::connect(server.url()).await.unwrap();
    let stored = stored_on(&client, "agent.to.tally.rec").await;
    assert!(
        stored > N as u64 / 3,
        "most messages reached the stream ({stored} of {N})"
    );
    // Everything stored reaches the agent once, redeliveries after the restart included.
    let settled = async {
        loop {
            let (distinct, repeats) = tally_report(&client).await;
            assert_eq!(repeats, 0, "a message was handed to the agent twice");
            if distinct == stored {
                return;
            }
            assert!(distinct < stored, "{distinct} handled of {stored} stored");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), settled)
        .await
        .unwrap_or_else(|_| panic!("the tally agent did not reach {stored} messages in 30 s"));
    // Redeliveries of anything it acked while the server was away change nothing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(tally_report(&client).await, (stored, 0));
    eprintln!("{stored} of {N} published messages stored; each handled exactly once");

    // Core agents resume by themselves.
    assert_eq!(ask(&client, "agent.to.echo.x", "after").await, "after");
    t.stop().await;
}

#[tokio::test]
async fn after_the_host_is_killed_mid_stream_its_unacknowledged_messages_are_redelivered() {
    let Some(server) = NatsServer::start("nats host SIGKILL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = format!(
        "[agent]\nname = \"probe\"\nid = \"{PROBE_ID}\"\ncomponent = {:?}\n[subscriptions]\ndurable = true\n",
        plugin("probe").display().to_string()
    );
    std::fs::write(dir.path().join("probe.toml"), manifest).unwrap();
    let config = format!(
        "[nats]\nurl = \"{}\"\nack_wait_ms = 1000\n[http]\nlisten = \"127.0.0.1:0\"\n[[agents]]\nmanifest = \"probe.toml\"\n",
        server.url()
    );
    let mut node = NodeProcess::start_in(dir, &config);

    let client = async_nats::connect(server.url()).await.unwrap();
    const N: u64 = 400;
    for i in 0..N {
        client
            .publish("agent.to.probe.cmd", format!("kv-set m{i:03} x").into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();

    // Kill it while it has acked some and holds more unacknowledged.
    let js = jetstream::new(client.clone());
    let stream = js.get_stream("AGENT_MESSAGES").await.unwrap();
    let mut consumer: jetstream::consumer::PullConsumer = stream
        .get_consumer(&format!("agent-{PROBE_ID}-legacy"))
        .await
        .unwrap();
    let at_kill = async {
        loop {
            let info = consumer.info().await.unwrap().clone();
            if info.ack_floor.stream_sequence >= 20 && info.num_ack_pending > 0 {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let at_kill = tokio::time::timeout(Duration::from_secs(30), at_kill)
        .await
        .expect("the agent starts acking within 30 s");
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    let acked_before = at_kill.ack_floor.consumer_sequence;
    assert!(
        acked_before < N,
        "the host was killed mid-stream ({acked_before} of {N} acked)"
    );

    // The same node, restarted on the same data dir and config, resumes the consumer.
    let dir = std::mem::replace(&mut node.dir, tempfile::tempdir().unwrap());
    drop(node);
    let node = NodeProcess::start_in(dir, &config);
    let done = async {
        loop {
            let info = consumer.info().await.unwrap().clone();
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let after = tokio::time::timeout(Duration::from_secs(30), done)
        .await
        .expect("the restarted host works through the backlog within 30 s");
    // Every delivery takes a consumer sequence number; the stream holds only this agent's
    // messages, so deliveries beyond the stream sequence are redeliveries.
    let redelivered = after.delivered.consumer_sequence - after.delivered.stream_sequence;
    assert!(
        redelivered > 0,
        "messages handed to the killed host and not acked were redelivered: {after:?}"
    );
    let keys = ask(&client, "agent.to.probe.cmd", "kv-list m").await;
    assert_eq!(
        keys.split(',').count() as u64,
        N,
        "every message was handled (each wrote its key)"
    );
    eprintln!(
        "killed with {acked_before} of {N} acked and {} unacknowledged; {} redelivered after the restart",
        at_kill.num_ack_pending, redelivered
    );
    assert!(node.stop().success());
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_refused_to_its_sender_and_a_durable_agent_carries_on() {
    let Some(server) = NatsServer::start("nats durable oversize") else {
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
    let big = vec![b'x'; 2 << 20];

    let err = t
        .node
        .send(
            agent_host::bus::BusMessage::new("agent.to.counter.add", big.clone()),
            None,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("2097152 bytes"), "{err}");
    assert!(err.contains("at most 1048576"), "{err}");
    let plain = client
        .publish("agent.to.counter.add", big.into())
        .await
        .unwrap_err()
        .to_string();
    assert!(plain.contains("payload"), "{plain}");

    client
        .publish("agent.to.counter.add", "add 2".into())
        .await
        .unwrap();
    assert_eq!(ask(&client, "agent.to.counter.get", "get").await, "2");
    assert_eq!(stored_on(&client, "agent.to.counter.add").await, 1);
    t.stop().await;
}
