//! What an agent may and may not do through the host, checked against its manifest, with
//! real components on a real (in-process) node.

mod support;

use std::time::Duration;

use agent_host::bus::BusMessage;
use support::TestNode;

const PROBE_GRANTS: &str = r#"
[agent]
name = "probe"
[messaging]
publish = ["agent.broadcast.status", "agent.to.echo.>"]
send = ["echo", "counter"]
[config]
greeting = "hello from the manifest"
"#;

#[tokio::test]
async fn an_agent_publishing_outside_its_grants_gets_denied_and_the_node_counts_it() {
    let t = TestNode::start().await;
    t.load("probe", "probe", PROBE_GRANTS).await;
    let reply = t
        .ask("agent.to.probe.cmd", "publish agent.secret.stuff boo")
        .await;
    assert!(reply.starts_with("error: denied:"), "{reply}");
    assert!(
        reply.contains("[messaging] publish"),
        "names the grant to add: {reply}"
    );
    assert!(reply.contains("agent.secret.stuff"), "{reply}");
    let status = t.node.status("probe").await.unwrap();
    assert_eq!(status.denied, 1);
    assert_eq!(status.traps, 0, "a denied call never traps");
    assert!(t
        .node
        .metrics
        .encode()
        .contains("agent_host_denied_calls_total{agent=\"probe\",cluster=\"default\"} 1"));
    t.stop().await;
}

#[tokio::test]
async fn without_a_manifest_an_agent_may_only_reply_and_use_its_own_kv() {
    let t = TestNode::start().await;
    t.load("probe", "probe", "").await;
    assert!(t
        .ask("agent.to.probe.cmd", "publish agent.broadcast.status hi")
        .await
        .starts_with("error: denied:"));
    assert!(t
        .ask("agent.to.probe.cmd", "send echo hi x")
        .await
        .starts_with("error: denied:"));
    assert!(t
        .ask("agent.to.probe.cmd", "chat llama3.2:1b hi")
        .await
        .starts_with("error: denied:"));
    assert!(t
        .ask("agent.to.probe.cmd", "kv-set k v")
        .await
        .parse::<u64>()
        .is_ok());
    assert_eq!(t.ask("agent.to.probe.cmd", "kv-get k").await, "v");
    let me = t.ask("agent.to.probe.cmd", "self").await;
    assert!(me.starts_with("default.probe."), "{me}");
    t.stop().await;
}

#[tokio::test]
async fn granted_publishes_go_out_stamped_with_the_senders_agent_ref() {
    let t = TestNode::start().await;
    let probe = t.load("probe", "probe", PROBE_GRANTS).await;
    let mut watch = t
        .node
        .bus
        .subscribe("agent.broadcast.status", 16)
        .await
        .unwrap();
    assert_eq!(
        t.ask(
            "agent.to.probe.cmd",
            "publish agent.broadcast.status all good"
        )
        .await,
        "ok"
    );
    let got = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got.payload[..], b"all good");
    assert_eq!(
        got.header("Agent-Ref"),
        Some(format!("default.probe.{}", probe.id).as_str())
    );
    t.stop().await;
}

#[tokio::test]
async fn an_agent_cannot_forge_the_sender_header() {
    let t = TestNode::start().await;
    let probe = t.load("probe", "probe", PROBE_GRANTS).await;
    let mut watch = t
        .node
        .bus
        .subscribe("agent.broadcast.status", 16)
        .await
        .unwrap();
    // The probe's publish path passes no headers; forge via a message header is not
    // possible either: the host strips any Agent-Ref the agent sets and adds its own.
    assert_eq!(
        t.ask("agent.to.probe.cmd", "publish agent.broadcast.status x")
            .await,
        "ok"
    );
    let got = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap();
    let refs: Vec<_> = got.header_values("agent-ref").collect();
    assert_eq!(refs.len(), 1);
    assert!(refs[0].ends_with(&probe.id));
    t.stop().await;
}

#[tokio::test]
async fn send_uses_the_legacy_subject_unless_unified_subjects_is_on() {
    for unified in [false, true] {
        let t = TestNode::start_with(|c| c.node.unified_subjects = unified).await;
        t.load("probe", "probe", PROBE_GRANTS).await;
        let echo = t.load("echo", "echo", "").await;
        let mut watch = t.node.bus.subscribe("agent.>", 64).await.unwrap();
        assert_eq!(
            t.ask("agent.to.probe.cmd", "send echo ping hello").await,
            "ok"
        );
        let expected = if unified {
            format!("agent.default.echo.{}.command.ping", echo.id)
        } else {
            "agent.to.echo.ping".to_string()
        };
        let mut seen = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await
        {
            seen.push(m.subject.clone());
        }
        assert!(
            seen.contains(&expected),
            "unified={unified}: expected {expected} in {seen:?}"
        );
        t.stop().await;
    }
}

#[tokio::test]
async fn ask_and_request_many_reach_other_agents_by_name() {
    let t = TestNode::start().await;
    t.load("probe", "probe", PROBE_GRANTS).await;
    t.load("echo", "echo", "").await;
    t.load("counter", "counter", "").await;
    assert_eq!(t.ask("agent.to.probe.cmd", "ask echo say hi").await, "hi");
    let fan = t
        .ask("agent.to.probe.cmd", "fanout echo,counter,nobody add 2")
        .await;
    let parts: Vec<_> = fan.split('|').collect();
    assert_eq!(parts[0], "add 2", "echo answers");
    assert_eq!(parts[1], "2", "counter answers");
    assert!(
        parts[2].starts_with("error: denied"),
        "nobody is not granted: {}",
        parts[2]
    );
    t.stop().await;
}

#[tokio::test]
async fn request_many_runs_requests_concurrently() {
    let t = TestNode::start().await;
    let grants = "[agent]\nname = \"probe\"\n[messaging]\nsend = [\"*\"]\n";
    t.load("probe", "probe", grants).await;
    // Eight slow responders that each answer after 600 ms: sequentially 4.8 s.
    let mut responders = Vec::new();
    for i in 0..8 {
        let mut sub = t
            .node
            .bus
            .subscribe(&format!("agent.to.slow{i}.>"), 8)
            .await
            .unwrap();
        let bus = t.node.bus.clone();
        responders.push(tokio::spawn(async move {
            if let Some(m) = sub.next().await {
                tokio::time::sleep(Duration::from_millis(600)).await;
                bus.publish(BusMessage::new(m.reply_to.unwrap(), format!("slow{i}")))
                    .await
                    .unwrap();
            }
        }));
    }
    let names: Vec<String> = (0..8).map(|i| format!("slow{i}")).collect();
    let started = std::time::Instant::now();
    let fan = t
        .ask(
            "agent.to.probe.cmd",
            &format!("fanout {} go", names.join(",")),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(fan, names.join("|"));
    assert!(
        took < Duration::from_millis(3_000),
        "took {took:?}: requests did not run concurrently"
    );
    t.stop().await;
}

#[tokio::test]
async fn kv_namespaces_are_private_to_each_agent() {
    let t = TestNode::start().await;
    t.load("probe", "alice", "").await;
    t.load("probe", "bob", "").await;
    t.ask("agent.to.alice.cmd", "kv-set shared alice-value")
        .await;
    assert_eq!(t.ask("agent.to.bob.cmd", "kv-get shared").await, "none");
    t.ask("agent.to.bob.cmd", "kv-set shared bob-value").await;
    assert_eq!(
        t.ask("agent.to.alice.cmd", "kv-get shared").await,
        "alice-value"
    );
    assert_eq!(t.ask("agent.to.bob.cmd", "kv-list sh").await, "shared");
    t.stop().await;
}

#[tokio::test]
async fn kv_compare_and_swap_and_quota_reach_the_agent_as_errors() {
    let t = TestNode::start().await;
    t.load(
        "probe",
        "probe",
        "[agent]\nname = \"probe\"\n[kv]\nmax_bytes = \"64B\"\n",
    )
    .await;
    let created = t.ask("agent.to.probe.cmd", "kv-cas lock none me").await;
    assert!(created.starts_with("swapped "), "{created}");
    let again = t.ask("agent.to.probe.cmd", "kv-cas lock none you").await;
    assert!(
        again.starts_with("conflict Some("),
        "a second claim conflicts: {again}"
    );
    let big = "x".repeat(100);
    let over = t
        .ask("agent.to.probe.cmd", &format!("kv-set big {big}"))
        .await;
    assert!(over.starts_with("error: quota exceeded:"), "{over}");
    let bad = t.ask("agent.to.probe.cmd", "kv-set bad*key v").await;
    assert!(bad.starts_with("error: invalid:"), "{bad}");
    t.stop().await;
}

#[tokio::test]
async fn config_values_come_from_the_manifest() {
    let t = TestNode::start().await;
    t.load("probe", "probe", PROBE_GRANTS).await;
    assert_eq!(
        t.ask("agent.to.probe.cmd", "config greeting").await,
        "hello from the manifest"
    );
    assert_eq!(t.ask("agent.to.probe.cmd", "config missing").await, "none");
    t.stop().await;
}

#[tokio::test]
async fn llm_calls_without_a_backend_say_which_setting_to_add() {
    let t = TestNode::start().await;
    t.load(
        "probe",
        "probe",
        "[agent]\nname = \"probe\"\n[llm]\nmodels = [\"llama3.2:1b\"]\n",
    )
    .await;
    let r = t.ask("agent.to.probe.cmd", "chat llama3.2:1b hello").await;
    assert!(r.starts_with("error: unavailable:"), "{r}");
    assert!(r.contains("OLLAMA_HOST") && r.contains("ollama_url"), "{r}");
    let r = t.ask("agent.to.probe.cmd", "chat gpt-4 hello").await;
    assert!(
        r.starts_with("error: denied:") && r.contains("[llm] models"),
        "{r}"
    );
    t.stop().await;
}

#[tokio::test]
async fn a_message_published_twice_with_one_id_is_handled_once() {
    let t = TestNode::start().await;
    let probe = t.load("probe", "probe", "").await;
    let id = [("Nats-Msg-Id".to_string(), "dual-1".to_string())];
    // Dual-published during a subject migration: legacy and agent-ref subjects.
    let legacy = BusMessage {
        headers: id.to_vec(),
        ..BusMessage::new("agent.to.probe.cmd", "kv-set x 1")
    };
    let agent_ref = BusMessage {
        headers: id.to_vec(),
        ..BusMessage::new(
            format!("agent.default.probe.{}.command.cmd", probe.id),
            "kv-set x 1",
        )
    };
    t.publish(legacy).await;
    t.publish(agent_ref).await;
    assert_eq!(
        t.ask("agent.to.probe.cmd", "seen").await,
        "2",
        "one dual-published message + this one"
    );
    t.handled_at_least("probe", 2).await;
    assert_eq!(t.node.status("probe").await.unwrap().handled, 2);
    t.stop().await;
}

#[tokio::test]
async fn reserved_names_and_duplicate_agents_are_refused_naming_the_field() {
    let t = TestNode::start().await;
    let first = t.load("echo", "echo", "").await;
    let err = t
        .try_load("echo", "echo", "")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("agent.name") && err.contains("already loaded"),
        "{err}"
    );
    let same_id = format!("[agent]\nname = \"echo2\"\nid = \"{}\"\n", first.id);
    let err = t
        .try_load("echo", "echo2", &same_id)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("agent.id") && err.contains("echo2.toml"),
        "{err}"
    );
    let err = t
        .try_load(
            "echo",
            "e3",
            "[agent]\nname = \"e3\"\ncluster = \"broadcast\"\n",
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("agent.cluster") && err.contains("e3.toml"),
        "{err}"
    );
    assert_eq!(t.node.list().await.len(), 1);
    t.stop().await;
}
