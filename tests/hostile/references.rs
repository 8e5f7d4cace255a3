//! What an agent names is what it reaches: a `send` grant for one agent cannot be stretched
//! to another by a made-up reference (a granted name with another agent's id, or a cluster
//! holding dots), and a `Nats-Msg-Id` an agent sets cannot make anyone drop a message that
//! is not the agent's own.

use std::time::Duration;

use agent_host::agent::AgentSummary;
use agent_host::bus::BusMessage;

use super::{has, survived, HOSTILE, MACHINE};
use crate::support::{eventually, TestNode};

/// `hostile`, allowed to send to `victim-u` only (and to publish under `hostile.>` and to the
/// raw agent-ref subjects of `victim-u`, to try a forged subject directly).
fn granted_victim_only() -> String {
    HOSTILE.replace(
        "[messaging]\npublish = [\"hostile.>\"]",
        "[messaging]\npublish = [\"hostile.>\", \"agent.default.victim-u.>\", \"agent.to.victim-u.>\"]\nsend = [\"victim-u\"]",
    )
}

/// A node with unified subjects (`send` by reference goes to agent-ref subjects), running
/// `hostile` next to two probes: `victim-u`, which it may send to, and `admin-u`, which it
/// may not.
async fn node_with_victim_and_admin() -> (TestNode, AgentSummary, AgentSummary) {
    let t = TestNode::start_with(|c| c.node.unified_subjects = true).await;
    t.load("hostile", "hostile", &granted_victim_only()).await;
    let victim = t.load("probe", "victim-u", "").await;
    let admin = t.load("probe", "admin-u", "").await;
    (t, victim, admin)
}

/// Messages agent `name` has processed, whatever their outcome.
async fn processed(t: &TestNode, name: &str) -> u64 {
    let s = t.node.status(name).await.unwrap();
    s.handled + s.errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_grant_for_one_agent_reaches_no_other_agent_by_any_reference() {
    let _shared = MACHINE.read().await;
    let (t, victim, admin) = node_with_victim_and_admin().await;
    let (v, a) = (&victim.id, &admin.id);

    // The granted name with the admin's id: the id names another agent, outside the grant.
    let reply = survived(&t, &format!("send-ref default victim-u {a} cmd")).await;
    has(
        &reply,
        &[
            "send-ref: refused: denied:",
            &format!("id {a} is agent 'default.admin-u', not 'victim-u'"),
        ],
    );
    let reply = survived(&t, &format!("ask-ref default victim-u {a} cmd")).await;
    has(&reply, &["ask-ref: refused: denied:"]);

    // Every field is one token of its kind: dots, wildcards, reserved or empty clusters,
    // ids that are not the canonical form of a UUID.
    for (cluster, id, why) in [
        ("to.admin-u", v.as_str(), "agent reference cluster"),
        ("default.admin-u", v.as_str(), "agent reference cluster"),
        ("*", v.as_str(), "agent reference cluster"),
        ("''", v.as_str(), "agent reference cluster"),
        ("to", v.as_str(), "is reserved"),
        ("broadcast", v.as_str(), "is reserved"),
        ("default", &format!("{a}.command.x"), "agent reference id"),
        ("default", "*", "agent reference id"),
        ("default", &a.to_uppercase(), "agent reference id"),
    ] {
        let reply = survived(&t, &format!("send-ref {cluster} victim-u {id} cmd")).await;
        has(&reply, &["send-ref: refused: invalid:", why]);
    }
    let reply = survived(&t, &format!("send-ref default victim-u.x {v} cmd")).await;
    has(&reply, &["refused: invalid: agent name"]);
    // A granted agent under a reference that is not its own reaches nobody.
    let reply = survived(&t, &format!("send-ref other victim-u {v} cmd")).await;
    has(
        &reply,
        &["refused: invalid:", "does not reach agent 'victim-u'"],
    );

    // The one reference that is the victim's own is delivered.
    let before = processed(&t, "victim-u").await;
    let reply = survived(&t, &format!("send-ref default victim-u {v} cmd")).await;
    assert_eq!(reply, "send-ref: sent");
    assert!(
        eventually(Duration::from_secs(5), async || processed(&t, "victim-u")
            .await
            > before)
        .await,
        "the victim got its message"
    );

    // A forged subject published straight to the admin's agent-ref inbox (the grant to
    // publish covers `agent.default.victim-u.>`) is dropped by the admin's runner: the
    // subject names victim-u, the id is admin-u's. A client is held to the same rule.
    let forged = format!("agent.default.victim-u.{a}.command.cmd");
    let reply = survived(&t, &format!("forbidden {forged}")).await;
    assert_eq!(reply, format!("forbidden: published to {forged}"));
    t.publish(BusMessage::new(forged.clone(), "from a client"))
        .await;
    let metrics = || t.node.metrics.encode();
    let dropped = "agent_host_misaddressed_dropped_total{agent=\"admin-u\",cluster=\"default\"} 2";
    assert!(
        eventually(Duration::from_secs(5), async || metrics().contains(dropped)).await,
        "both forged messages dropped and counted:\n{}",
        metrics()
    );
    // The admin's own reference still reaches it, and it handled nothing else.
    let own = format!("agent.default.admin-u.{a}.command.cmd");
    assert_eq!(t.ask(&own, "seen").await, "1");
    // (The reply leaves while `handle` runs; the count follows when it returns.)
    assert!(
        eventually(Duration::from_secs(5), async || processed(&t, "admin-u")
            .await
            == 1)
        .await
    );
    let s = t.node.status("hostile").await.unwrap();
    assert!(s.denied >= 2, "the denied sends are counted: {s:?}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_make_others_drop_a_message_by_publishing_its_id_first() {
    let _shared = MACHINE.read().await;
    let (t, _victim, _admin) = node_with_victim_and_admin().await;

    // The attacker publishes id "order-42" to the victim and as a broadcast (every agent on
    // the node hears it), then a client sends its own message with that id.
    let reply = survived(&t, "publish-id agent.to.victim-u.cmd order-42 seen").await;
    assert_eq!(reply, "publish-id: published order-42");
    let grants = HOSTILE.replace("hostile.>", "hostile.>\", \"agent.broadcast.>");
    t.load(
        "hostile",
        "spreader",
        &grants.replace("name = \"hostile\"", "name = \"spreader\""),
    )
    .await;
    let reply = t
        .ask(
            "agent.to.spreader.x",
            "publish-id agent.broadcast.all order-42 seen",
        )
        .await;
    assert_eq!(reply, "publish-id: published order-42");
    assert!(
        eventually(Duration::from_secs(5), async || {
            t.node.status("admin-u").await.unwrap().errors
                + t.node.status("admin-u").await.unwrap().handled
                >= 1
        })
        .await
    );

    let mut victim_seen = 0;
    for agent in ["victim-u", "admin-u"] {
        let client = BusMessage::new(format!("agent.to.{agent}.cmd"), "seen")
            .with_header("Nats-Msg-Id", "order-42");
        let reply = t
            .request(client)
            .await
            .expect("the client's message is handled");
        let seen: u64 = String::from_utf8_lossy(&reply.payload).parse().unwrap();
        assert!(
            seen >= 2,
            "{agent} handled the client's order-42 too ({seen})"
        );
        if agent == "victim-u" {
            victim_seen = seen;
        }
    }
    let metrics = t.node.metrics.encode();
    for agent in ["victim-u", "admin-u"] {
        has(
            &metrics,
            &[&format!(
                "agent_host_duplicates_dropped_total{{agent=\"{agent}\",cluster=\"default\"}} 0"
            )],
        );
    }

    // An agent's id marks its own messages as copies of each other: a retry is dropped.
    survived(&t, "publish-id agent.to.victim-u.cmd retry-7 seen").await;
    survived(&t, "publish-id agent.to.victim-u.cmd retry-7 seen").await;
    let dropped = "agent_host_duplicates_dropped_total{agent=\"victim-u\",cluster=\"default\"} 1";
    let metrics = || t.node.metrics.encode();
    assert!(
        eventually(Duration::from_secs(5), async || metrics().contains(dropped)).await,
        "the second copy was dropped as a duplicate"
    );
    let seen = t.ask("agent.to.victim-u.cmd", "seen").await;
    assert_eq!(seen, (victim_seen + 2).to_string(), "one copy and this ask");
    t.stop().await;
}
