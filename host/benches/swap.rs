//! `cargo bench -p host --features bench --bench swap`: how long an agent stops handling messages while it
//! is swapped to a new version (snapshot + restore), at 1 KiB, 64 KiB and 1 MiB of state;
//! how long a rollback takes end to end; while a client streams requests through 100+
//! swaps and rollbacks, and then through a canary to 100 %, how many messages were lost or
//! handled twice and the rate kept; what a canary's state hand-off costs.
//!
//! `SWAP_BENCH_ONLY=stream` skips the pause measurements (for profiling the stream).

mod common;

use common::{build_plugins as plugins, emit, percentile};

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_host::agent::canary::share_bucket;
use agent_host::agent::plan::RolloutPlan;
use agent_host::bus::BusMessage;
use agent_host::config::NodeConfig;
use agent_host::node::{LoadRequest, Node};

const SWAPS: usize = 200;

/// How long the baseline stream runs, and the least the swap stream runs.
const STREAM_FOR: Duration = Duration::from_secs(2);
/// Conversations the stream is spread over (a `Conversation-Id` header each).
const CONVERSATIONS: u64 = 8;

/// What a client saw while streaming.
struct Streamed {
    sent: u64,
    lost: u64,
    duplicated: u64,
    elapsed: Duration,
}

impl Streamed {
    fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
}

/// Streams `add 1` to `counter` until `during` ends, then collects the outstanding replies.
async fn stream(node: &Arc<Node>, during: impl Future<Output = ()>) -> Streamed {
    stream_with(node, during).await.0
}

async fn stream_with<T>(node: &Arc<Node>, during: impl Future<Output = T>) -> (Streamed, T) {
    let mut replies = node
        .bus
        .subscribe("_INBOX.swapbench.>", 4096)
        .await
        .unwrap();
    let bus = node.bus.clone();
    let publish = |i: u64| {
        let bus = bus.clone();
        async move {
            let msg = BusMessage {
                reply_to: Some(format!("_INBOX.swapbench.{i}")),
                headers: vec![(
                    "Conversation-Id".into(),
                    format!("conversation-{}", i % CONVERSATIONS),
                )],
                ..BusMessage::new("agent.to.counter.cmd", "add 1")
            };
            bus.publish(msg).await.unwrap();
        }
    };
    let first: u64 = ask(node, "agent.to.counter.cmd", "get".into())
        .await
        .parse()
        .unwrap();
    let mut during = std::pin::pin!(during);
    let mut result = None;
    let (mut sent, mut received, mut lost, mut duplicated, mut expected) =
        (0u64, 0u64, 0u64, 0u64, first + 1);
    let started = Instant::now();
    while sent < 64 {
        publish(sent).await;
        sent += 1;
    }
    while received < sent {
        let reply = tokio::select! {
            biased;
            r = tokio::time::timeout(Duration::from_secs(5), replies.next()) => r,
            out = &mut during, if result.is_none() => {
                result = Some(out);
                continue;
            }
        };
        match reply {
            Ok(Some(reply)) => {
                received += 1;
                let count: u64 = std::str::from_utf8(&reply.payload)
                    .unwrap()
                    .parse()
                    .unwrap();
                if count < expected {
                    duplicated += 1;
                } else {
                    lost += count - expected;
                    expected = count + 1;
                }
                if result.is_none() {
                    publish(sent).await;
                    sent += 1;
                }
            }
            _ => {
                lost += sent - received;
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    let result = match result {
        Some(r) => r,
        None => during.await,
    };
    let streamed = Streamed {
        sent,
        lost,
        duplicated,
        elapsed,
    };
    (streamed, result)
}

async fn ask(node: &Node, subject: &str, payload: String) -> String {
    let reply = node
        .send(
            BusMessage::new(subject, payload),
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&reply.payload).into_owned()
}

fn main() {
    let dir = plugins();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = NodeConfig::default();
        cfg.node.data_dir = tmp.path().to_path_buf();
        cfg.http.listen = None;
        cfg.engine.max_agents = 16;
        let node = Node::start(cfg).await.unwrap();
        let probe = dir.join("probe.wasm");
        // The 1 MiB state is over the default snapshot limit (the agent's [kv] max_bytes).
        let manifest = tmp.path().join("probe.toml");
        std::fs::write(
            &manifest,
            "[agent]\nname = \"probe\"\n[limits]\nmax_snapshot_bytes = \"2MiB\"\n",
        )
        .unwrap();
        node.load(LoadRequest {
            component: Some(probe.clone()),
            manifest: Some(manifest),
            name: Some("probe".into()),
        })
        .await
        .unwrap();

        let sizes = match std::env::var("SWAP_BENCH_ONLY").as_deref() {
            Ok("stream") => vec![],
            _ => vec![("1k", 1024usize), ("64k", 64 * 1024), ("1m", 1024 * 1024)],
        };
        for (label, size) in sizes {
            ask(&node, "agent.to.probe.cmd", format!("fill {size}")).await;
            let (mut pauses, mut rollbacks) = (Vec::new(), Vec::new());
            for _ in 0..SWAPS / 2 {
                let report = node.upgrade("probe", &probe).await.unwrap();
                pauses.push(report.pause_us as f64 / 1000.0);
                let started = Instant::now();
                let report = node.rollback("probe", false).await.unwrap();
                rollbacks.push(started.elapsed().as_secs_f64() * 1000.0);
                pauses.push(report.pause_us as f64 / 1000.0);
            }
            emit(
                &format!("swap_pause_p50_ms_{label}"),
                percentile(&mut pauses.clone(), 0.5),
                "ms",
            );
            emit(
                &format!("swap_pause_p99_ms_{label}"),
                percentile(&mut pauses.clone(), 0.99),
                "ms",
            );
            if label == "64k" {
                emit(
                    "swap_pause_p50_ms",
                    percentile(&mut pauses.clone(), 0.5),
                    "ms",
                );
                emit("swap_pause_p99_ms", percentile(&mut pauses, 0.99), "ms");
                emit("rollback_ms", percentile(&mut rollbacks, 0.5), "ms");
            }
        }

        // The stream: `add 1` requests to `counter` (64 in flight) over 8 conversations;
        // replies must count 1, 2, 3, … First with nothing happening (the baseline), then
        // through swaps and rollbacks, then through a canary to 100 %.
        let (v1, v2) = (dir.join("counter.wasm"), dir.join("counter_v2.wasm"));
        node.load(LoadRequest {
            component: Some(v1.clone()),
            manifest: None,
            name: Some("counter".into()),
        })
        .await
        .unwrap();
        let quiet = stream(&node, tokio::time::sleep(STREAM_FOR)).await;
        emit("stream_baseline_msgs_per_s", quiet.rate(), "msg/s");

        let swaps = {
            let node = node.clone();
            async move {
                let started = Instant::now();
                let mut swaps = 0;
                while swaps < 100 || started.elapsed() < STREAM_FOR {
                    node.upgrade("counter", &v2).await.unwrap();
                    node.rollback("counter", false).await.unwrap();
                    swaps += 2;
                }
                swaps
            }
        };
        let (through, swaps) = stream_with(&node, swaps).await;
        emit("swap_stream_swaps", swaps as f64, "swaps and rollbacks");
        emit("swap_stream_messages", through.sent as f64, "messages");
        emit("swap_stream_msgs_per_s", through.rate(), "msg/s");
        emit("lost_messages", through.lost as f64, "messages");
        emit("duplicated_messages", through.duplicated as f64, "messages");

        let canary = {
            let node = node.clone();
            let v2 = dir.join("counter_v2.wasm");
            async move {
                let plan = RolloutPlan::from_args("--steps", None, Some("500ms"), &[]).unwrap();
                let run = node.start_canary("counter", &v2, plan).await.unwrap();
                let mut last = None;
                let watch = async {
                    loop {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if let Some(c) = node.status("counter").await.unwrap().canary {
                            last = Some(c);
                        }
                    }
                };
                let outcome = tokio::select! {
                    o = run.outcome() => o.unwrap(),
                    _ = watch => unreachable!(),
                };
                assert!(outcome.completed, "{}", outcome.text);
                last.expect("the canary was seen running")
            }
        };
        let (during, status) = stream_with(&node, canary).await;
        emit("canary_stream_messages", during.sent as f64, "messages");
        emit("canary_stream_msgs_per_s", during.rate(), "msg/s");
        emit("canary_lost_messages", during.lost as f64, "messages");
        emit(
            "canary_duplicated_messages",
            during.duplicated as f64,
            "messages",
        );
        emit("canary_switches", status.switches as f64, "hand-offs");
        emit("canary_switch_us", status.switch_us_mean, "us");
        node.promote("counter").await.unwrap();

        // The hand-off at 64 KiB of state: `probe` canaried to itself, two conversations on
        // either side of a 50 % step, messages alternating between them.
        ask(&node, "agent.to.probe.cmd", format!("fill {}", 64 * 1024)).await;
        let plan = RolloutPlan::from_args("--steps", Some("50,100"), Some("1h"), &[]).unwrap();
        let _run = node.start_canary("probe", &probe, plan).await.unwrap();
        let blue = (0..)
            .map(|i| format!("c-{i}"))
            .find(|c| share_bucket(c) >= 50)
            .unwrap();
        let green = (0..)
            .map(|i| format!("c-{i}"))
            .find(|c| share_bucket(c) < 50)
            .unwrap();
        for i in 0..SWAPS {
            let conversation = if i % 2 == 0 { &blue } else { &green };
            let msg = BusMessage {
                headers: vec![("Conversation-Id".into(), conversation.clone())],
                ..BusMessage::new("agent.to.probe.cmd", "seen")
            };
            node.send(msg, Some(Duration::from_secs(10))).await.unwrap();
        }
        // `host status` counts are at most 50 ms old.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let c = node.status("probe").await.unwrap().canary.unwrap();
        assert!(c.switches >= SWAPS as u64 - 1, "{c:?}");
        emit("canary_switch_us_64k", c.switch_us_mean, "us");
        node.rollback("probe", false).await.unwrap();
        node.shutdown().await;
    });
}
