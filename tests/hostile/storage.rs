//! What an agent, a local user or a client can make the node store or read: snapshots are
//! bounded by `[limits] max_snapshot_bytes` wherever they are taken, the data dir and the
//! store in it are for the node's user only, and files and control lines handed to the
//! node are bounded before they are read.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_host::agent::plan::RolloutPlan;
use agent_host::agent::{canary::share_bucket, snapshots};
use agent_host::bus::BusMessage;

use super::{fatal, has, survived, ATTACK, MACHINE};
use crate::support::{eventually, host_bin, plugin, stderr, stdout, NodeProcess, TestNode};

/// Components, manifests, node configs and control lines: bounded before they are read.
#[path = "storage/inputs.rs"]
mod inputs;

/// The hostile agent with the KV quota of the security report (64 KiB) and no
/// `max_snapshot_bytes`: its snapshots are bounded by that quota. A fixed id, so a node
/// restart finds its persisted snapshot.
const KV_64K: &str = r#"
[agent]
name = "hostile"
id = "01936f11-4ea2-7000-8000-0000000000b1"
[kv]
max_bytes = "64KiB"
[limits]
memory = "64MiB"
cpu_ms_per_message = 2000
"#;

/// The hostile agent with an explicit, small snapshot limit.
const SNAPSHOT_16K: &str = r#"
[agent]
name = "hostile"
[limits]
memory = "64MiB"
cpu_ms_per_message = 2000
max_snapshot_bytes = "16KiB"
"#;

const OVER_64K: &str = "is over its limit of 64KiB (65536 bytes) ([limits] max_snapshot_bytes)";
const OVER_16K: &str = "is over its limit of 16KiB (16384 bytes) ([limits] max_snapshot_bytes)";

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn len_of(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Peak resident memory of process `pid` ("self" for this one), in bytes.
fn peak_rss(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// A file claiming `len` bytes that takes no disk space.
fn sparse_file(path: &Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

/// The ballast in the snapshot persisted for agent `id`.
async fn persisted_ballast(store: &dyn agent_host::storage::KvBackend, id: &str) -> usize {
    let (_, state) = snapshots::load(store, id)
        .await
        .expect("a persisted snapshot");
    let state: serde_json::Value = serde_json::from_slice(&state).unwrap();
    state["ballast"].as_str().unwrap_or_default().len()
}

/// Sends SIGTERM to a `host run` child and waits for it, keeping its data dir.
fn terminate(node: &mut NodeProcess) {
    let pid = node.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let started = Instant::now();
    while node.child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(20), "node stops");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the real CLI against `node` and asserts it succeeded; returns stdout.
fn host_ok(node: &NodeProcess, args: &[&str]) -> String {
    let out = node.host(args);
    assert!(out.status.success(), "host {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// Runs the real CLI against `node` and asserts it failed; returns stderr.
fn host_refused(node: &NodeProcess, args: &[&str]) -> String {
    let out = node.host(args);
    assert!(
        !out.status.success(),
        "host {args:?} succeeded: {}",
        stdout(&out)
    );
    stderr(&out)
}

/// A node's snapshots over the limit (by default its `[kv] max_bytes`) are not kept or
/// persisted: the store does not grow, the refusal is counted and is the agent's last
/// error, and a restart after a trap resumes from the previous good snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_over_the_kv_quota_is_neither_kept_nor_persisted_and_is_reported() {
    let _shared = MACHINE.read().await;
    let t = TestNode::start_with(|c| {
        c.node.snapshot_every = 1;
        c.node.max_traps_per_message = 1;
    })
    .await;
    let hostile = t.load("hostile", "hostile", KV_64K).await;
    assert_eq!(
        survived(&t, "bloat 1000").await,
        "bloat: 1000 bytes of ballast"
    );
    let store = t.node.store.clone();
    let persisted = eventually(Duration::from_secs(10), async || {
        snapshots::load(store.as_ref(), &hostile.id).await.is_some()
    })
    .await;
    assert!(persisted, "the good snapshot is persisted");
    t.node.store.sync().await.unwrap();
    let kv_file = t.dir.path().join("kv.redb");
    let before = len_of(&kv_file);

    // 4 MiB of state against 64 KiB: five messages, five refused snapshots.
    assert_eq!(
        survived(&t, "bloat 4194304").await,
        "bloat: 4195304 bytes of ballast"
    );
    for _ in 0..4 {
        assert_eq!(survived(&t, "ping").await, "pong");
    }
    let counted = eventually(Duration::from_secs(10), async || {
        t.node.status("hostile").await.unwrap().limit_hits.snapshot == 5
    })
    .await;
    let status = t.node.status("hostile").await.unwrap();
    assert!(counted, "five refusals counted: {status:?}");
    has(
        status.last_error.as_deref().unwrap_or_default(),
        &[
            "snapshot refused: v0.1.0's snapshot of",
            OVER_64K,
            "raise [limits] max_snapshot_bytes",
        ],
    );
    has(
        &t.node.metrics.encode(),
        &[&super::limit_metric("snapshot", 5)],
    );

    // A trap restarts it from the last snapshot that was kept: 1000 bytes, not 4 MiB.
    fatal(&t, "trap").await;
    assert_eq!(
        survived(&t, "bloat 0").await,
        "bloat: 1000 bytes of ballast"
    );

    // Stopping with a state over the limit persists nothing either.
    assert_eq!(
        survived(&t, "bloat 4194304").await,
        "bloat: 4195304 bytes of ballast"
    );
    t.node.shutdown().await;
    assert_eq!(persisted_ballast(store.as_ref(), &hostile.id).await, 1000);
    let after = len_of(&kv_file);
    assert!(
        after < before + (1 << 20),
        "kv.redb grew from {before} to {after} bytes"
    );
}

/// The same on a real `host run`: `host status` shows the refusals, the log has them
/// sampled (not one line per message), stopping logs what is lost and how to fix it, and a
/// restarted node resumes from the last good snapshot.
#[tokio::test]
async fn a_real_node_reports_refused_snapshots_and_resumes_from_the_last_good_one() {
    let _shared = MACHINE.read().await;
    let config = "[http]\nlisten = \"127.0.0.1:0\"\n[node]\nsnapshot_every = 1\n";
    let mut node = NodeProcess::start(config);
    let manifest = node.dir.path().join("hostile.toml");
    std::fs::write(&manifest, KV_64K).unwrap();
    let hostile = plugin("hostile");
    let load = [
        "load",
        hostile.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ];
    host_ok(&node, &load);
    let send = |payload: &str| host_ok(&node, &["send", ATTACK, payload, "--wait", "5"]);
    assert_eq!(send("bloat 1000").trim(), "bloat: 1000 bytes of ballast");
    assert_eq!(
        send("bloat 4194304").trim(),
        "bloat: 4195304 bytes of ballast"
    );
    for _ in 0..3 {
        assert_eq!(send("ping").trim(), "pong");
    }
    let status = host_ok(&node, &["status", "hostile"]);
    has(
        &status,
        &[
            "snapshots refused",
            "last error snapshot refused: v0.1.0's snapshot of",
            OVER_64K,
        ],
    );
    let kv_file = node.dir.path().join("kv.redb");
    let before = len_of(&kv_file);

    terminate(&mut node);
    let log = node.log_text();
    let logged = log.matches("it is not kept or persisted").count();
    assert_eq!(logged, 1, "four refusals in a minute, logged once:\n{log}");
    has(
        &log,
        &[
            "stopped without saving its state: v0.1.0's snapshot of",
            "The state since its last good snapshot is lost: the next start resumes from its last good snapshot (v0.1.0, 10",
            "To keep it next time, raise [limits] max_snapshot_bytes in its manifest",
        ],
    );
    let after = len_of(&kv_file);
    assert!(
        after < before + (1 << 20),
        "kv.redb grew from {before} to {after} bytes"
    );

    let dir = std::mem::replace(&mut node.dir, tempfile::tempdir().unwrap());
    let node = NodeProcess::start_in(dir, config);
    host_ok(&node, &load);
    let reply = host_ok(&node, &["send", ATTACK, "bloat 0", "--wait", "5"]);
    assert_eq!(reply.trim(), "bloat: 1000 bytes of ballast");
}

fn plan(steps: &str) -> RolloutPlan {
    RolloutPlan::from_args("--steps", Some(steps), Some("10m"), &[]).unwrap()
}

/// Swap, rollback and canary start each need a snapshot to hand the state over: one over
/// the limit refuses them with the reason, and the serving version keeps its state. Under
/// the limit they work as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_that_would_hand_over_a_state_over_the_limit_is_refused_losing_nothing() {
    let _shared = MACHINE.read().await;
    let t = TestNode::start().await;
    t.load("hostile", "hostile", SNAPSHOT_16K).await;
    let component = plugin("hostile");
    assert_eq!(
        survived(&t, "bloat 1000").await,
        "bloat: 1000 bytes of ballast"
    );
    let swapped = t.node.upgrade("hostile", &component).await.unwrap();
    assert!(swapped.state_bytes > 1000, "{swapped:?}");
    assert_eq!(
        survived(&t, "bloat 0").await,
        "bloat: 1000 bytes of ballast"
    );

    assert_eq!(
        survived(&t, "bloat 100000").await,
        "bloat: 101000 bytes of ballast"
    );
    let swap = t.node.upgrade("hostile", &component).await.unwrap_err();
    has(
        &swap.to_string(),
        &[
            "upgrade to v0.1.0 refused: v0.1.0's snapshot of",
            OVER_16K,
            "v0.1.0 keeps serving, nothing lost",
        ],
    );
    let rollback = t.node.rollback("hostile", false).await.unwrap_err();
    has(
        &rollback.to_string(),
        &["rollback refused", OVER_16K, "keeps serving"],
    );
    let canary = t
        .node
        .start_canary("hostile", &component, plan("50,100"))
        .await
        .err()
        .expect("canary refused");
    has(
        &canary.to_string(),
        &[
            "canary of v0.1.0 refused: v0.1.0's snapshot of",
            OVER_16K,
            "nothing lost",
        ],
    );
    assert_eq!(
        survived(&t, "bloat 0").await,
        "bloat: 101000 bytes of ballast",
        "the serving version kept its state through every refusal"
    );
    let status = t.node.status("hostile").await.unwrap();
    assert_eq!(status.limit_hits.snapshot, 3, "{status:?}");
    assert_eq!(
        status.previous_version.as_deref(),
        Some("0.1.0"),
        "still warm"
    );
    assert!(status.canary.is_none());
}

/// `n` conversation keys whose share bucket is below (`green`) or at least `percent`.
fn conversation(percent: u64, green: bool) -> String {
    (0..)
        .map(|i| format!("conversation-{i}"))
        .find(|c| (share_bucket(c) < percent) == green)
        .unwrap()
}

async fn ask_in(t: &TestNode, conversation: &str, payload: &str) -> String {
    let msg = BusMessage {
        headers: vec![("Conversation-Id".into(), conversation.into())],
        ..BusMessage::new(ATTACK, payload.as_bytes().to_vec())
    };
    let reply = t.request(msg).await.unwrap();
    String::from_utf8_lossy(&reply.payload).into_owned()
}

/// During a canary the state moves between the versions as conversations alternate: a
/// hand-off over the limit is refused, the version holding the state answers instead
/// (nothing lost), the canary goes on, and moves resume once the state is small again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_hand_off_over_the_limit_is_refused_and_the_holder_of_the_state_answers() {
    let _shared = MACHINE.read().await;
    let t = TestNode::start().await;
    t.load("hostile", "hostile", SNAPSHOT_16K).await;
    let component = plugin("hostile");
    t.node
        .start_canary("hostile", &component, plan("50,100"))
        .await
        .unwrap();
    let (green, blue) = (conversation(50, true), conversation(50, false));
    assert_eq!(
        ask_in(&t, &green, "bloat 100000").await,
        "bloat: 100000 bytes of ballast"
    );
    assert_eq!(
        ask_in(&t, &blue, "bloat 0").await,
        "bloat: 100000 bytes of ballast",
        "green kept the state and answered"
    );
    let status = t.node.status("hostile").await.unwrap();
    let events: Vec<&str> = status.events.iter().map(|e| e.text.as_str()).collect();
    has(
        &events.join("\n"),
        &[
            "state hand-off to v0.1.0 refused: v0.1.0's snapshot of",
            OVER_16K,
            "nothing lost, and the canary goes on",
        ],
    );
    assert_eq!(status.limit_hits.snapshot, 1, "{status:?}");
    // `host status` shows a canary's counts at most 50 ms late.
    let counted = eventually(Duration::from_secs(5), async || {
        let canary = t.node.status("hostile").await.unwrap().canary;
        canary.is_some_and(|c| (c.green_messages, c.switches) == (2, 1))
    })
    .await;
    assert!(counted, "green served both messages after one hand-off");

    let rollback = t.node.rollback("hostile", false).await.unwrap_err();
    has(
        &rollback.to_string(),
        &["rollback refused", OVER_16K, "the canary goes on"],
    );

    assert_eq!(ask_in(&t, &green, "slim").await, "slim: 0 bytes of ballast");
    assert_eq!(
        ask_in(&t, &blue, "bloat 10").await,
        "bloat: 10 bytes of ballast"
    );
    let rolled_back = t.node.rollback("hostile", false).await.unwrap();
    assert_eq!(rolled_back.lost_messages, 0);
    assert_eq!(survived(&t, "bloat 0").await, "bloat: 10 bytes of ballast");
}

/// The data dir, the store and the agents' files are for the node's user only: another
/// local user cannot read an agent's data.
#[tokio::test]
async fn a_nodes_data_dir_store_and_files_are_for_its_user_only() {
    let _shared = MACHINE.read().await;
    let outer = tempfile::tempdir().unwrap();
    std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = outer.path().join("node/data");
    let t = TestNode::start_with(|c| c.node.data_dir = data.clone()).await;
    let files = "[agent]\nname = \"hostile\"\n[files]\naccess = \"read-write\"\n";
    let hostile = t.load("hostile", "hostile", files).await;
    assert_eq!(
        survived(&t, "fs write /data/secret.txt hunter2").await,
        "fs write: OK written"
    );
    for (path, mode) in [
        (data.clone(), 0o700),
        (outer.path().join("node"), 0o700),
        (data.join("kv.redb"), 0o600),
        (data.join("files"), 0o700),
        (data.join("files").join(&hostile.id), 0o700),
    ] {
        assert_eq!(mode_of(&path), mode, "{}", path.display());
    }
    t.stop().await;
}

/// Starts `host run` on `dir` with a config; returns its exit status and stderr, killing
/// it if it is still running after 20 s (a node that starts serves until stopped).
fn run_briefly(dir: &Path, config: &str) -> (Option<std::process::ExitStatus>, String) {
    let cfg = dir.join("node.toml");
    std::fs::write(&cfg, config).unwrap();
    run_with_config(dir, &cfg)
}

fn run_with_config(dir: &Path, cfg: &Path) -> (Option<std::process::ExitStatus>, String) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = std::process::Command::new(host_bin())
        .arg("run")
        .arg("--data-dir")
        .arg(dir)
        .arg("--config")
        .arg(cfg)
        .env_remove("HOST_CONTROL")
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(log.path()).unwrap())
}

/// A data dir other users can write to is refused at start, naming the dir, its mode and
/// the fix; one they can read is used with a warning, and a store file they could read is
/// made owner-only.
#[tokio::test]
async fn host_run_refuses_a_data_dir_others_can_write_and_closes_one_they_can_read() {
    let _shared = MACHINE.read().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (status, log) = run_briefly(dir.path(), "[http]\nlisten = \"off\"\n");
    assert!(
        status.is_some_and(|s| !s.success()),
        "refused at start: {log}"
    );
    let shown = dir.path().display().to_string();
    has(
        &log,
        &[
            &format!("the data dir {shown} has mode 0777: other users can write to it"),
            &format!("run `chmod go-w {shown}`"),
        ],
    );
    assert!(
        !dir.path().join("kv.redb").exists(),
        "nothing created in it"
    );

    // A data dir from before: readable by others, with a store file they could read.
    drop(agent_host::storage::EmbeddedKv::open(&dir.path().join("kv.redb")).unwrap());
    std::fs::set_permissions(
        dir.path().join("kv.redb"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let node = NodeProcess::start_in(dir, "");
    let manifest = node.dir.path().join("files.toml");
    std::fs::write(
        &manifest,
        "[agent]\nname = \"hostile\"\n[files]\naccess = \"read-only\"\n",
    )
    .unwrap();
    let loaded = host_ok(
        &node,
        &[
            "load",
            plugin("hostile").to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
        ],
    );
    assert!(loaded.contains("loaded 'hostile'"), "{loaded}");
    has(
        &node.log_text(),
        &[
            "has mode 0755: other users can list or enter it",
            "had mode 0644; it is now 0600",
        ],
    );
    let data = node.dir.path();
    assert_eq!(mode_of(&data.join("kv.redb")), 0o600);
    assert_eq!(mode_of(&data.join("files")), 0o700);
}
