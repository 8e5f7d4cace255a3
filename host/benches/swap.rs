//! `cargo bench -p host --bench swap`: how long an agent stops handling messages while it
//! is swapped to a new version (snapshot + restore), at 1 KiB, 64 KiB and 1 MiB of state;
//! how long a rollback takes end to end; and, while a client streams requests through 100
//! swaps and rollbacks, how many messages were lost or handled twice.

mod common;

use common::{build_plugins as plugins, emit, percentile};

use std::time::{Duration, Instant};

use agent_host::bus::BusMessage;
use agent_host::config::NodeConfig;
use agent_host::node::{LoadRequest, Node};

const SWAPS: usize = 200;

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
        node.load(LoadRequest {
            component: Some(probe.clone()),
            manifest: None,
            name: Some("probe".into()),
        })
        .await
        .unwrap();

        for (label, size) in [("1k", 1024usize), ("64k", 64 * 1024), ("1m", 1024 * 1024)] {
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

        // Lost and duplicated messages while a client streams `add 1` requests through 100
        // swaps and rollbacks (64 requests in flight; replies must count 1, 2, 3, …).
        let (v1, v2) = (dir.join("counter.wasm"), dir.join("counter_v2.wasm"));
        node.load(LoadRequest {
            component: Some(v1.clone()),
            manifest: None,
            name: Some("counter".into()),
        })
        .await
        .unwrap();
        let mut replies = node
            .bus
            .subscribe("_INBOX.swapbench.>", 4096)
            .await
            .unwrap();
        let publish = |i: u64| {
            let bus = node.bus.clone();
            async move {
                let msg = BusMessage {
                    reply_to: Some(format!("_INBOX.swapbench.{i}")),
                    ..BusMessage::new("agent.to.counter.cmd", "add 1")
                };
                bus.publish(msg).await.unwrap();
            }
        };
        let upgrades = {
            let node = node.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    node.upgrade("counter", &v2).await.unwrap();
                    node.rollback("counter", false).await.unwrap();
                }
            })
        };
        let (mut sent, mut received, mut lost, mut duplicated, mut expected) =
            (0u64, 0u64, 0u64, 0u64, 1u64);
        let started = Instant::now();
        while sent < 64 {
            publish(sent).await;
            sent += 1;
        }
        while received < sent {
            match tokio::time::timeout(Duration::from_secs(5), replies.next()).await {
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
                    if !upgrades.is_finished() {
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
        let elapsed = started.elapsed().as_secs_f64();
        upgrades.await.unwrap();
        emit("swap_stream_messages", sent as f64, "messages");
        emit("swap_stream_msgs_per_s", sent as f64 / elapsed, "msg/s");
        emit("lost_messages", lost as f64, "messages");
        emit("duplicated_messages", duplicated as f64, "messages");
        node.shutdown().await;
    });
}
