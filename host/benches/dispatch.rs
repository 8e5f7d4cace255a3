//! `cargo bench -p host --features bench --bench dispatch`: a message through the embedded bus into a Wasm echo agent
//! and its reply back, against the same pipeline with a native Rust handler, plus the cost
//! of instantiating an agent. Prints one JSON object per metric.
//!
//! `DISPATCH_BENCH_ISOLATED=N` runs only the `handle` export on a live instance, N calls
//! without a reply and N with one, once each: short enough for
//! `valgrind --tool=callgrind`, whose instruction counts do not depend on how busy the
//! machine is (take two N and divide the difference for the cost of one call).

mod common;

use common::{emit, median};

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_host::agent::native::{NativeFactory, NativeGuest};
use agent_host::agent::AgentStore;
use agent_host::bindings::agent::host::messaging::Host as _;
use agent_host::bindings::Message;
use agent_host::bus::{BusMessage, Transport};
use agent_host::capabilities::messaging::MessagingView;
use agent_host::config::NodeConfig;
use agent_host::node::{LoadRequest, Node};

/// Messages per timed run, in flight at once, and runs per variant.
const MESSAGES: usize = 20_000;
const WINDOW: usize = 64;
const RUNS: usize = 7;

/// Pipelined request/reply: keeps WINDOW messages in flight; returns µs per message.
async fn pipeline(bus: &Arc<dyn Transport>, subject: &str, inbox: &str) -> f64 {
    let mut replies = bus
        .subscribe(&format!("{inbox}.>"), WINDOW * 4)
        .await
        .unwrap();
    let msg = |i: usize| BusMessage {
        subject: subject.to_string(),
        reply_to: Some(format!("{inbox}.{i}")),
        headers: Vec::new(),
        payload: bytes::Bytes::from_static(b"ping"),
    };
    let started = Instant::now();
    let mut sent = 0;
    while sent < WINDOW {
        bus.publish(msg(sent)).await.unwrap();
        sent += 1;
    }
    for _ in 0..MESSAGES {
        tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("reply in time")
            .expect("reply");
        if sent < MESSAGES {
            bus.publish(msg(sent)).await.unwrap();
            sent += 1;
        }
    }
    started.elapsed().as_secs_f64() * 1e6 / MESSAGES as f64
}

/// The native baseline: echo written in Rust, run by the same agent runner (mailbox,
/// dedup, metrics, CPU accounting) and replying through the same messaging capability.
struct NativeEcho;

#[async_trait::async_trait]
impl NativeGuest for NativeEcho {
    async fn handle(&mut self, store: &mut AgentStore, msg: &Message) -> Result<(), String> {
        let Some(to) = msg.reply_to.clone() else {
            return Ok(());
        };
        let mut view = MessagingView::of(store);
        match view.publish(to, Vec::new(), msg.payload.clone()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{e:?}")),
            Err(trap) => Err(trap.to_string()),
        }
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = NodeConfig::default();
        cfg.node.data_dir = tmp.path().to_path_buf();
        cfg.http.listen = None;
        cfg.engine.max_agents = 64;
        let isolated = std::env::var("DISPATCH_BENCH_ISOLATED")
            .ok()
            .and_then(|v| v.parse::<usize>().ok());
        if isolated.is_some() {
            // Under valgrind a call runs ~50x slower, so epoch ticks would land inside calls;
            // the CPU check they run reads the thread clock through rustix's vDSO, which
            // valgrind does not map. Echo is far from any CPU budget: no ticks needed.
            cfg.engine.epoch_tick_ms = 60_000;
        }
        let node = Node::start(cfg).await.unwrap();
        node.load(LoadRequest {
            component: Some(common::echo_wasm()),
            manifest: None,
            name: Some("echo".into()),
        })
        .await
        .unwrap();
        if let Some(calls) = isolated {
            for (metric, msg) in isolated_messages() {
                let mean = node.bench_handle("echo", &msg, calls).await.unwrap();
                emit(metric, mean.as_secs_f64() * 1e6, "us");
            }
            node.shutdown().await;
            return;
        }
        let factory: NativeFactory = Arc::new(|| Box::new(NativeEcho) as Box<dyn NativeGuest>);
        node.load_native("native", factory).await.unwrap();

        // Warm up both paths.
        pipeline(&node.bus, "agent.to.echo.ping", "_INBOX.warm1").await;
        pipeline(&node.bus, "agent.to.native.ping", "_INBOX.warm2").await;

        let (mut wasm, mut nat) = (Vec::new(), Vec::new());
        for run in 0..RUNS {
            wasm.push(pipeline(&node.bus, "agent.to.echo.ping", &format!("_INBOX.w{run}")).await);
            nat.push(pipeline(&node.bus, "agent.to.native.ping", &format!("_INBOX.n{run}")).await);
        }
        let ratios: Vec<f64> = wasm.iter().zip(&nat).map(|(w, n)| w / n).collect();
        emit("dispatch_us_per_msg", median(wasm), "us");
        emit("dispatch_native_us_per_msg", median(nat), "us");
        emit("dispatch_ratio_wasm_vs_native", median(ratios), "ratio");

        // Where the Wasm path's time goes: mean time inside the `handle` export call.
        let text = node.metrics.encode();
        let read = |name: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(name) && l.contains("agent=\"echo\""))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        let (sum, count) = (
            read("agent_host_handle_seconds_sum"),
            read("agent_host_handle_seconds_count"),
        );
        emit("dispatch_handle_call_us_mean", sum / count * 1e6, "us");

        // The `handle` export alone, on a live instance with no bus or runner around it:
        // without a reply, and with one (the reply goes through the messaging capability).
        for (metric, msg) in isolated_messages() {
            let mut samples = Vec::new();
            for _ in 0..RUNS {
                let mean = node.bench_handle("echo", &msg, MESSAGES).await.unwrap();
                samples.push(mean.as_secs_f64() * 1e6);
            }
            emit(metric, median(samples), "us");
        }

        // Round-trip latency of one request at a time.
        let mut rtt = Vec::new();
        for _ in 0..2000 {
            let started = Instant::now();
            node.bus
                .request(
                    BusMessage::new("agent.to.echo.ping", "ping"),
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            rtt.push(started.elapsed().as_secs_f64() * 1e6);
        }
        emit("dispatch_rtt_us_p50", median(rtt), "us");

        let samples = node.bench_instantiate("echo", 2000).await.unwrap();
        emit(
            "instantiate_us",
            median(samples.iter().map(|d| d.as_secs_f64() * 1e6).collect()),
            "us",
        );

        node.shutdown().await;
    });
}

/// The messages the isolated `handle` calls get: one asking for no reply, one with a reply
/// subject (the reply goes through the messaging capability to the embedded bus).
fn isolated_messages() -> [(&'static str, Message); 2] {
    let message = |reply_to: Option<&str>| Message {
        id: "1".into(),
        subject: "agent.to.echo.ping".into(),
        reply_to: reply_to.map(str::to_string),
        headers: Vec::new(),
        payload: b"ping".to_vec(),
    };
    [
        ("handle_call_isolated_us", message(None)),
        (
            "handle_call_with_reply_isolated_us",
            message(Some("_INBOX.isolated")),
        ),
    ]
}
