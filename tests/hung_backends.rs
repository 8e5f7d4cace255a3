//! A KV backend or message bus that stops answering is the node's fault, not the agent's:
//! the agent's host call returns the WIT `timeout` error after `[defaults]
//! host_call_timeout_ms`, which it can handle, and its instance lives on — it is not
//! abandoned as "blocked in one host call" and restarted.
//!
//! The fault is a decorator around the node's real backends (the embedded bus and KV
//! store) that never answers calls about `hang*` keys and subjects and passes everything
//! else through.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_host::bus::{BusError, BusMessage, MailboxLimits, Subscription, Transport};
use agent_host::node::Node;
use agent_host::storage::{CasOutcome, KvBackend, KvEntry, KvError, Quota, Usage};
use support::{test_config, TestNode};

/// Never returns: a backend that stopped answering.
async fn hang<T>() -> T {
    std::future::pending().await
}

struct HangingKv(Arc<dyn KvBackend>);

#[async_trait::async_trait]
impl KvBackend for HangingKv {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<KvEntry>, KvError> {
        if key.starts_with("hang") {
            return hang().await;
        }
        self.0.get(ns, key).await
    }
    async fn set(&self, ns: &str, key: &str, value: &[u8], quota: &Quota) -> Result<u64, KvError> {
        if key.starts_with("hang") {
            return hang().await;
        }
        self.0.set(ns, key, value, quota).await
    }
    async fn delete(&self, ns: &str, key: &str) -> Result<(), KvError> {
        self.0.delete(ns, key).await
    }
    async fn list_keys(
        &self,
        ns: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, KvError> {
        if prefix.starts_with("hang") {
            return hang().await;
        }
        self.0.list_keys(ns, prefix, limit).await
    }
    async fn compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
        quota: &Quota,
    ) -> Result<CasOutcome, KvError> {
        if key.starts_with("hang") {
            return hang().await;
        }
        self.0
            .compare_and_swap(ns, key, expected, value, quota)
            .await
    }
    async fn usage(&self, ns: &str) -> Result<Usage, KvError> {
        self.0.usage(ns).await
    }
    async fn sync(&self) -> Result<(), KvError> {
        self.0.sync().await
    }
}

struct HangingBus(Arc<dyn Transport>);

#[async_trait::async_trait]
impl Transport for HangingBus {
    async fn publish(&self, msg: BusMessage) -> Result<(), BusError> {
        if msg.subject.starts_with("hang") {
            return hang().await;
        }
        self.0.publish(msg).await
    }
    async fn subscribe_with(
        &self,
        pattern: &str,
        limits: MailboxLimits,
    ) -> Result<Subscription, BusError> {
        self.0.subscribe_with(pattern, limits).await
    }
    async fn request(&self, msg: BusMessage, timeout: Duration) -> Result<BusMessage, BusError> {
        if msg.subject.starts_with("hang") {
            return hang().await;
        }
        self.0.request(msg, timeout).await
    }
    fn dropped(&self) -> u64 {
        self.0.dropped()
    }
    fn max_payload(&self) -> usize {
        self.0.max_payload()
    }
    fn state(&self) -> agent_host::bus::BusState {
        self.0.state()
    }
}

const PROBE: &str = "[agent]\nname = \"probe\"\n[messaging]\npublish = [\"hang.>\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_kv_store_or_bus_gives_the_agent_timeout_and_its_instance_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.defaults.host_call_timeout_ms = 300;
    let node = Node::start_wrapping(config, |bus, store| {
        let bus: Arc<dyn Transport> = Arc::new(HangingBus(bus));
        let store: Arc<dyn KvBackend> = Arc::new(HangingKv(store));
        (bus, store)
    })
    .await
    .unwrap();
    let t = TestNode { node, dir };
    t.load("probe", "probe", PROBE).await;
    let ask = |text: &'static str| {
        let t = &t;
        async move { t.ask("agent.to.probe.x", text).await }
    };

    for call in [
        "kv-get hang.key",
        "kv-set hang.key v",
        "kv-list hang",
        "kv-cas hang.key none v",
        "publish hang.subject x",
        "request hang.subject x",
    ] {
        let started = Instant::now();
        assert_eq!(ask(call).await, "error: timed out", "{call}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{call}: answered after the 300 ms bound, not at the host-call watch ({took:?})"
        );
    }
    // The same instance serves on: nothing trapped, nothing restarted, and the real
    // backends still answer.
    assert_eq!(ask("kv-set ok v").await, "1");
    assert_eq!(ask("kv-get ok").await, "v");
    let s = t.node.status("probe").await.unwrap();
    assert_eq!(
        (s.traps, s.restarts, s.limit_hits.host_call),
        (0, 0, 0),
        "{s:?}"
    );
    assert_eq!(
        ask("seen").await,
        "9",
        "one instance handled all nine messages"
    );
    t.stop().await;
}
