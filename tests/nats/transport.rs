//! The NATS transport on its own: the same contract as the embedded bus (wildcards, one copy
//! per matching subscription, request/reply with headers, no responders, size limit, slow
//! consumers counted), on a real nats-server.

use std::time::Duration;

use agent_host::bus::{BusError, BusMessage, NatsBus, NatsOptions, Transport};
use futures::StreamExt;

use super::nats_server::NatsServer;

async fn connect(server: &NatsServer) -> NatsBus {
    NatsBus::connect(&NatsOptions::new(server.url()))
        .await
        .expect("connects to the test server")
}

/// Waits until the server has processed what `client` sent so far (its subscriptions):
/// `flush` only empties the socket, a request nobody serves is a real round trip.
pub async fn round_trip(client: &async_nats::Client) {
    let _ = client.request("test.round-trip", "".into()).await;
}

async fn next(sub: &mut agent_host::bus::Subscription) -> BusMessage {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a message within 5 s")
        .expect("the subscription is open")
}

#[tokio::test]
async fn wildcards_match_as_on_the_embedded_bus_and_each_subscription_gets_one_copy() {
    let Some(server) = NatsServer::start("nats transport wildcards") else {
        return;
    };
    let bus = connect(&server).await;
    let mut one_token = bus.subscribe("agent.*.echo.>", 16).await.unwrap();
    let mut tail = bus.subscribe("agent.>", 16).await.unwrap();
    let mut exact = bus.subscribe("agent.to.other.x", 16).await.unwrap();

    bus.publish(BusMessage::new("agent.to.echo.hello", "hi"))
        .await
        .unwrap();
    assert_eq!(next(&mut one_token).await.subject, "agent.to.echo.hello");
    assert_eq!(next(&mut tail).await.subject, "agent.to.echo.hello");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(one_token.try_next().is_none(), "one copy per subscription");
    assert!(tail.try_next().is_none(), "one copy per subscription");
    assert!(
        exact.try_next().is_none(),
        "a non-matching subscription hears nothing"
    );
}

#[tokio::test]
async fn a_request_across_two_connections_keeps_headers_both_ways() {
    let Some(server) = NatsServer::start("nats transport request headers") else {
        return;
    };
    let (node_a, node_b) = (connect(&server).await, connect(&server).await);
    let mut service = node_b.subscribe("agent.to.svc.>", 16).await.unwrap();
    let responder = tokio::spawn(async move {
        let m = next(&mut service).await;
        let reply = BusMessage::new(m.reply_to.clone().expect("a reply subject"), "pong")
            .with_header("Agent-Ref", "default.svc.1")
            .with_header("X-Echo", m.header("X-Trace").unwrap_or("none"));
        node_b.publish(reply).await.unwrap();
        m
    });
    let request = BusMessage::new("agent.to.svc.ping", "ping")
        .with_header("X-Trace", "t-1")
        .with_header("X-Many", "1")
        .with_header("X-Many", "2");
    let reply = node_a
        .request(request, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], b"pong");
    assert_eq!(reply.header("agent-ref"), Some("default.svc.1"));
    assert_eq!(reply.header("X-Echo"), Some("t-1"));
    let seen = responder.await.unwrap();
    let many: Vec<_> = seen.header_values("X-Many").collect();
    assert_eq!(many, ["1", "2"], "repeated headers keep their order");
}

#[tokio::test]
async fn no_responders_timeouts_and_oversized_messages_fail_as_on_the_embedded_bus() {
    let Some(server) = NatsServer::start("nats transport errors") else {
        return;
    };
    let bus = connect(&server).await;
    let err = bus
        .request(
            BusMessage::new("agent.to.nobody.x", "?"),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert_eq!(err, BusError::NoResponders("agent.to.nobody.x".into()));

    let _silent = bus.subscribe("agent.to.silent.>", 4).await.unwrap();
    let err = bus
        .request(
            BusMessage::new("agent.to.silent.x", "?"),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    assert_eq!(err, BusError::Timeout);

    let max = bus.max_payload();
    assert_eq!(max, 1024 * 1024, "the server's default max_payload");
    let err = bus
        .publish(BusMessage::new("agent.to.x.y", vec![0u8; max + 1]))
        .await
        .unwrap_err();
    assert_eq!(err, BusError::TooLarge { size: max + 1, max });
    assert!(
        err.to_string().contains("at most 1048576"),
        "says the limit: {err}"
    );
    // The connection is still fine afterwards.
    let mut sub = bus.subscribe("agent.to.x.>", 4).await.unwrap();
    bus.publish(BusMessage::new("agent.to.x.y", "small"))
        .await
        .unwrap();
    assert_eq!(&next(&mut sub).await.payload[..], b"small");
}

#[tokio::test]
async fn a_slow_subscriber_loses_new_messages_and_the_bus_counts_them() {
    let Some(server) = NatsServer::start("nats transport slow consumer") else {
        return;
    };
    let bus = connect(&server).await;
    let mut slow = bus.subscribe("load.>", 4).await.unwrap();
    let publisher = async_nats::connect(server.url()).await.unwrap();
    for n in 0..100 {
        publisher
            .publish(format!("load.{n}"), "x".into())
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    let all_counted =
        crate::support::eventually(Duration::from_secs(5), async || slow.dropped() == 96).await;
    assert!(all_counted, "dropped {} of 100", slow.dropped());
    assert_eq!(bus.dropped(), 96, "the bus-wide count includes them");
    let kept: Vec<String> = std::iter::from_fn(|| slow.try_next())
        .map(|m| m.subject)
        .collect();
    assert_eq!(
        kept,
        ["load.0", "load.1", "load.2", "load.3"],
        "the oldest are kept"
    );
}

#[tokio::test]
async fn dropping_a_subscription_unsubscribes_on_the_server() {
    let Some(server) = NatsServer::start("nats transport unsubscribe") else {
        return;
    };
    let bus = connect(&server).await;
    let sub = bus.subscribe("agent.to.gone.>", 4).await.unwrap();
    drop(sub);
    let gone = async {
        loop {
            let r = bus
                .request(
                    BusMessage::new("agent.to.gone.x", "?"),
                    Duration::from_millis(200),
                )
                .await;
            if r == Err(BusError::NoResponders("agent.to.gone.x".into())) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), gone)
        .await
        .expect("the server forgets the subscription");
}

#[tokio::test]
async fn an_unreachable_server_at_start_is_a_clear_error_naming_the_url() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let err = match NatsBus::connect(&NatsOptions::new(&url)).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("connected to a closed port"),
    };
    assert!(err.contains(&url), "names the URL: {err}");
    assert!(
        err.contains("check that nats-server is running"),
        "says what to check: {err}"
    );
    assert!(err.contains("NATS_URL"), "names the setting: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "fails within the connect timeout"
    );
}

#[tokio::test]
async fn a_plain_client_and_the_bus_see_the_same_subjects_and_headers() {
    let Some(server) = NatsServer::start("nats transport interop") else {
        return;
    };
    let bus = connect(&server).await;
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut watch = client.subscribe("agent.broadcast.>").await.unwrap();
    round_trip(&client).await;
    bus.publish(BusMessage::new("agent.broadcast.status", "up").with_header("Agent-Ref", "c.n.1"))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.subject.as_str(), "agent.broadcast.status");
    assert_eq!(
        got.headers.unwrap().get("Agent-Ref").map(|v| v.as_str()),
        Some("c.n.1")
    );
}
