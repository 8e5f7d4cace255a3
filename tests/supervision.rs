//! An agent's fault never takes down the node or another agent: a trap re-creates only
//! that instance from its last snapshot, and a message that keeps trapping is set aside.

mod support;

use std::time::Duration;

use agent_host::bus::BusMessage;
use support::TestNode;

#[tokio::test]
async fn a_trapping_agent_is_restarted_from_its_last_snapshot_and_the_poison_message_dead_lettered()
{
    let t = TestNode::start_with(|c| {
        c.node.snapshot_every = 1;
        c.node.max_traps_per_message = 3;
    })
    .await;
    t.load("probe", "probe", "").await;
    t.load("echo", "echo", "").await;
    let mut dlq = t.node.bus.subscribe("agent.dlq.probe", 8).await.unwrap();

    for _ in 0..3 {
        t.ask("agent.to.probe.cmd", "seen").await;
    }
    t.publish(BusMessage::new("agent.to.probe.cmd", "panic"))
        .await;

    let dead = tokio::time::timeout(Duration::from_secs(10), dlq.next())
        .await
        .expect("dead-lettered in time")
        .unwrap();
    assert_eq!(&dead.payload[..], b"panic");
    assert_eq!(
        dead.header("Agent-Original-Subject"),
        Some("agent.to.probe.cmd")
    );
    let error = dead
        .header("Agent-Error")
        .expect("the error travels with the message");
    assert!(
        error.contains("probe was told to panic") || error.contains("unreachable"),
        "{error}"
    );

    // State from the last snapshot (3 messages seen) survives; the trapped attempts don't count.
    assert_eq!(t.ask("agent.to.probe.cmd", "seen").await, "4");
    let status = t.node.status("probe").await.unwrap();
    assert_eq!(status.traps, 3);
    assert_eq!(status.dead_lettered, 1);
    assert_eq!(status.state, agent_host::agent::AgentState::Running);
    assert!(status.last_error.unwrap().contains("trap"));

    // The neighbour never noticed.
    assert_eq!(t.ask("agent.to.echo.x", "fine").await, "fine");
    assert_eq!(t.node.status("echo").await.unwrap().traps, 0);
    t.stop().await;
}

#[tokio::test]
async fn an_error_returned_by_handle_is_counted_and_the_agent_keeps_its_state() {
    let t = TestNode::start().await;
    t.load("probe", "probe", "").await;
    t.ask("agent.to.probe.cmd", "seen").await;
    let r = t.ask("agent.to.probe.cmd", "fail").await;
    assert_eq!(r, "error: probe was told to fail");
    assert_eq!(
        t.ask("agent.to.probe.cmd", "seen").await,
        "3",
        "no restart: state kept"
    );
    // "seen" was handled after "fail" finished, so the counters are settled.
    let status = t.node.status("probe").await.unwrap();
    assert_eq!((status.errors, status.traps, status.restarts), (1, 0, 0));
    t.stop().await;
}

#[tokio::test]
async fn unloading_an_agent_while_others_serve_leaves_them_untouched() {
    let t = TestNode::start().await;
    t.load("echo", "echo", "").await;
    t.load("counter", "counter", "").await;
    assert_eq!(t.ask("agent.to.counter.c", "add 3").await, "3");
    t.node.unload("counter").await.unwrap();
    let err = t
        .request(BusMessage::new("agent.to.counter.c", "get"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no agent listens"), "{err}");
    assert_eq!(t.ask("agent.to.echo.x", "still").await, "still");
    t.stop().await;
}

#[tokio::test]
async fn a_message_that_spins_is_stopped_at_its_cpu_budget_while_neighbours_keep_serving() {
    let t = TestNode::start_with(|c| c.node.max_traps_per_message = 2).await;
    t.load(
        "probe",
        "probe",
        "[agent]\nname = \"probe\"\n[limits]\ncpu_ms_per_message = 50\n",
    )
    .await;
    t.load("echo", "echo", "").await;
    let mut dlq = t.node.bus.subscribe("agent.dlq.probe", 8).await.unwrap();
    t.publish(BusMessage::new("agent.to.probe.cmd", "spin"))
        .await;
    // While the probe spins, echo answers.
    assert_eq!(t.ask("agent.to.echo.x", "during").await, "during");
    let dead = tokio::time::timeout(Duration::from_secs(10), dlq.next())
        .await
        .expect("dead-lettered in time")
        .unwrap();
    let error = dead.header("Agent-Error").unwrap();
    assert!(error.contains("CPU budget of 50 ms"), "{error}");
    assert_eq!(
        t.ask("agent.to.probe.cmd", "seen").await,
        "1",
        "fresh instance serves again"
    );
    assert_eq!(t.node.status("probe").await.unwrap().traps, 2);
    t.stop().await;
}
