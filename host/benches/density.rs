//! `cargo bench -p host --features bench --bench density`: how many agents one node holds and what each costs.
//!
//! Loads `DENSITY_AGENTS` (default 10,000) copies of `plugins/echo` on one in-process node,
//! each under its own name, then sends every one of them a request and waits for its reply,
//! so every agent is live and has handled a message. Prints JSON lines: `agents_loaded`,
//! `load_seconds` (all loads, one after the other, as `host load` would), `rss_kib_per_agent`
//! (growth of the process's resident memory over the loads and the messages, divided by the
//! agents), `mappings_per_agent` and the pool settings used. `DENSITY_MAX_MEMORY_MIB` sets
//! `[engine] max_memory` (address space reserved per memory slot; default: the node's, 64).

mod common;

use std::time::{Duration, Instant};

use agent_host::bus::BusMessage;
use agent_host::config::NodeConfig;
use agent_host::node::{LoadRequest, Node};
use agent_host::telemetry::metrics::resident_memory_bytes;
use common::{emit, knob};

fn main() {
    let agents = knob("DENSITY_AGENTS", 10_000) as usize;
    let default_mib = NodeConfig::default().engine.max_memory >> 20;
    let max_memory = knob("DENSITY_MAX_MEMORY_MIB", default_mib) << 20;
    let echo = common::echo_wasm();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = NodeConfig::default();
    cfg.node.data_dir = dir.path().to_path_buf();
    cfg.http.listen = None;
    cfg.engine.max_agents = u32::try_from(agents).expect("agents fit in u32");
    cfg.engine.max_memory = max_memory;
    cfg.defaults.memory = max_memory;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let node = Node::start(cfg).await.expect("node starts");
        let rss_before = resident_memory_bytes().expect("RSS from /proc");
        let maps_before = mappings();

        let started = Instant::now();
        for i in 0..agents {
            let req = LoadRequest {
                component: Some(echo.clone()),
                manifest: None,
                name: Some(format!("echo-{i}")),
            };
            if let Err(e) = node.load(req).await {
                panic!(
                    "agent {i} of {agents} does not load: {e:#} ({} mappings)",
                    mappings()
                );
            }
        }
        let load_seconds = started.elapsed().as_secs_f64();
        assert_eq!(
            node.engine.compiled_count(),
            1,
            "one component, compiled once"
        );

        let started = Instant::now();
        for i in 0..agents {
            let msg = BusMessage::new(format!("agent.to.echo-{i}.x"), "hi");
            let reply = node.send(msg, Some(Duration::from_secs(10))).await;
            let reply = reply.expect("a reply").expect("a reply when waiting");
            assert_eq!(&reply.payload[..], b"hi");
        }
        let first_messages_seconds = started.elapsed().as_secs_f64();
        let rss_after = resident_memory_bytes().expect("RSS from /proc");

        // A reply can arrive before its agent counts the message as handled.
        let settle = Instant::now();
        let mut live = node.list().await;
        while live.iter().any(|a| a.handled != 1) && settle.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            live = node.list().await;
        }
        assert!(
            live.iter().all(|a| a.handled == 1),
            "every agent handled one"
        );
        emit("agents_loaded", live.len() as f64, "agents");
        emit("load_seconds", load_seconds, "s");
        emit(
            "load_us_per_agent",
            load_seconds * 1e6 / agents as f64,
            "us",
        );
        emit("first_message_seconds", first_messages_seconds, "s");
        let growth = rss_after.saturating_sub(rss_before) as f64;
        emit("rss_kib_per_agent", growth / 1024.0 / agents as f64, "KiB");
        emit("rss_mib_total", rss_after as f64 / (1 << 20) as f64, "MiB");
        if let Ok(path) = std::env::var("DENSITY_DUMP_MAPS") {
            let _ = std::fs::copy("/proc/self/smaps", path);
        }
        let maps = mappings().saturating_sub(maps_before) as f64;
        emit("mappings_per_agent", maps / agents as f64, "mappings");
        emit("pool_max_agents", agents as f64, "agents");
        emit("pool_max_memory_mib", (max_memory >> 20) as f64, "MiB");
        node.shutdown().await;
    });
}

/// Memory mappings of the process: Linux allows `vm.max_map_count` (65,530 by default).
fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().count())
        .unwrap_or(0)
}
