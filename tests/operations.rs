//! What operators read: /health and /metrics over HTTP, and the shipped demo config.

mod support;

use agent_host::config::NodeConfig;
use agent_host::node::Node;
use support::{http_get, TestNode};

#[tokio::test]
async fn health_and_metrics_are_served_over_http() {
    let t = TestNode::start().await;
    t.load("echo", "echo", "").await;
    t.ask("agent.to.echo.x", "one").await;
    let (addr, task) =
        agent_host::telemetry::http::serve(t.node.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();

    let (code, body) = http_get(addr, "/health").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    assert!(
        body.contains("\"bus\":{\"backend\":\"embedded\",\"connected\":true"),
        "/health says where the bus stands: {body}"
    );

    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("text/plain"), "{body}");
    assert!(
        body.contains("agent_host_messages_handled_total{agent=\"echo\",cluster=\"default\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("agent_host_handle_seconds_count{agent=\"echo\",cluster=\"default\"} 1"),
        "{body}"
    );
    assert!(body.contains("agent_host_agents 1"), "{body}");
    assert!(body.contains("agent_host_bus_connected 1"), "{body}");
    assert!(body.contains("agent_host_resident_memory_bytes"), "{body}");
    assert!(
        body.contains("agent_host_mailboxes_queued_bytes 0"),
        "{body}"
    );
    task.abort();
    t.stop().await;
}

#[tokio::test]
async fn the_demo_config_in_configs_really_runs() {
    let path = support::root().join("configs/demo.toml");
    let mut cfg = NodeConfig::load_with_env(Some(&path), &|_| None).expect("demo config is valid");
    let dir = tempfile::tempdir().unwrap();
    cfg.node.data_dir = dir.path().to_path_buf();
    cfg.http.listen = None;
    // The demo manifests point at plugins/target: make sure the plugins are built.
    support::plugin("echo");
    let node = Node::start(cfg).await.unwrap();
    node.load_configured_agents()
        .await
        .expect("every agent of the demo loads");
    let names: Vec<_> = node.list().await.into_iter().map(|a| a.name).collect();
    assert!(
        names.contains(&"echo".to_string()) && names.contains(&"counter".to_string()),
        "{names:?}"
    );
    let t = TestNode { node, dir };
    assert_eq!(t.ask("agent.to.echo.hi", "demo").await, "demo");
    assert_eq!(t.ask("agent.to.counter.cmd", "add 2").await, "2");
    t.stop().await;
}
