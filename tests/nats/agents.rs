//! Agents on a node whose bus is NATS behave exactly as on the embedded bus, and any NATS
//! client (standing in for a service written in another language) can talk to them.

use std::time::Duration;

use agent_host::bus::BusMessage;
use agent_host::node::Node;
use futures::StreamExt;

use super::durable::ask;
use super::nats_server::NatsServer;
use super::transport::round_trip;
use crate::support::{http_get, test_config, TestNode};

/// A node on `server`, otherwise configured as the embedded-bus tests' nodes are.
pub async fn node_on(server: &NatsServer) -> TestNode {
    let url = server.url();
    TestNode::start_with(move |c| c.nats.url = Some(url)).await
}

const PROBE_GRANTS: &str = r#"
[agent]
name = "probe"
[messaging]
publish = ["agent.broadcast.status"]
send = ["echo", "counter"]
"#;

#[tokio::test]
async fn echo_and_counter_answer_requests_through_the_node_as_on_the_embedded_bus() {
    let Some(server) = NatsServer::start("nats echo and counter") else {
        return;
    };
    let t = node_on(&server).await;
    t.load("echo", "echo", "").await;
    t.load("counter", "counter", "").await;
    assert_eq!(
        t.ask("agent.to.echo.hello", "hi over nats").await,
        "hi over nats"
    );
    assert_eq!(t.ask("agent.to.counter.cmd", "add 5").await, "5");
    assert_eq!(t.ask("agent.to.counter.cmd", "add 2").await, "7");
    assert_eq!(t.ask("agent.to.counter.cmd", "get").await, "7");
    let err = t
        .node
        .send(
            BusMessage::new("agent.to.nobody.x", "?"),
            Some(Duration::from_secs(2)),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no responders"), "{err}");
    t.stop().await;
}

#[tokio::test]
async fn agents_publish_send_ask_and_request_many_to_each_other_over_nats() {
    let Some(server) = NatsServer::start("nats agent to agent") else {
        return;
    };
    let t = node_on(&server).await;
    let probe = t.load("probe", "probe", PROBE_GRANTS).await;
    t.load("echo", "echo", "").await;
    t.load("counter", "counter", "").await;
    let watcher = async_nats::connect(server.url()).await.unwrap();
    let mut status = watcher.subscribe("agent.broadcast.status").await.unwrap();
    let mut to_echo = watcher.subscribe("agent.to.echo.>").await.unwrap();
    round_trip(&watcher).await;

    let published = t
        .ask(
            "agent.to.probe.cmd",
            "publish agent.broadcast.status all good",
        )
        .await;
    assert_eq!(published, "ok");
    let got = tokio::time::timeout(Duration::from_secs(5), status.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got.payload[..], b"all good");
    let sender = got.headers.as_ref().and_then(|h| h.get("Agent-Ref"));
    assert_eq!(
        sender.map(|v| v.as_str().to_string()),
        Some(format!("default.probe.{}", probe.id)),
        "stamped with the sender's agent-ref"
    );

    assert_eq!(
        t.ask("agent.to.probe.cmd", "send echo ping hello").await,
        "ok"
    );
    let sent = tokio::time::timeout(Duration::from_secs(5), to_echo.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sent.subject.as_str(), "agent.to.echo.ping");

    assert_eq!(t.ask("agent.to.probe.cmd", "ask echo say hi").await, "hi");
    let fan = t
        .ask("agent.to.probe.cmd", "fanout echo,counter,nobody add 2")
        .await;
    let parts: Vec<_> = fan.split('|').collect();
    assert_eq!(parts[..2], ["add 2", "2"], "echo and counter answer: {fan}");
    assert!(parts[2].starts_with("error: denied"), "{fan}");
    t.stop().await;
}

#[tokio::test]
async fn a_plain_nats_client_reaches_an_agent_by_inbox_and_by_agent_ref_and_reads_reply_headers() {
    let Some(server) = NatsServer::start("nats plain client") else {
        return;
    };
    let t = node_on(&server).await;
    let counter = t.load("counter", "counter", "").await;
    let client = async_nats::connect(server.url()).await.unwrap();

    // Fire-and-forget to the legacy inbox, as a script would.
    client
        .publish("agent.to.counter.cmd", "add 3".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    // On the same subject NATS keeps order, so this request comes after the add. (Across two
    // of an agent's patterns it does not: each is its own subscription.)
    assert_eq!(
        ask(&client, "agent.to.counter.cmd", "get").await,
        "3",
        "the published add came first"
    );
    // Request on the agent-ref subject; the reply names who answered.
    let subject = format!("agent.default.counter.{}.command.cmd", counter.id);
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject, "get".into()),
    )
    .await
    .expect("a reply within 5 s")
    .expect("the counter answers");
    assert_eq!(
        &reply.payload[..],
        b"3",
        "the agent-ref request reaches the same counter"
    );
    let headers = reply.headers.expect("the reply has headers");
    assert_eq!(
        headers.get("Agent-Ref").map(|v| v.as_str().to_string()),
        Some(format!("default.counter.{}", counter.id))
    );
    t.stop().await;
}

#[tokio::test]
async fn a_message_on_two_of_an_agents_patterns_or_dual_published_with_one_id_is_handled_once() {
    let Some(server) = NatsServer::start("nats dedup") else {
        return;
    };
    let t = node_on(&server).await;
    let probe = t.load("probe", "probe", "").await;
    let client = async_nats::connect(server.url()).await.unwrap();

    // One publish matching the legacy and the agent-ref pattern at once (cluster "to").
    let both = format!("agent.to.probe.{}.command.cmd", probe.id);
    client.publish(both, "kv-set a 1".into()).await.unwrap();
    // A migration dual-publish: the same Nats-Msg-Id on both subject schemes.
    let mut id = async_nats::HeaderMap::new();
    id.insert("Nats-Msg-Id", "dual-1");
    client
        .publish_with_headers("agent.to.probe.cmd", id.clone(), "kv-set b 1".into())
        .await
        .unwrap();
    let agent_ref = format!("agent.default.probe.{}.command.cmd", probe.id);
    client
        .publish_with_headers(agent_ref, id, "kv-set b 1".into())
        .await
        .unwrap();
    client.flush().await.unwrap();

    // The agent's subscriptions are separate streams: wait until both messages are handled,
    // give any duplicate time to arrive, then count.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while t.node.status("probe").await.unwrap().handled < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "both messages handled in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        t.node.status("probe").await.unwrap().handled,
        2,
        "one overlapping publish + one dual-published message, each handled once"
    );
    assert_eq!(t.ask("agent.to.probe.cmd", "seen").await, "3");
    t.stop().await;
}

#[tokio::test]
async fn a_message_over_the_servers_max_payload_is_refused_with_the_limit_and_nothing_else_breaks()
{
    let Some(server) = NatsServer::start("nats max payload") else {
        return;
    };
    let t = node_on(&server).await;
    t.load("echo", "echo", "").await;
    let big = BusMessage::new("agent.to.echo.big", vec![b'x'; 2 << 20]);
    let err = t
        .node
        .send(big, Some(Duration::from_secs(2)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("2097152 bytes"), "{err}");
    assert!(err.contains("at most 1048576"), "{err}");
    assert_eq!(
        t.ask("agent.to.echo.small", "still here").await,
        "still here"
    );
    t.stop().await;
}

#[tokio::test]
async fn a_node_whose_nats_is_unreachable_at_start_fails_naming_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let mut config = test_config(dir.path());
    config.nats.url = Some(url.clone());
    config.nats.connect_timeout_ms = 1000;
    let err = match Node::start(config).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("started without NATS"),
    };
    assert!(err.contains(&url), "{err}");
    assert!(err.contains("check that nats-server is running"), "{err}");
}

#[tokio::test]
async fn after_the_nats_server_restarts_under_load_the_node_reconnects_and_agents_resume() {
    let Some(mut server) = NatsServer::start("nats server restart") else {
        return;
    };
    let t = node_on(&server).await;
    t.load("echo", "echo", "").await;
    assert_eq!(t.ask("agent.to.echo.x", "before").await, "before");

    // Load from the node itself while the server goes away and comes back.
    let bus = t.node.bus.clone();
    let load = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u32, 0u32);
        let until = tokio::time::Instant::now() + Duration::from_secs(4);
        while tokio::time::Instant::now() < until {
            let msg = BusMessage::new("agent.to.echo.load", "x");
            match bus.request(msg, Duration::from_millis(500)).await {
                Ok(_) => ok += 1,
                Err(_) => {
                    failed += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        (ok, failed)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let (answered, failed) = load.await.unwrap();

    let resumed = async {
        loop {
            let msg = BusMessage::new("agent.to.echo.x", "after");
            if let Ok(Some(reply)) = t.node.send(msg, Some(Duration::from_secs(1))).await {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let reply = tokio::time::timeout(Duration::from_secs(15), resumed)
        .await
        .expect("the echo agent answers again after the restart, without any help");
    assert_eq!(&reply.payload[..], b"after");
    assert!(answered > 0, "requests were answered before the restart");
    eprintln!("during the restart: {answered} requests answered, {failed} failed");
    t.stop().await;
    drop(server);
}

/// Polls `/health` until it answers `code` (within `limit`); its response then.
async fn health_until(addr: std::net::SocketAddr, code: u16, limit: Duration) -> String {
    let started = std::time::Instant::now();
    loop {
        let (got, body) = http_get(addr, "/health").await;
        if got == code {
            return body;
        }
        assert!(
            started.elapsed() < limit,
            "/health did not answer {code} within {limit:?}; last: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_degraded_while_the_node_is_cut_off_from_nats_and_names_its_server_again_after() {
    let Some(mut server) = NatsServer::start("nats health during an outage") else {
        return;
    };
    let t = node_on(&server).await;
    t.load("echo", "echo", "").await;
    let (addr, task) =
        agent_host::telemetry::http::serve(t.node.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
    let address = format!("\"server_address\":\"127.0.0.1:{}\"", server.port());
    let (code, body) = http_get(addr, "/health").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"backend\":\"nats\",\"connected\":true"),
        "{body}"
    );
    assert!(
        body.contains("\"server_name\":\"agent-host-test\""),
        "{body}"
    );
    assert!(body.contains(&address), "{body}");

    tokio::task::block_in_place(|| server.stop());
    let seen = health_until(addr, 503, Duration::from_secs(10)).await;
    assert!(seen.contains("\"status\":\"degraded\""), "{seen}");
    assert!(seen.contains("\"connected\":false"), "{seen}");
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert!(metrics.contains("agent_host_bus_connected 0"), "{metrics}");

    tokio::task::block_in_place(|| server.restart());
    let seen = health_until(addr, 200, Duration::from_secs(15)).await;
    assert!(seen.contains("\"reconnects\":1"), "{seen}");
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert!(metrics.contains("agent_host_bus_reconnects 1"), "{metrics}");
    task.abort();
    t.stop().await;
}

#[tokio::test]
async fn host_run_with_a_nats_url_serves_agents_over_nats() {
    let Some(server) = NatsServer::start("nats host run") else {
        return;
    };
    let config = format!(
        "[nats]\nurl = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
        server.url()
    );
    let node = crate::support::NodeProcess::start(&config);
    let echo = crate::support::plugin("echo");
    let out = node.host(&["load", echo.to_str().unwrap()]);
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    let client = async_nats::connect(server.url()).await.unwrap();
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request("agent.to.echo.hi", "from a plain client".into()),
    )
    .await
    .expect("a reply within 5 s")
    .expect("echo answers over NATS");
    assert_eq!(&reply.payload[..], b"from a plain client");
    let log = node.log_text();
    assert!(log.contains("messaging on NATS"), "{log}");
    assert!(node.stop().success());
}

#[tokio::test]
async fn the_seed_environment_of_a_one_agent_process_configures_the_node_and_its_agent() {
    let Some(server) = NatsServer::start("nats seed env") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = format!(
        "[agent]\nname = \"echo\"\ncomponent = {:?}\n[subscriptions]\ndurable = true\n",
        crate::support::plugin("echo").display().to_string()
    );
    std::fs::write(dir.path().join("agent.toml"), manifest).unwrap();
    let config_path = dir.path().join("node.toml");
    let text = "[http]\nlisten = \"off\"\n[[agents]]\nmanifest = \"agent.toml\"\n";
    let id = "01936f11-4ea2-7000-8000-0000000000e1";
    let url = server.url();
    let env = |name: &str| -> Option<String> {
        Some(match name {
            "NATS_URL" => url.clone(),
            "STREAM_NAME" => "FLEET_MESSAGES".into(),
            "AGENT_NAME" => "ddd-expert".into(),
            "AGENT_ID" => id.into(),
            "CAPABILITY_CLUSTER" => "domain-modeling".into(),
            "ENABLE_UNIFIED_SUBJECTS" => "true".into(),
            "SNAPSHOT_FREQUENCY" => "7".into(),
            _ => return None,
        })
    };
    let config = agent_host::config::NodeConfig::parse(text, Some(&config_path), &env).unwrap();
    assert_eq!(config.node.snapshot_every, 7);
    assert!(config.node.unified_subjects);
    let node = Node::start(config).await.expect("node on NATS");
    node.load_configured_agents().await.unwrap();

    let agents = node.list().await;
    assert_eq!(agents.len(), 1);
    let a = &agents[0];
    assert_eq!(
        (a.name.as_str(), a.cluster.as_str(), a.id.as_str()),
        ("ddd-expert", "domain-modeling", id)
    );
    // Reachable on its agent-ref subject from any client, through the stream STREAM_NAME names.
    let client = async_nats::connect(server.url()).await.unwrap();
    let subject = format!("agent.domain-modeling.ddd-expert.{id}.command.hi");
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject, "seeded".into()),
    )
    .await
    .expect("a reply within 10 s")
    .unwrap();
    assert_eq!(&reply.payload[..], b"seeded");
    let js = async_nats::jetstream::new(client);
    assert!(js.get_stream("FLEET_MESSAGES").await.is_ok());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_health_names_the_server_and_fails_while_the_node_is_cut_off() {
    let Some(mut server) = NatsServer::start("nats host health") else {
        return;
    };
    let node = crate::support::NodeProcess::start(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[nats]\nurl = \"{}\"\n",
        server.url()
    ));
    let health = node.host(&["health"]);
    let text = crate::support::stdout(&health);
    assert!(health.status.success(), "{text}");
    assert!(text.contains("status: ok"), "{text}");
    let attached = format!(
        "bus: nats, connected to agent-host-test at 127.0.0.1:{}",
        server.port()
    );
    assert!(text.contains(&attached), "{text}");

    tokio::task::block_in_place(|| server.stop());
    let started = std::time::Instant::now();
    let cut_off = loop {
        let health = node.host(&["health"]);
        if !health.status.success() {
            break health;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "host health still succeeds with the server down: {}",
            crate::support::stdout(&health)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = crate::support::stdout(&cut_off);
    assert!(text.contains("status: degraded"), "{text}");
    assert!(text.contains("DISCONNECTED"), "{text}");
    assert!(
        crate::support::stderr(&cut_off).contains("the node is degraded"),
        "{}",
        crate::support::stderr(&cut_off)
    );
    let json = node.host(&["health", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&crate::support::stdout(&json)).unwrap();
    assert_eq!(report["bus"]["connected"], false, "{report}");
    node.stop();
}

#[tokio::test]
async fn an_agent_flooded_past_its_mailbox_counts_every_message_it_lost() {
    let Some(server) = NatsServer::start("nats flooded mailbox") else {
        return;
    };
    let url = server.url();
    let t = TestNode::start_with(move |c| {
        c.nats.url = Some(url);
        c.node.mailbox_capacity = 4;
    })
    .await;
    t.load("hostile", "hostile", "[agent]\nname = \"hostile\"\n")
        .await;
    let client = async_nats::connect(server.url()).await.unwrap();
    // The agent is busy in a host call for 2 s while a burst arrives: its mailbox keeps 4.
    client
        .publish("agent.to.hostile.x", "sleep 2000".into())
        .await
        .unwrap();
    round_trip(&client).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    const BURST: u64 = 20_000;
    for _ in 0..BURST {
        client
            .publish("agent.to.hostile.x", "ping".into())
            .await
            .unwrap();
    }
    round_trip(&client).await;

    let accounted = |s: &agent_host::agent::AgentSummary| s.handled + s.errors + s.dropped;
    let all_accounted = crate::support::eventually(Duration::from_secs(20), async || {
        accounted(&t.node.status("hostile").await.unwrap()) == BURST + 1
    })
    .await;
    let s = t.node.status("hostile").await.unwrap();
    assert!(
        all_accounted,
        "of {} messages: {} handled, {} errors, {} dropped",
        BURST + 1,
        s.handled,
        s.errors,
        s.dropped
    );
    // How many depends on how much of the burst came in before the sleep ended.
    assert!(s.dropped > 0, "{s:?}");
    let metrics = t.node.metrics.encode();
    let line = format!(
        "agent_host_mailbox_dropped_total{{agent=\"hostile\",cluster=\"{}\"}} {}",
        s.cluster, s.dropped
    );
    assert!(metrics.contains(&line), "{line} in\n{metrics}");
    assert!(
        t.node.bus.dropped() >= s.dropped,
        "the bus-wide count includes them"
    );
    // Nothing else is affected: the agent answers again.
    assert_eq!(ask(&client, "agent.to.hostile.x", "ping").await, "pong");
    t.stop().await;
}
