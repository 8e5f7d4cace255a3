//! A hostile agent next to a well-behaved one (`plugins/hostile` beside `echo`): every
//! attack is contained — the attacker gets an error, or its instance traps and is
//! restarted — and reported (log line, metric, `Node::status` / `host status`), while the
//! node and its neighbour keep serving, at nearly full speed.

mod support;

/// The CPU budget charges CPU: neither the wait for a turn nor a busy machine.
#[path = "hostile/cpu.rs"]
mod cpu;
#[path = "hostile/logs.rs"]
mod logs;

/// A reference or a message id an agent makes up reaches no one it does not name.
#[path = "hostile/references.rs"]
mod references;

/// A stalling `init` or `restore` is cut at its wall-time bound; nothing else waits on it.
#[path = "hostile/stalls.rs"]
mod stalls;

/// Headers weigh their framing and are counted; mailboxes are bounded in bytes.
#[path = "hostile/memory.rs"]
mod memory;

/// What the node stores or reads for an agent, a local user or a client: bounded, private.
#[path = "hostile/storage.rs"]
mod storage;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_host::agent::{AgentState, AgentSummary};
use agent_host::bus::BusMessage;
use sha2::{Digest, Sha256};
use support::{plugin, stderr, stdout, NodeProcess, TestNode};

/// What the hostile agent is granted: little, with tight limits.
const HOSTILE: &str = r#"
[agent]
name = "hostile"
[messaging]
publish = ["hostile.>"]
[kv]
max_bytes = "256KiB"
[limits]
memory = "16MiB"
cpu_ms_per_message = 50
max_message_bytes = "64KiB"
publish_per_second = 100
"#;

const ATTACK: &str = "agent.to.hostile.attack";

/// The throughput test runs alone on the machine; the other tests may share it.
static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A node running `hostile` (with `manifest`) and `echo`. A trapping message is
/// dead-lettered at once, and a host call may block for 0.3 s (+ the watch's 1 s margin).
async fn node_with(manifest: &str, max_traps_per_message: u32) -> (TestNode, AgentSummary) {
    let t = TestNode::start_with(|c| {
        c.node.max_traps_per_message = max_traps_per_message;
        c.defaults.host_call_timeout_ms = 300;
    })
    .await;
    let hostile = t.load("hostile", "hostile", manifest).await;
    t.load("echo", "echo", "").await;
    (t, hostile)
}

/// Sends an attack the hostile agent survives; returns what it says happened.
async fn survived(t: &TestNode, attack: &str) -> String {
    t.ask(ATTACK, attack).await
}

/// Sends an attack that kills the instance; returns once the agent serves again.
async fn fatal(t: &TestNode, attack: &str) {
    t.publish(BusMessage::new(ATTACK, attack.to_string())).await;
    assert_eq!(t.ask(ATTACK, "ping").await, "pong", "after {attack}");
}

async fn echo_still_serves(t: &TestNode) {
    assert_eq!(t.ask("agent.to.echo.x", "still here").await, "still here");
}

/// Asserts that `text` contains every one of `needles`.
fn has(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
    }
}

/// Asserts that `text` contains none of `needles`.
fn lacks(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            !text.contains(needle),
            "did not expect {needle:?} in:\n{text}"
        );
    }
}

async fn next_on(sub: &mut agent_host::bus::Subscription) -> BusMessage {
    let next = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    next.expect("a message within 5 s")
        .expect("subscription open")
}

fn limit_metric(limit: &str, value: u64) -> String {
    format!("agent_host_limit_hits_total{{agent=\"hostile\",cluster=\"default\",limit=\"{limit}\"}} {value}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_that_kill_the_instance_are_stopped_restarted_and_reported() {
    let _shared = MACHINE.read().await;
    let (t, _) = node_with(HOSTILE, 1).await;
    let mut dlq = t.node.bus.subscribe("agent.dlq.hostile", 16).await.unwrap();
    // (attack, what the error says, the limit counter it moves)
    let cases = [
        ("spin", "CPU budget of 50 ms", Some("cpu")),
        ("overflow", "stack overflow", Some("stack")),
        ("trap", "the agent panicked", None),
        (
            "alloc abort",
            "growth beyond [limits] memory was refused",
            None,
        ),
        (
            "sleep 60000",
            "blocked in one host call for more than 1.3",
            Some("host_call"),
        ),
    ];
    for (n, (attack, cause, limit)) in cases.into_iter().enumerate() {
        let started = Instant::now();
        fatal(&t, attack).await;
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{attack}: stopped quickly"
        );

        let s = t.node.status("hostile").await.unwrap();
        let n = n as u64 + 1;
        assert_eq!(
            (s.traps, s.restarts),
            (n, n),
            "{attack}: one trap, one restart"
        );
        assert_eq!(s.state, AgentState::Running, "{attack}");
        let error = s.last_error.unwrap_or_default();
        has(&error, &[cause]);
        lacks(&error, &["wasm backtrace"]); // short and readable

        let dead = next_on(&mut dlq).await;
        assert_eq!(&dead.payload[..], attack.as_bytes());
        has(dead.header("Agent-Error").unwrap(), &[cause]);
        if let Some(limit) = limit {
            assert!(
                t.node.metrics.encode().contains(&limit_metric(limit, 1)),
                "{limit}"
            );
        }
        echo_still_serves(&t).await;
    }
    let hits = t.node.status("hostile").await.unwrap().limit_hits;
    assert_eq!((hits.cpu, hits.stack, hits.host_call), (1, 1, 1));
    assert!(
        hits.memory >= 1,
        "the refused growths behind `alloc abort` are counted"
    );
    let echo = t.node.status("echo").await.unwrap();
    assert_eq!((echo.traps, echo.restarts, echo.denied), (0, 0, 0));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_through_the_host_get_errors_and_the_attacker_keeps_its_instance() {
    let _shared = MACHINE.read().await;
    let (t, hostile) = node_with(HOSTILE, 1).await;
    let victim = t.load("probe", "victim", "").await;
    assert_eq!(
        t.ask("agent.to.victim.c", "kv-set secret s3cr3t").await,
        "1"
    );

    // Memory: growth past 16 MiB fails inside the agent, which carries on.
    let reply = survived(&t, "alloc").await;
    let mib = reply.trim_start_matches("alloc: growth refused after ");
    let mib: u64 = mib.trim_end_matches(" MiB").parse().unwrap();
    assert!((8..16).contains(&mib), "{reply}");
    let refused = t.node.status("hostile").await.unwrap().limit_hits.memory;
    assert!(refused >= 1, "counted");
    has(
        &t.node.metrics.encode(),
        &[&limit_metric("memory", refused)],
    );

    // Grants: publishing outside them is denied (and counted); the sender header is the host's.
    let reply = survived(&t, "forbidden agent.to.victim.c").await;
    has(&reply, &["denied", "[messaging] publish"]);
    let mut watch = t.node.bus.subscribe("hostile.spoof", 4).await.unwrap();
    let forged = format!("default.victim.{}", victim.id);
    survived(&t, &format!("spoof hostile.spoof {forged}")).await;
    let got = next_on(&mut watch).await;
    let senders: Vec<_> = got.header_values("Agent-Ref").collect();
    assert_eq!(senders.len(), 1, "{:?}", got.headers);
    assert_eq!(senders[0], format!("default.hostile.{}", hostile.id));
    let denied = t.node.status("hostile").await.unwrap().denied;
    assert_eq!(denied, 2, "forbidden + spoof");

    // Sizes and quotas.
    let reply = survived(&t, "big 100000 hostile.big").await;
    has(&reply, &["at most 65536", "max_message_bytes"]);
    let reply = survived(&t, "big-header 100000 hostile.big").await;
    has(
        &reply,
        &["big-header: refused: invalid: payload is 5 bytes and its headers 100021 bytes; at most 65536 allowed ([limits] max_message_bytes)"],
    );
    let reply = survived(&t, &format!("other-kv {} secret", victim.id)).await;
    lacks(&reply, &["FOUND", "s3cr3t"]);
    has(&reply, &["list-keys -> []"]); // only its own, empty namespace
    has(
        &survived(&t, "hoard").await,
        &["quota exceeded", "[kv] max_bytes"],
    );

    // WASI: no files, no environment, no sockets.
    lacks(&survived(&t, "fs").await, &["-> OK"]);
    has(&survived(&t, "env").await, &["env: vars []; args []"]);
    lacks(&survived(&t, "net").await, &["-> OK"]);

    // Time waiting in a host call is not charged as CPU (50 ms budget, 100 ms sleep).
    assert_eq!(survived(&t, "sleep 100").await, "slept 100 ms");

    // A flood gets one second's worth of its publish rate (100) through, the rest is
    // refused with `quota-exceeded`, counted; slow subscribers lose messages, counted. 500
    // publishes take ~10 ms of the 50 ms budget in a debug build (2,000 took 40-47 ms and
    // sometimes tripped it).
    let slow = t.node.bus.subscribe("hostile.flood", 16).await.unwrap();
    let reply = survived(&t, "flood 500 hostile.flood").await;
    has(
        &reply,
        &["; first error: quota exceeded: agent 'hostile' sends more than 100 messages per second ([limits] publish_per_second)"],
    );
    let sent = reply.trim_start_matches("flood: published ");
    let sent: u64 = sent[..sent.find(' ').unwrap()].parse().unwrap();
    assert!((100..=110).contains(&sent), "one second's burst: {reply}");
    let refused = t
        .node
        .status("hostile")
        .await
        .unwrap()
        .limit_hits
        .publish_rate;
    assert_eq!(refused, 500 - sent);
    has(
        &t.node.metrics.encode(),
        &[&limit_metric("publish_rate", refused)],
    );
    let dropped = t.node.bus.dropped();
    assert!(dropped >= sent - 16, "dropped {dropped}");
    drop(slow);
    echo_still_serves(&t).await;
    // An endless flood is refused too, until the CPU budget stops it.
    fatal(&t, "flood 1000000000 hostile.flood").await;

    let s = t.node.status("hostile").await.unwrap();
    assert_eq!(
        (s.traps, s.restarts),
        (1, 1),
        "only the endless flood trapped"
    );
    assert_eq!(s.limit_hits.cpu, 1);
    assert_eq!(t.ask("agent.to.victim.c", "kv-get secret").await, "s3cr3t");
    echo_still_serves(&t).await;
    t.stop().await;
}

/// `hostile` with `[config] init = ...` (see plugins/hostile), loaded as `name`.
fn with_init(name: &str, init: &str) -> String {
    HOSTILE.replace("name = \"hostile\"", &format!("name = \"{name}\""))
        + &format!("[config]\ninit = \"{init}\"\n")
}

/// Waits until agent `name` is marked failed; its status then.
async fn failed_within(t: &TestNode, name: &str, limit: Duration) -> AgentSummary {
    let started = Instant::now();
    loop {
        let s = t.node.status(name).await.unwrap();
        if s.state == AgentState::Failed || started.elapsed() > limit {
            assert_eq!(s.state, AgentState::Failed, "{s:?}");
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_looping_agents_are_marked_failed_not_restarted_forever_and_the_node_carries_on() {
    let _shared = MACHINE.read().await;
    let (t, _) = node_with(HOSTILE, 1).await;

    // An init that always traps: the load is refused, nothing of it stays.
    let broken = with_init("broken", "panic");
    let err = t.try_load("hostile", "broken", &broken).await.unwrap_err();
    has(
        &err.to_string(),
        &["init of agent 'broken' trapped", "panicked"],
    );

    // An init that traps on every restart: one trap, eight restarts with backoff, failed.
    let looper = with_init("looper", "panic-on-restart");
    t.load("hostile", "looper", &looper).await;
    t.publish(BusMessage::new("agent.to.looper.x", "trap"))
        .await;
    let s = failed_within(&t, "looper", Duration::from_secs(10)).await;
    assert_eq!(s.restarts, 8, "eight attempts, then it stops");
    has(&s.last_error.unwrap(), &["init of agent 'looper' trapped"]);
    let events: Vec<_> = s.events.iter().map(|e| e.text.as_str()).collect();
    has(
        &events.join("\n"),
        &["marked failed: restarted 8 times in a row"],
    );

    // A handler that traps on every message: each is dead-lettered until the ninth restart.
    for _ in 0..9 {
        t.publish(BusMessage::new(ATTACK, "trap")).await;
    }
    let s = failed_within(&t, "hostile", Duration::from_secs(10)).await;
    assert_eq!((s.restarts, s.dead_lettered), (8, 8), "{s:?}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    for name in ["looper", "hostile"] {
        assert_eq!(
            t.node.status(name).await.unwrap().restarts,
            8,
            "{name}: no more restarts"
        );
    }
    let listed: Vec<_> = t
        .node
        .list()
        .await
        .into_iter()
        .map(|a| (a.name, a.state))
        .collect();
    let failed = AgentState::Failed;
    let expected = [
        ("echo", AgentState::Running),
        ("hostile", failed),
        ("looper", failed),
    ];
    assert_eq!(listed, expected.map(|(n, s)| (n.to_string(), s)));
    assert!(
        !t.node.health().await.0,
        "failed agents make the node unhealthy"
    );
    let err = t
        .request(BusMessage::new(ATTACK, "ping"))
        .await
        .unwrap_err();
    has(&err.to_string(), &["no agent listens"]);
    echo_still_serves(&t).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_does_not_match_its_sha256_pin_is_refused_with_both_digests() {
    let _shared = MACHINE.read().await;
    let t = TestNode::start().await;
    let actual = hex::encode(Sha256::digest(std::fs::read(plugin("echo")).unwrap()));
    let pinned = "ab".repeat(32);
    let manifest = format!("[agent]\nname = \"echo\"\nsha256 = \"{pinned}\"\n");
    let err = t.try_load("echo", "echo", &manifest).await.unwrap_err();
    has(
        &err.to_string(),
        &[&pinned, &actual, "update [agent] sha256"],
    );
    assert!(t.node.list().await.is_empty());

    let manifest = format!("[agent]\nname = \"echo\"\nsha256 = \"{actual}\"\n");
    assert_eq!(t.load("echo", "echo", &manifest).await.digest, actual);
    t.stop().await;
}

#[test]
fn the_operator_sees_attacks_in_the_log_and_in_host_status() {
    let _shared = MACHINE.blocking_read();
    let node =
        NodeProcess::start("[node]\nmax_traps_per_message = 1\n[http]\nlisten = \"127.0.0.1:0\"\n");
    let manifest = node.dir.path().join("hostile.toml");
    std::fs::write(&manifest, HOSTILE).unwrap();
    let (hostile, manifest) = (plugin("hostile"), manifest.to_str().unwrap());
    let load = node.host(&["load", hostile.to_str().unwrap(), "--manifest", manifest]);
    assert!(load.status.success(), "{}", stderr(&load));
    let send = |text: &str| node.host(&["send", ATTACK, text, "--wait", "3"]);
    assert!(
        !send("spin").status.success(),
        "no reply from a spinning agent"
    );
    has(&stdout(&send("forbidden agent.secret.x")), &["denied"]);
    has(&stdout(&send("alloc")), &["growth refused"]);

    let status = stdout(&node.host(&["status", "hostile"]));
    has(
        &status,
        &[
            "1 traps",
            "1 denied calls",
            "limits     1 over CPU budget, ",
        ],
    );
    has(
        &status,
        &["last error trap: used more than its CPU budget of 50 ms"],
    );
    lacks(&status, &[" 0 memory growths refused"]);
    let list = stdout(&node.host(&["list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("hostile") && l.contains("running")),
        "{list}"
    );

    let log = node.log_text();
    has(
        &log,
        &[
            "trapped: used more than its CPU budget of 50 ms",
            "memory growth from",
        ],
    );
    has(
        &log,
        &["denied: agent 'hostile' may not publish to 'agent.secret.x'"],
    );
    assert!(node.stop().success());
}

/// Attacks cycled by the throughput test (all but `sleep`, which only idles), one every
/// [`ATTACK_PACE`] after the previous one was dealt with.
const CYCLE: [&str; 12] = [
    "spin",
    "alloc",
    "trap",
    "flood 1000 hostile.flood",
    "forbidden",
    "overflow",
    "spoof",
    "other-kv x secret",
    "alloc abort",
    "fs",
    "env",
    "net",
];
const ATTACK_PACE: Duration = Duration::from_millis(25);

/// Echo's request/reply rate: one requester (a task on the node's runtime, as agents and
/// the bus are), each request waiting for its reply.
async fn echo_rate(t: &TestNode, window: Duration) -> f64 {
    let node = t.node.clone();
    let requester = tokio::spawn(async move {
        let started = Instant::now();
        let mut replies = 0u32;
        while started.elapsed() < window {
            let msg = BusMessage::new("agent.to.echo.x", "x");
            let reply = node.send(msg, Some(Duration::from_secs(5))).await;
            assert!(reply.unwrap().is_some());
            replies += 1;
        }
        f64::from(replies) / started.elapsed().as_secs_f64()
    });
    requester.await.unwrap()
}

/// Runs the attack cycle against the hostile agent until `stop`; returns the attacks made.
fn attack_loop(
    node: Arc<agent_host::node::Node>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut sent = 0usize;
        while !stop.load(Ordering::Relaxed) && sent < 10_000 {
            let attack = CYCLE[sent % CYCLE.len()];
            node.send(BusMessage::new(ATTACK, attack), None)
                .await
                .unwrap();
            // The ping's reply means the attack has been dealt with.
            let ping = BusMessage::new(ATTACK, "ping");
            node.send(ping, Some(Duration::from_secs(5))).await.unwrap();
            sent += 1;
            tokio::time::sleep(ATTACK_PACE).await;
        }
        sent
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Rates are compared in adjacent pairs (quiet, then attacked) so that load from outside
/// the test, which drifts, affects both sides of each ratio alike; the verdict is the
/// median ratio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_keeps_within_20_percent_of_its_throughput_while_the_hostile_agent_attacks() {
    let _alone = MACHINE.write().await;
    let (t, _) = node_with(HOSTILE, 1).await;
    const PAIRS: usize = 7;
    let window = Duration::from_millis(300);
    echo_rate(&t, window).await; // warm up
    let (mut ratios, mut quiet, mut attacked, mut attacks) = (vec![], vec![], vec![], 0);
    // At least PAIRS pairs, and more (up to three times as many) while too few attacks have
    // run: on a slow machine each attack's restart takes longer, and fewer fit a window.
    while ratios.len() < PAIRS || (attacks < PAIRS * 8 && ratios.len() < 3 * PAIRS) {
        let q = echo_rate(&t, window).await;
        let stop = Arc::new(AtomicBool::new(false));
        let attacker = attack_loop(t.node.clone(), stop.clone());
        let a = echo_rate(&t, window).await;
        stop.store(true, Ordering::Relaxed);
        attacks += attacker.await.unwrap();
        ratios.push(a / q);
        quiet.push(q);
        attacked.push(a);
    }
    let ratio = median(ratios.clone());
    eprintln!(
        "echo req/s without attacks {quiet:.0?}, during attacks {attacked:.0?}; ratios {ratios:.2?}, median {ratio:.2}; {attacks} attacks"
    );
    assert!(attacks >= PAIRS * 8, "the attacks really ran: {attacks}");
    let s = t.node.status("hostile").await.unwrap();
    assert!(s.limit_hits.cpu >= 1 && s.traps >= 4, "{s:?}");
    assert_eq!(s.state, AgentState::Running);
    assert!(
        ratio >= 0.8,
        "echo kept only {ratio:.2} of its throughput: {ratios:.2?}"
    );
    assert_eq!(t.node.status("echo").await.unwrap().traps, 0);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_needing_more_instances_or_tables_than_its_limits_is_refused_naming_the_field()
{
    let _shared = MACHINE.read().await;
    let t = TestNode::start().await;
    for (field, needs) in [("instances", "instances"), ("tables", "tables")] {
        let manifest = format!("[agent]\nname = \"echo\"\n[limits]\n{field} = 1\n");
        let err = t.try_load("echo", "echo", &manifest).await.unwrap_err();
        has(
            &format!("{err:#}"),
            &[
                &format!("the component needs more {needs} than its limit of 1"),
                &format!("raise [limits] {field} in its manifest"),
            ],
        );
    }
    let over = "[agent]\nname = \"echo\"\n[limits]\ninstances = 500\n";
    let err = t.try_load("echo", "echo", over).await.unwrap_err();
    has(
        &format!("{err:#}"),
        &["field limits.instances: 500 is more than this node's engine allows per component (20)"],
    );
    assert!(t.node.list().await.is_empty());
    // The defaults (the pool's bounds) fit every agent in plugins/.
    t.load("echo", "echo", "").await;
    echo_still_serves(&t).await;
    t.stop().await;
}
