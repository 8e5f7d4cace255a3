//! Agents' storage on JetStream KV: the same get/set/compare-and-swap/quota/isolation as the
//! embedded store, kept in a bucket every node on the cluster shares, so an agent's data
//! and state survive moving it to another node.

use std::sync::Arc;
use std::time::Duration;

use agent_host::storage::{CasOutcome, KvBackend, KvError, NatsKv, NatsKvOptions, Quota, Usage};

use super::agents::node_on;
use super::nats_server::NatsServer;

async fn open_kv(server: &NatsServer, bucket: &str) -> NatsKv {
    let client = async_nats::connect(server.url()).await.unwrap();
    let options = NatsKvOptions {
        bucket: bucket.to_string(),
        replicas: 1,
        timeout: Duration::from_secs(5),
    };
    NatsKv::open(client, &options).await.expect("bucket opens")
}

const ALICE: &str = "01936f11-4ea2-7000-8000-00000000a11c";
const QUOTA: Quota = Quota {
    max_bytes: 64,
    max_keys: 3,
};

#[tokio::test]
async fn an_agent_gets_sets_swaps_and_is_held_to_its_quota_on_jetstream_kv() {
    let Some(server) = NatsServer::start("nats kv through an agent") else {
        return;
    };
    let t = node_on(&server).await;
    let limited = "[agent]\nname = \"probe\"\n[kv]\nmax_bytes = \"64B\"\n";
    t.load("probe", "probe", limited).await;
    let ask = |cmd: &'static str| t.ask("agent.to.probe.cmd", cmd);

    let rev: u64 = ask("kv-set user.42 ada").await.parse().expect("a revision");
    assert_eq!(ask("kv-get user.42").await, "ada");
    assert_eq!(ask("kv-get missing").await, "none");
    let swapped = t
        .ask("agent.to.probe.cmd", &format!("kv-cas user.42 {rev} grace"))
        .await;
    let rev2: u64 = swapped
        .strip_prefix("swapped ")
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{swapped}"));
    assert!(rev2 > rev, "revisions grow");
    let stale = t
        .ask("agent.to.probe.cmd", &format!("kv-cas user.42 {rev} eve"))
        .await;
    assert_eq!(
        stale,
        format!("conflict Some({rev2})"),
        "a stale revision conflicts"
    );
    assert_eq!(ask("kv-get user.42").await, "grace");
    assert!(ask("kv-cas lock none me").await.starts_with("swapped "));
    assert!(ask("kv-cas lock none you")
        .await
        .starts_with("conflict Some("));
    assert_eq!(ask("kv-list user.").await, "user.42");

    let big = format!("kv-set big {}", "x".repeat(100));
    let over = t.ask("agent.to.probe.cmd", &big).await;
    assert!(over.starts_with("error: quota exceeded:"), "{over}");
    assert!(over.contains("[kv] max_bytes"), "names the field: {over}");
    let bad = ask("kv-set bad*key v").await;
    assert!(bad.starts_with("error: invalid:"), "{bad}");
    t.stop().await;
}

#[tokio::test]
async fn agents_cannot_see_each_others_keys_and_the_values_sit_under_their_id_in_the_bucket() {
    let Some(server) = NatsServer::start("nats kv isolation") else {
        return;
    };
    let t = node_on(&server).await;
    let alice = t.load("probe", "alice", "").await;
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

    // Any JetStream client sees the same data: bucket AGENT_KV, key {agent id}.{key}.
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let bucket = js.get_key_value("AGENT_KV").await.unwrap();
    let value = bucket.get(format!("{}.shared", alice.id)).await.unwrap();
    assert_eq!(value.as_deref(), Some(&b"alice-value"[..]));
    t.stop().await;
}

#[tokio::test]
async fn an_agents_storage_and_state_survive_moving_it_to_another_node() {
    let Some(server) = NatsServer::start("nats kv survives a move") else {
        return;
    };
    let counter = "[agent]\nname = \"counter\"\nid = \"01936f11-4ea2-7000-8000-0000000000c1\"\n";
    let probe = "[agent]\nname = \"probe\"\nid = \"01936f11-4ea2-7000-8000-0000000000b2\"\n";

    let first = node_on(&server).await;
    first.load("counter", "counter", counter).await;
    first.load("probe", "probe", probe).await;
    assert_eq!(first.ask("agent.to.counter.cmd", "add 5").await, "5");
    first
        .ask("agent.to.probe.cmd", "kv-set note from-the-first-node")
        .await;
    first.stop().await;

    // Another node: its own (empty) data dir, the same NATS.
    let second = node_on(&server).await;
    second.load("counter", "counter", counter).await;
    second.load("probe", "probe", probe).await;
    assert_eq!(
        second.ask("agent.to.counter.cmd", "get").await,
        "5",
        "the counter's state came back from its snapshot in JetStream KV"
    );
    assert_eq!(
        second.ask("agent.to.probe.cmd", "kv-get note").await,
        "from-the-first-node"
    );
    second.stop().await;
}

#[tokio::test]
async fn of_many_concurrent_swaps_from_two_nodes_exactly_one_wins() {
    let Some(server) = NatsServer::start("nats kv concurrent swaps") else {
        return;
    };
    let nodes = [
        Arc::new(open_kv(&server, "AGENT_KV").await),
        Arc::new(open_kv(&server, "AGENT_KV").await),
    ];
    // Room for every contender's reservation at once (see the storage module's docs).
    let roomy = Quota {
        max_bytes: 1 << 20,
        max_keys: 10,
    };
    let start = nodes[0]
        .set(ALICE, "task.7", b"open", &roomy)
        .await
        .unwrap();
    let claims = (0..16).map(|i| {
        let kv = nodes[i % 2].clone();
        tokio::spawn(async move {
            let me = format!("worker-{i:02}");
            kv.compare_and_swap(ALICE, "task.7", Some(start), me.as_bytes(), &roomy)
                .await
                .unwrap()
        })
    });
    let outcomes = futures::future::join_all(claims).await;
    let won = outcomes
        .iter()
        .filter(|o| matches!(o.as_ref().unwrap(), CasOutcome::Swapped(_)))
        .count();
    assert_eq!(won, 1, "{outcomes:?}");
    let usage = nodes[1].usage(ALICE).await.unwrap();
    assert_eq!(
        usage,
        Usage {
            bytes: 6 + "worker-NN".len() as u64,
            keys: 1
        },
        "the loser's reservations were all given back"
    );
}

#[tokio::test]
async fn usage_follows_writes_and_deletes_and_the_quota_holds_across_nodes() {
    let Some(server) = NatsServer::start("nats kv quota") else {
        return;
    };
    let (a, b) = (
        open_kv(&server, "QUOTA_KV").await,
        open_kv(&server, "QUOTA_KV").await,
    );
    a.set(ALICE, "k1", &[1; 30], &QUOTA).await.unwrap();
    assert_eq!(b.usage(ALICE).await.unwrap(), Usage { bytes: 32, keys: 1 });
    a.set(ALICE, "k1", &[1; 10], &QUOTA).await.unwrap();
    assert_eq!(b.usage(ALICE).await.unwrap(), Usage { bytes: 12, keys: 1 });
    b.set(ALICE, "k2", &[2; 40], &QUOTA).await.unwrap();
    let over = a.set(ALICE, "k3", &[3; 20], &QUOTA).await.unwrap_err();
    assert!(
        matches!(&over, KvError::QuotaExceeded(m) if m.contains("uses 54 of 64 bytes")),
        "{over}"
    );
    a.delete(ALICE, "k2").await.unwrap();
    a.delete(ALICE, "k2")
        .await
        .expect("deleting an absent key is fine");
    a.set(ALICE, "k3", &[3; 20], &QUOTA).await.unwrap();
    assert_eq!(b.usage(ALICE).await.unwrap(), Usage { bytes: 34, keys: 2 });

    let keys = b.list_keys(ALICE, "", 10).await.unwrap();
    assert_eq!(keys, ["k1", "k3"], "deleted keys are not listed");
    assert_eq!(b.list_keys(ALICE, "k3", 10).await.unwrap(), ["k3"]);
    assert_eq!(b.list_keys(ALICE, "", 1).await.unwrap(), ["k1"]);
    let other = "01936f11-4ea2-7000-8000-0000000000ff";
    assert!(b.list_keys(other, "", 10).await.unwrap().is_empty());
    assert_eq!(b.get(other, "k1").await.unwrap(), None);
}

/// Snapshots go to the shared bucket too: one over the agent's limit (here its 64 KiB KV
/// quota; 200 KB would fit JetStream's own 1 MB message limit) is not written there, so the
/// bucket keeps the last good one for whichever node starts the agent next.
#[tokio::test]
async fn a_snapshot_over_the_limit_is_not_persisted_to_jetstream_kv_either() {
    use agent_host::agent::snapshots;
    let Some(server) = NatsServer::start("nats snapshot limit") else {
        return;
    };
    let url = server.url();
    let t = crate::support::TestNode::start_with(move |c| {
        c.nats.url = Some(url);
        c.node.snapshot_every = 1;
    })
    .await;
    let manifest = "[agent]\nname = \"hostile\"\n[kv]\nmax_bytes = \"64KiB\"\n";
    let hostile = t.load("hostile", "hostile", manifest).await;
    let ask = |cmd: &'static str| t.ask("agent.to.hostile.attack", cmd);
    let ballast = async |store: &dyn KvBackend| {
        let (_, state) = snapshots::load(store, &hostile.id).await?;
        let state: serde_json::Value = serde_json::from_slice(&state).ok()?;
        state["ballast"].as_str().map(str::len)
    };
    assert_eq!(ask("bloat 1000").await, "bloat: 1000 bytes of ballast");
    let store = t.node.store.clone();
    let persisted = crate::support::eventually(Duration::from_secs(10), async || {
        ballast(store.as_ref()).await == Some(1000)
    })
    .await;
    assert!(persisted, "the good snapshot reaches the bucket");

    assert_eq!(ask("bloat 200000").await, "bloat: 201000 bytes of ballast");
    assert_eq!(ask("ping").await, "pong");
    let refused = crate::support::eventually(Duration::from_secs(10), async || {
        t.node.status("hostile").await.unwrap().limit_hits.snapshot == 2
    })
    .await;
    assert!(refused, "both snapshots over the limit refused");
    t.node.shutdown().await;
    assert_eq!(
        ballast(store.as_ref()).await,
        Some(1000),
        "the bucket kept the good one"
    );
}
