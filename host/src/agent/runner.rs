//! The task that runs one agent: it takes messages from the agent's subscriptions one at a
//! time, calls `handle`, and supervises the instance (a trap re-creates it from the last
//! snapshot, with backoff; a message that keeps trapping goes to the dead-letter subject:
//! see `supervisor.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::canary::{Canary, CanaryStart, CanaryStarted};
use super::dedup::SeenIds;
use super::durable::next_durable;
use super::inbox::{next_from, Claim, Inbox, Via};
use super::instance::{instantiate, Code, InstanceLimits, Live};
use super::snapshot_limit::NotTaken;
use super::snapshots::{self, SnapshotWriter};
use super::status::{AgentState, AgentStatus, AgentSummary};
use super::supervisor::Outcome;
use super::upgrade::{Green, Previous, SwapReport};
use super::{AgentCaps, Identity};
use crate::bus::{BusMessage, Transport};
use crate::engine::Engine;
use crate::storage::KvBackend;
use crate::subjects;
use crate::telemetry::AgentMetrics;

/// Requests to a running agent from the node. The runner takes them between messages, so
/// the in-flight message always finishes first.
pub enum Control {
    /// Snapshot the state, persist it, and stop.
    Stop(oneshot::Sender<()>),
    /// Hand the state to a new version (already instantiated and initialised).
    Swap(Box<Green>, oneshot::Sender<Result<SwapReport, String>>),
    /// Go back to the version kept warm; `force` accepts losing the state since the swap.
    Rollback {
        force: bool,
        reply: oneshot::Sender<Result<SwapReport, String>>,
    },
    /// Keep the new version; retire the old one now (during a canary: green takes
    /// every conversation at once).
    Promote(oneshot::Sender<Result<String, String>>),
    /// Serve a new version beside the current one for a share of conversations.
    Canary(
        Box<CanaryStart>,
        oneshot::Sender<Result<CanaryStarted, String>>,
    ),
}

/// Everything the runner needs besides the live instance.
pub struct RunnerParts {
    pub identity: Identity,
    pub engine: Arc<Engine>,
    pub code: Code,
    pub caps: Arc<AgentCaps>,
    pub limits: InstanceLimits,
    pub bus: Arc<dyn Transport>,
    pub store: Arc<dyn KvBackend>,
    pub metrics: Arc<AgentMetrics>,
    pub status: Arc<AgentStatus>,
    pub snapshot_every: u32,
    pub max_traps_per_message: u32,
    pub dedup_window: usize,
    /// How long the replaced version stays warm after a swap.
    pub rollback_window: Duration,
    /// JetStream for `[subscriptions] durable = true`; `None` on the embedded bus.
    pub durable: Option<Arc<super::durable::DurableDelivery>>,
}

/// The node's handle on a running agent.
pub struct AgentHandle {
    pub identity: Identity,
    pub subscriptions: Vec<String>,
    pub manifest: Arc<crate::manifest::Manifest>,
    pub metrics: Arc<AgentMetrics>,
    pub status: Arc<AgentStatus>,
    code: Code,
    caps: Arc<AgentCaps>,
    limits: InstanceLimits,
    /// The agent's mailbox byte budget, for `queued_bytes` in its summary.
    queued: Option<Arc<crate::bus::ByteBudget>>,
    control: mpsc::Sender<Control>,
    task: JoinHandle<()>,
}

impl AgentHandle {
    /// What a new instance of this agent needs (for an upgrade's green, or a benchmark).
    pub fn instance_parts(&self) -> (Code, Arc<AgentCaps>, InstanceLimits) {
        (self.code.clone(), self.caps.clone(), self.limits)
    }

    /// A way to send control requests that outlives the node's lock on its agent table.
    pub fn controls(&self) -> AgentControls {
        AgentControls {
            sender: self.control.clone(),
            name: self.identity.name.clone(),
            status: self.status.clone(),
        }
    }

    pub fn summary(&self) -> AgentSummary {
        let m = &self.metrics;
        AgentSummary {
            name: self.identity.name.clone(),
            cluster: self.identity.cluster.clone(),
            id: self.identity.id.clone(),
            version: self.status.version.lock().expect("status lock").clone(),
            digest: self.status.digest.lock().expect("status lock").clone(),
            state: if self.task.is_finished() && self.status.state() == AgentState::Running {
                AgentState::Stopped
            } else {
                self.status.state()
            },
            handled: m.handled.get(),
            errors: m.errors.get(),
            traps: m.traps.get(),
            denied: m.denied.get(),
            dropped: m.dropped.get(),
            queued_bytes: self.queued.as_ref().map_or(0, |b| b.used() as u64),
            limit_hits: m.limits.counts(),
            restarts: self.status.restarts.load(Ordering::Relaxed),
            dead_lettered: self.status.dead_lettered.load(Ordering::Relaxed),
            subscriptions: self.subscriptions.clone(),
            last_error: self.status.last_error.lock().expect("status lock").clone(),
            previous_version: self
                .status
                .previous_version
                .lock()
                .expect("status lock")
                .clone(),
            events: self.status.events(),
            canary: self.status.canary.lock().expect("status lock").clone(),
        }
    }

    /// Stops the agent after its in-flight message, persisting a final snapshot.
    pub async fn stop(self) {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Stop(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
        self.task.abort();
    }
}

/// Sends control requests to one agent's runner.
pub struct AgentControls {
    sender: mpsc::Sender<Control>,
    name: String,
    status: Arc<AgentStatus>,
}

impl AgentControls {
    /// Sends a request and waits for the runner's answer (after its in-flight message).
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Control,
    ) -> anyhow::Result<T> {
        let (tx, rx) = oneshot::channel();
        self.sender.send(make(tx)).await.map_err(|_| {
            anyhow::anyhow!(
                "agent '{}' is not running (state {:?})",
                self.name,
                self.status.state()
            )
        })?;
        rx.await
            .map_err(|_| anyhow::anyhow!("agent '{}' stopped before answering", self.name))
    }
}

/// Starts an agent: instantiates it, runs `init`, restores its last persisted snapshot (if
/// this agent id has one), subscribes, and spawns its task.
pub async fn start(
    parts: RunnerParts,
    manifest: Arc<crate::manifest::Manifest>,
    mailbox: crate::bus::MailboxLimits,
) -> anyhow::Result<AgentHandle> {
    let mut runner = Runner::new(parts).await?;
    let queued = mailbox.bytes.clone();
    let (inbox, subscriptions) =
        Inbox::open(&runner.parts, &manifest.subscriptions, mailbox).await?;
    let (control_tx, control_rx) = mpsc::channel(4);
    let identity = runner.parts.identity.clone();
    runner
        .parts
        .status
        .set_serving(&runner.version, &runner.parts.code.digest(), None);
    let metrics = runner.parts.metrics.clone();
    let status = runner.parts.status.clone();
    let code = runner.parts.code.clone();
    let caps = runner.parts.caps.clone();
    let limits = runner.parts.limits;
    let task = tokio::spawn(async move { runner.run(inbox, control_rx).await });
    Ok(AgentHandle {
        identity,
        subscriptions,
        manifest,
        metrics,
        status,
        code,
        caps,
        limits,
        queued,
        control: control_tx,
        task,
    })
}

pub(super) struct Runner {
    pub(super) parts: RunnerParts,
    /// The component's own version (its `version` export).
    pub(super) version: String,
    pub(super) live: Option<Live>,
    pub(super) last_snapshot: Option<(String, Vec<u8>)>,
    pub(super) since_snapshot: u32,
    pub(super) consecutive_restarts: u32,
    pub(super) seen: SeenIds,
    /// Persists snapshots off the message path (None once stopped).
    pub(super) writer: Option<SnapshotWriter>,
    /// The version replaced by the last swap, kept warm for a rollback.
    pub(super) previous: Option<Previous>,
    pub(super) rollback_window: Duration,
    /// The canary in progress (see `canary.rs`).
    pub(super) canary: Option<Box<Canary>>,
    /// The message handed to `handle`, kept between messages so its buffers are reused
    /// (see [`crate::convert::fill_wit_message`]).
    pub(super) wit_message: crate::bindings::Message,
    /// Lets a warning about misaddressed messages through at most once a second.
    pub(super) misaddressed_warnings: crate::log_sample::LogSample,
    /// When snapshots over `[limits] max_snapshot_bytes` were last logged (see
    /// `snapshot_limit.rs`): a refusal repeats every `snapshot_every` messages.
    pub(super) snapshot_refusals: crate::log_sample::LogSample,
}

impl Runner {
    async fn new(parts: RunnerParts) -> anyhow::Result<Runner> {
        let persisted = snapshots::load(parts.store.as_ref(), &parts.identity.id).await;
        let seen = SeenIds::new(parts.dedup_window);
        let writer = SnapshotWriter::spawn(
            parts.store.clone(),
            parts.identity.id.clone(),
            parts.identity.name.clone(),
        );
        let rollback_window = parts.rollback_window;
        let mut runner = Runner {
            parts,
            version: String::new(),
            live: None,
            last_snapshot: persisted,
            since_snapshot: 0,
            consecutive_restarts: 0,
            seen,
            writer: Some(writer),
            previous: None,
            rollback_window,
            canary: None,
            wit_message: crate::convert::empty_wit_message(),
            misaddressed_warnings: crate::log_sample::LogSample::new(),
            snapshot_refusals: crate::log_sample::LogSample::every(
                super::snapshot_limit::LOG_EVERY,
            ),
        };
        let mut live = runner.fresh_instance().await?;
        live.begin_turn(None, Duration::from_secs(1));
        runner.version = live.call_version().await?;
        runner.live = Some(live);
        runner.parts.status.set_state(AgentState::Running);
        Ok(runner)
    }

    /// A new instance with `init` run and the last snapshot restored.
    pub(super) async fn fresh_instance(&mut self) -> anyhow::Result<Live> {
        let p = &self.parts;
        let mut live = instantiate(&p.engine, &p.code, p.caps.clone(), p.limits).await?;
        let budget = p.limits.cpu_per_message.max(Duration::from_secs(1));
        live.begin_turn(None, budget);
        let name = &p.identity.name;
        live.call_init(&p.identity.wit_ref())
            .await
            .map_err(|trap| {
                p.metrics.traps.inc();
                let (text, hit) = live.describe_trap(&trap);
                match hit {
                    Some(super::limits::LimitHit::Lifecycle) => {
                        p.metrics.limits.lifecycle.inc();
                        anyhow::anyhow!("agent '{name}': {text}")
                    }
                    _ => anyhow::anyhow!("init of agent '{name}' trapped: {text}"),
                }
            })?
            .map_err(|e| anyhow::anyhow!("init of agent '{name}' failed: {e}"))?;
        if let Some((from_version, state)) = &self.last_snapshot {
            live.begin_turn(None, budget);
            if let Err(e) = live.call_restore_on_start(from_version, state).await? {
                tracing::warn!(agent = %p.identity.name, "restore of the last snapshot (v{from_version}) failed: {e}; starting from a fresh state");
            }
        }
        Ok(live)
    }

    async fn run(&mut self, mut inbox: Inbox, mut control: mpsc::Receiver<Control>) {
        loop {
            let wake_at = self.next_deadline();
            // A message already buffered, with no control request waiting and no deadline
            // passed, is taken at once: the select below registers a waker with every
            // source each time, a visible share of the message path under load.
            let due = wake_at.is_some_and(|at| at <= Instant::now());
            let ready = if control.is_empty() && !due {
                inbox.try_next()
            } else {
                None
            };
            let (msg, via) = if let Some(ready) = ready {
                ready
            } else {
                tokio::select! {
                    c = control.recv() => {
                        match c {
                            Some(Control::Stop(done)) => {
                                // Boxed, each in a statement of its own so that its
                                // future is not kept in the runner's: both are rare, and
                                // every agent's task would carry their size otherwise.
                                if let Some(durable) = inbox.durable.take() {
                                    let closed = Box::pin(durable.close());
                                    closed.await;
                                }
                                let snapshot = Box::pin(self.final_snapshot());
                                snapshot.await;
                                self.parts.status.set_state(AgentState::Stopped);
                                let _ = done.send(());
                            }
                            Some(request) => {
                                // Boxed: a swap or canary start is the largest future the
                                // runner awaits, and rare; the message path should not carry it.
                                let control = Box::pin(self.control(request));
                                control.await;
                                continue;
                            }
                            None => self.parts.status.set_state(AgentState::Stopped),
                        }
                        return;
                    }
                    _ = sleep_until(wake_at) => {
                        let deadline = Box::pin(self.on_deadline());
                        deadline.await;
                        continue;
                    }
                    Some(m) = next_from(&mut inbox.legacy) => (m, Via::Legacy),
                    Some(m) = next_from(&mut inbox.agent_ref) => (m, Via::AgentRef),
                    Some(m) = next_from(&mut inbox.broadcast) => (m, Via::Broadcast),
                    Some(d) = next_durable(&mut inbox.durable) => {
                        let durable = inbox.durable.as_mut().expect("a durable message comes from the durable inbox");
                        // Boxed: its acknowledgements make it the runner's largest
                        // future, which every agent's task would carry otherwise (a durable
                        // message costs a JetStream ack anyway, far more than the box).
                        let delivered = Box::pin(self.deliver_durable(durable, d));
                        if !delivered.await {
                            return;
                        }
                        continue;
                    }
                    else => return,
                }
            };
            let misaddressed = match inbox.claim(via, &msg.subject) {
                Claim::Deliver => false,
                Claim::Duplicate => continue,
                Claim::Misaddressed => true,
            };
            let Some(msg) = self.admit(msg, misaddressed).await else {
                continue;
            };
            if let Some(id) = msg.header(subjects::MSG_ID_HEADER) {
                if !self.seen.first_time(id) {
                    self.parts.metrics.duplicates.inc();
                    continue;
                }
            }
            if self.deliver_routed(msg).await == Outcome::AgentFailed {
                return;
            }
        }
    }

    /// Turns away, on core and durable delivery alike, what no agent handles: a message
    /// `misaddressed` to it (see [`Claim::Misaddressed`]), and one with more headers than
    /// agents accept. Gives the message back when it may be handled.
    pub(super) async fn admit(
        &mut self,
        msg: BusMessage,
        misaddressed: bool,
    ) -> Option<BusMessage> {
        if misaddressed {
            self.drop_misaddressed(&msg.subject);
            return None;
        }
        if msg.headers.len() > crate::bus::MAX_HEADERS {
            // Boxed: rare, and the runner's future should not carry a dead-letter publish.
            let overloaded = Box::pin(self.refuse_overloaded(msg));
            overloaded.await;
            return None;
        }
        Some(msg)
    }

    /// Drops a message whose agent-ref subject names another agent than this one (see
    /// [`Claim::Misaddressed`]): counted, and logged at most once a second.
    fn drop_misaddressed(&self, subject: &str) {
        let p = &self.parts;
        p.metrics.misaddressed.inc();
        if self.misaddressed_warnings.due() {
            tracing::warn!(
                agent = %p.identity.name,
                subject = %subject,
                dropped = p.metrics.misaddressed.get(),
                "dropped a message whose subject names another agent than {} (a forged or stale agent reference); address agents as agent.{{cluster}}.{{name}}.{{id}}.command.… with the reference they run as",
                p.identity.agent_ref
            );
        }
    }

    /// Dead-letters, without handing it to `handle`, a message with more headers than any
    /// agent accepts ([`crate::bus::MAX_HEADERS`]): one from a client the bus let through
    /// (a NATS server bounds only their bytes). Lowered into the agent's memory, enough of
    /// them make it run out and trap, losing its state since the last snapshot. The copy in
    /// the dead-letter subject keeps the payload and says how many headers there were.
    async fn refuse_overloaded(&mut self, mut msg: BusMessage) {
        let why = format!(
            "the message has {} headers; agents accept at most {} (its headers are not kept here)",
            msg.headers.len(),
            crate::bus::MAX_HEADERS
        );
        msg.headers.clear();
        self.dead_letter(msg, &why).await;
    }

    /// Takes a snapshot (kept for restarts after a trap); returns it encoded for persisting.
    /// One over `[limits] max_snapshot_bytes` is neither kept nor returned: the previous
    /// snapshot stays.
    pub(super) async fn take_snapshot(&mut self) -> Result<Vec<u8>, NotTaken> {
        self.since_snapshot = 0;
        let Some(live) = self.live.as_mut() else {
            return Err(NotTaken::NoInstance);
        };
        live.begin_turn(
            None,
            self.parts
                .limits
                .cpu_per_message
                .max(Duration::from_secs(1)),
        );
        match live.call_snapshot().await {
            Ok(state) => {
                self.admit_snapshot(&self.version, &state)
                    .map_err(NotTaken::TooLarge)?;
                let encoded = snapshots::encode(&self.version, &state);
                self.last_snapshot = Some((self.version.clone(), state));
                Ok(encoded)
            }
            Err(trap) => {
                let text = self.instance_trapped(&trap);
                tracing::error!(agent = %self.parts.identity.name, "snapshot trapped: {text}");
                self.parts
                    .status
                    .set_error(format!("snapshot trapped: {text}"));
                let _ = self.restart().await;
                Err(NotTaken::Trapped)
            }
        }
    }

    /// On stop: the last snapshot is on disk before the agent is reported stopped. One
    /// over the limit is not persisted, and the loss is logged as an error.
    async fn final_snapshot(&mut self) {
        let taken = self.take_snapshot().await;
        if let Some(writer) = self.writer.take() {
            writer.close().await;
        }
        match taken {
            Ok(encoded) => {
                snapshots::write(
                    self.parts.store.as_ref(),
                    &self.parts.identity.id,
                    &self.parts.identity.name,
                    &encoded,
                )
                .await;
            }
            Err(NotTaken::TooLarge(refused)) => self.report_state_lost_on_stop(&refused),
            Err(NotTaken::NoInstance | NotTaken::Trapped) => {}
        }
    }
}

/// Waits until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
