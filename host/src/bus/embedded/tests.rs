//! The embedded bus against the NATS contract of [`Transport`].

use std::time::{Duration, Instant};

use super::*;

fn msg(subject: &str) -> BusMessage {
    BusMessage::new(subject, subject.to_string())
}

/// Every message buffered on `sub`, by subject.
fn drain(sub: &mut Subscription) -> Vec<String> {
    std::iter::from_fn(|| sub.try_next())
        .map(|m| m.subject)
        .collect()
}

async fn publish_all(bus: &EmbeddedBus, subjects: &[&str]) {
    for s in subjects {
        bus.publish(msg(s)).await.unwrap();
    }
}

#[tokio::test]
async fn star_matches_exactly_one_token() {
    let bus = EmbeddedBus::default();
    let mut sub = bus.subscribe("agent.*.status", 16).await.unwrap();
    publish_all(
        &bus,
        &[
            "agent.a.status",
            "agent.a.b.status",
            "agent.status",
            "agent.b.status",
        ],
    )
    .await;
    assert_eq!(drain(&mut sub), ["agent.a.status", "agent.b.status"]);
}

#[tokio::test]
async fn greater_than_matches_one_or_more_trailing_tokens_but_not_zero() {
    let bus = EmbeddedBus::default();
    let mut sub = bus.subscribe("agent.to.echo.>", 16).await.unwrap();
    publish_all(
        &bus,
        &[
            "agent.to.echo",
            "agent.to.echo.hi",
            "agent.to.echo.a.b",
            "agent.to.x.hi",
        ],
    )
    .await;
    assert_eq!(drain(&mut sub), ["agent.to.echo.hi", "agent.to.echo.a.b"]);
}

#[tokio::test]
async fn a_literal_pattern_matches_only_that_subject() {
    let bus = EmbeddedBus::default();
    let mut sub = bus.subscribe("agent.to.echo", 16).await.unwrap();
    publish_all(&bus, &["agent.to.echo", "agent.to.echo.hi", "agent.to"]).await;
    assert_eq!(drain(&mut sub), ["agent.to.echo"]);
}

#[tokio::test]
async fn overlapping_subscriptions_each_get_a_copy() {
    let bus = EmbeddedBus::default();
    let mut legacy = bus.subscribe("agent.to.echo.>", 16).await.unwrap();
    let mut any = bus.subscribe("agent.*.echo.*", 16).await.unwrap();
    let mut same = bus.subscribe("agent.to.echo.>", 16).await.unwrap();
    assert_eq!(bus.publish_now(msg("agent.to.echo.hi")).unwrap(), 3);
    for sub in [&mut legacy, &mut any, &mut same] {
        assert_eq!(drain(sub), ["agent.to.echo.hi"], "{}", sub.pattern());
    }
}

#[tokio::test]
async fn dropping_a_subscription_stops_delivery_and_frees_its_entry() {
    let bus = EmbeddedBus::default();
    let a = bus.subscribe("agent.to.a.>", 4).await.unwrap();
    let b = bus.subscribe("agent.*.*.id1.command.>", 4).await.unwrap();
    let c = bus.subscribe("_INBOX.x.1", 4).await.unwrap();
    assert_eq!(bus.subscription_count(), 3);
    drop((a, b, c));
    assert_eq!(bus.subscription_count(), 0);
    assert!(
        bus.shared.read_routes().is_empty(),
        "no trie nodes left behind"
    );
    assert_eq!(bus.publish_now(msg("agent.to.a.hi")).unwrap(), 0);
}

#[tokio::test]
async fn dropping_the_bus_ends_its_subscriptions() {
    let bus = EmbeddedBus::default();
    let mut sub = bus.subscribe("a.>", 4).await.unwrap();
    bus.publish(msg("a.1")).await.unwrap();
    drop(bus);
    assert_eq!(sub.next().await.map(|m| m.subject).as_deref(), Some("a.1"));
    assert!(sub.next().await.is_none());
}

/// Answers every request on `pattern` with the request's payload and headers plus one more.
async fn spawn_responder(bus: &EmbeddedBus, pattern: &str) -> tokio::task::JoinHandle<()> {
    let mut sub = bus.subscribe(pattern, 64).await.unwrap();
    let bus = bus.clone();
    tokio::spawn(async move {
        while let Some(req) = sub.next().await {
            let mut reply = BusMessage::new(req.reply_to.clone().unwrap(), req.payload.clone());
            reply.headers = req.headers.clone();
            reply.headers.push(("Replied-By".into(), "echo".into()));
            bus.publish(reply).await.unwrap();
        }
    })
}

#[tokio::test]
async fn request_gets_the_reply_with_its_headers() {
    let bus = EmbeddedBus::default();
    let responder = spawn_responder(&bus, "agent.to.echo.>").await;
    let req = msg("agent.to.echo.ping").with_header("Agent-Ref", "c.caller.1");
    let reply = bus.request(req, Duration::from_secs(5)).await.unwrap();
    assert_eq!(&reply.payload[..], b"agent.to.echo.ping");
    assert_eq!(reply.header("agent-ref"), Some("c.caller.1"));
    assert_eq!(reply.header("Replied-By"), Some("echo"));
    assert!(reply.subject.starts_with("_INBOX."));
    assert_eq!(bus.pending_requests(), 0);
    assert_eq!(bus.subscription_count(), 1, "requests add no subscriptions");
    responder.abort();
}

#[tokio::test]
async fn concurrent_requests_each_get_their_own_reply() {
    let bus = EmbeddedBus::default();
    let responder = spawn_responder(&bus, "svc.>").await;
    let calls = (0..50).map(|i| {
        let bus = bus.clone();
        tokio::spawn(async move {
            let reply = bus
                .request(msg(&format!("svc.{i}")), Duration::from_secs(5))
                .await;
            (i, reply.unwrap())
        })
    });
    for call in calls.collect::<Vec<_>>() {
        let (i, reply) = call.await.unwrap();
        assert_eq!(reply.payload, format!("svc.{i}"));
    }
    responder.abort();
}

#[tokio::test]
async fn request_without_subscribers_fails_at_once_with_no_responders() {
    let bus = EmbeddedBus::default();
    let started = Instant::now();
    let err = bus
        .request(msg("agent.to.nobody.x"), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err, BusError::NoResponders("agent.to.nobody.x".into()));
    // At once, not at the 5 s timeout (with room for a stalled machine).
    assert!(started.elapsed() < Duration::from_millis(2_500));
    assert_eq!(bus.pending_requests(), 0);
}

#[tokio::test]
async fn request_times_out_when_the_subscriber_never_replies() {
    let bus = EmbeddedBus::default();
    let _silent = bus.subscribe("agent.to.mute.>", 4).await.unwrap();
    let err = bus
        .request(msg("agent.to.mute.x"), Duration::from_millis(30))
        .await
        .unwrap_err();
    assert_eq!(err, BusError::Timeout);
    assert_eq!(
        bus.pending_requests(),
        0,
        "the timed-out request left no slot behind"
    );
}

#[tokio::test]
async fn a_late_reply_is_dropped_silently_not_counted_as_a_slow_consumer() {
    let bus = EmbeddedBus::default();
    let mut slow = bus.subscribe("svc.slow", 4).await.unwrap();
    let err = bus
        .request(msg("svc.slow"), Duration::from_millis(10))
        .await
        .unwrap_err();
    assert_eq!(err, BusError::Timeout);
    let inbox = slow.try_next().unwrap().reply_to.unwrap();
    assert_eq!(bus.publish_now(msg(&inbox)).unwrap(), 0);
    assert_eq!(bus.dropped(), 0);
}

#[tokio::test]
async fn a_cancelled_request_frees_its_slot() {
    let bus = EmbeddedBus::default();
    let _silent = bus.subscribe("svc.x", 4).await.unwrap();
    let req = bus.request(msg("svc.x"), Duration::from_secs(60));
    assert!(tokio::time::timeout(Duration::from_millis(10), req)
        .await
        .is_err());
    assert_eq!(bus.pending_requests(), 0);
}

#[tokio::test]
async fn a_slow_consumer_loses_and_counts_messages_without_hurting_others() {
    let bus = EmbeddedBus::default();
    let mut slow = bus.subscribe("feed.>", 2).await.unwrap();
    let mut fast = bus.subscribe("feed.>", 16).await.unwrap();
    publish_all(&bus, &["feed.1", "feed.2", "feed.3", "feed.4", "feed.5"]).await;
    assert_eq!(slow.dropped(), 3);
    assert_eq!(bus.dropped(), 3);
    assert_eq!(
        drain(&mut slow),
        ["feed.1", "feed.2"],
        "the oldest are kept"
    );
    assert_eq!(fast.dropped(), 0);
    assert_eq!(drain(&mut fast).len(), 5);
}

#[tokio::test]
async fn invalid_subjects_and_patterns_are_refused() {
    let bus = EmbeddedBus::default();
    for bad in ["", "agent..x", "agent.*", "agent.>", "a b"] {
        let err = bus.publish(msg(bad)).await.unwrap_err();
        assert!(
            matches!(err, BusError::InvalidSubject(_)),
            "{bad:?}: {err:?}"
        );
    }
    let mut with_bad_reply = msg("agent.x");
    with_bad_reply.reply_to = Some("reply.*".into());
    assert!(matches!(
        bus.publish(with_bad_reply).await,
        Err(BusError::InvalidSubject(_))
    ));
    for bad in ["agent.>.x", "agent.a*", ""] {
        let err = bus.subscribe(bad, 1).await.unwrap_err();
        assert!(
            matches!(err, BusError::InvalidSubject(_)),
            "{bad:?}: {err:?}"
        );
    }
    assert_eq!(bus.subscription_count(), 0);
}

#[tokio::test]
async fn payloads_over_the_limit_are_refused_and_the_limit_itself_passes() {
    let bus = EmbeddedBus::new(8);
    assert_eq!(bus.max_payload(), 8);
    assert!(bus
        .publish(BusMessage::new("a.b", vec![0u8; 8]))
        .await
        .is_ok());
    let err = bus
        .publish(BusMessage::new("a.b", vec![0u8; 9]))
        .await
        .unwrap_err();
    assert_eq!(err, BusError::TooLarge { size: 9, max: 8 });
    let err = bus
        .request(BusMessage::new("a.b", vec![0u8; 9]), Duration::from_secs(1))
        .await;
    assert_eq!(err.unwrap_err(), BusError::TooLarge { size: 9, max: 8 });
}

#[tokio::test]
async fn among_ten_thousand_agents_a_message_reaches_only_its_addressee() {
    let bus = EmbeddedBus::default();
    let mut subs = Vec::new();
    for i in 0..10_000 {
        subs.push(
            bus.subscribe(&subjects::legacy_inbox(&format!("agent{i}")), 1)
                .await
                .unwrap(),
        );
    }
    assert_eq!(bus.subscription_count(), 10_000);
    assert_eq!(bus.publish_now(msg("agent.to.agent4242.hello")).unwrap(), 1);
    let reached: Vec<_> = subs
        .iter_mut()
        .filter_map(|s| s.try_next().map(|_| s.pattern().to_string()))
        .collect();
    assert_eq!(reached, ["agent.to.agent4242.>"]);
    drop(subs);
    assert_eq!(bus.subscription_count(), 0);
}

#[tokio::test]
async fn each_subscriber_sees_messages_in_publish_order() {
    let bus = EmbeddedBus::default();
    let mut a = bus.subscribe("seq.>", 1000).await.unwrap();
    let mut b = bus.subscribe("seq.*", 1000).await.unwrap();
    let subjects: Vec<String> = (0..500).map(|i| format!("seq.{i}")).collect();
    for s in &subjects {
        bus.publish(msg(s)).await.unwrap();
    }
    assert_eq!(drain(&mut a), subjects);
    assert_eq!(drain(&mut b), subjects);
}

#[tokio::test]
async fn the_bus_works_as_a_trait_object() {
    let bus: Arc<dyn Transport> = Arc::new(EmbeddedBus::default());
    let mut sub = bus.subscribe("a.>", 0).await.unwrap();
    bus.publish(msg("a.b")).await.unwrap();
    assert_eq!(sub.next().await.unwrap().subject, "a.b");
}
