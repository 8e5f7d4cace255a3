//! The CPU budget (`[limits] cpu_ms_per_message`) charges the CPU an agent uses: a healthy
//! agent that waits for its turn on a busy node, or runs on a machine whose cores other work
//! has taken, is not trapped and restarted for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{HOSTILE, MACHINE};
use crate::support::TestNode;

/// `hostile` loaded as `name` with a 200 ms CPU budget, for honest `work`.
fn worker(name: &str) -> String {
    HOSTILE
        .replace("name = \"hostile\"", &format!("name = \"{name}\""))
        .replace("cpu_ms_per_message = 50", "cpu_ms_per_message = 200")
}

/// How many rounds of `work` take `seconds` on this machine: the quickest of three runs.
async fn rounds_taking(t: &TestNode, agent: &str, seconds: f64) -> u64 {
    const PROBE_ROUNDS: u64 = 4_000_000;
    let mut alone = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let reply = t
            .ask(
                &format!("agent.to.{agent}.w"),
                &format!("work {PROBE_ROUNDS}"),
            )
            .await;
        assert!(reply.starts_with("work: "), "{reply}");
        alone = alone.min(started.elapsed());
    }
    (PROBE_ROUNDS as f64 * seconds / alone.as_secs_f64()).clamp(1e5, 1e10) as u64
}

/// Sends `work rounds` to `agent`; returns how long the reply took.
async fn timed_work(t: &TestNode, agent: &str, rounds: u64) -> Duration {
    let started = Instant::now();
    let reply = t
        .ask(&format!("agent.to.{agent}.w"), &format!("work {rounds}"))
        .await;
    assert!(
        reply.starts_with("work: "),
        "{agent} finished its work: {reply}"
    );
    started.elapsed()
}

/// Asserts that none of `agents` trapped or was restarted (a restart would replay or lose
/// its messages) or hit its CPU limit.
async fn none_charged_for_waiting(t: &TestNode, agents: impl IntoIterator<Item = String>) {
    for name in agents {
        let s = t.node.status(&name).await.unwrap();
        assert_eq!(
            (s.traps, s.restarts, s.limit_hits.cpu),
            (0, 0, 0),
            "{name} was charged for waiting: {s:?}"
        );
    }
}

/// A healthy agent is charged the CPU it uses, not the time it waits for its turn. Twelve
/// agents each doing ~50 ms of work at once on one thread take ~600 ms of wall time each,
/// far past their 200 ms budget, since each yields to the others at every epoch tick; none
/// of them traps.
#[tokio::test]
async fn agents_on_a_busy_node_are_charged_their_own_cpu_not_the_wait_for_their_turn() {
    let _shared = MACHINE.read().await;
    let t = TestNode::start().await;
    const AGENTS: usize = 12;
    let names = || (0..AGENTS).map(|i| format!("worker{i}"));
    for name in names() {
        t.load("hostile", &name, &worker(&name)).await;
    }
    let rounds = rounds_taking(&t, "worker0", 0.050).await;

    let took = futures::future::join_all(names().map(|name| {
        let t = &t;
        async move { timed_work(t, &name, rounds).await }
    }))
    .await;
    let quickest = took.iter().min().unwrap();
    assert!(
        *quickest > Duration::from_millis(300),
        "the agents took turns for longer than their 200 ms budget ({quickest:?}), or this test shows nothing"
    );
    none_charged_for_waiting(&t, names()).await;
    t.stop().await;
}

/// Threads that keep every core busy until dropped: other work on the node's machine.
struct CoreHogs {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CoreHogs {
    fn start(per_core: usize) -> CoreHogs {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..cores * per_core)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                })
            })
            .collect();
        CoreHogs { stop, threads }
    }
}

impl Drop for CoreHogs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The CPU budget is CPU: when other work takes the machine's cores, an agent's ~60 ms of
/// work takes several times as long in wall time, past its 200 ms budget, and it is still
/// charged only what it used.
#[tokio::test]
async fn an_agent_on_a_machine_whose_cores_are_taken_is_charged_its_cpu_not_the_wall_time() {
    let _alone = MACHINE.write().await;
    let t = TestNode::start().await;
    t.load("hostile", "worker", &worker("worker")).await;
    let rounds = rounds_taking(&t, "worker", 0.060).await;

    // More hogs when these did not slow the agent enough: the calibration above may have run
    // on a machine that was already busy, which leaves the agent less work than intended.
    let mut quickest = Duration::ZERO;
    for hogs_per_core in [6, 12, 24] {
        let hogs = CoreHogs::start(hogs_per_core);
        quickest = Duration::MAX;
        for _ in 0..3 {
            quickest = quickest.min(timed_work(&t, "worker", rounds).await);
        }
        drop(hogs);
        if quickest > Duration::from_millis(250) {
            break;
        }
    }
    assert!(
        quickest > Duration::from_millis(250),
        "the other work slowed the agent past its 200 ms budget ({quickest:?}), or this test shows nothing"
    );
    none_charged_for_waiting(&t, ["worker".to_string()]).await;
    t.stop().await;
}
