//! A node: the engine, the bus, the store and the agents loaded on it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::instance::{Code, InstanceLimits};
use crate::agent::runner::{self, AgentControls, Control, RunnerParts};
use crate::agent::upgrade::SwapReport;
use crate::agent::AgentStatus;
use crate::agent::{AgentHandle, AgentSummary, Identity};
use crate::bus::{BusMessage, EmbeddedBus, NatsBus, NatsOptions, Transport};
use crate::config::NodeConfig;
use crate::engine::Engine;
use crate::manifest::Manifest;
use crate::storage::{EmbeddedKv, KvBackend, NatsKv, NatsKvOptions, SyncPolicy};
use crate::telemetry::Metrics;

#[cfg(feature = "bench")]
mod bench;
pub mod data_dir;
mod directory;
mod grants;
mod reservation;
mod rollout;
use directory::NodeDirectory;
use reservation::Reservation;
pub use rollout::{CanaryRun, WaveReport};

/// What `host load` asks for.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoadRequest {
    /// The component; defaults to the manifest's `[agent] component`.
    pub component: Option<PathBuf>,
    pub manifest: Option<PathBuf>,
    /// Overrides the manifest's name (or names an agent loaded without a manifest).
    pub name: Option<String>,
}

pub struct Node {
    pub config: NodeConfig,
    pub engine: Arc<Engine>,
    pub bus: Arc<dyn Transport>,
    pub store: Arc<dyn KvBackend>,
    pub metrics: Arc<Metrics>,
    /// LLM backends with their limiters and breakers, shared by every agent.
    pub llm: Arc<crate::llm::LlmService>,
    directory: Arc<NodeDirectory>,
    agents: tokio::sync::Mutex<HashMap<String, AgentHandle>>,
    /// Name → id of the agents whose load is in progress (see [`Reservation`]). Locked only
    /// briefly, and only while `agents` is locked or on its own.
    loading: Arc<std::sync::Mutex<HashMap<String, String>>>,
    /// Set once [`Node::shutdown`] begins: a load finishing after it stops its agent again.
    stopping: std::sync::atomic::AtomicBool,
    /// Bytes every agent's mailbox holds together (`[node] mailboxes_max_bytes`); each
    /// agent's own budget (`mailbox_max_bytes`) draws on it.
    pub mailboxes: Arc<crate::bus::ByteBudget>,
    /// JetStream durable delivery, on NATS only (the stream is made at the first durable load).
    durable: Option<Arc<crate::agent::durable::DurableDelivery>>,
}

impl Node {
    /// Starts the node's services: with `[nats] url` (env `NATS_URL`) set, the NATS
    /// transport and JetStream KV (storage and snapshots shared by every node on the
    /// cluster); otherwise the embedded defaults (in-process bus, file KV store).
    /// Agents listed in the config are loaded by [`Node::load_configured_agents`].
    pub async fn start(config: NodeConfig) -> anyhow::Result<Arc<Node>> {
        Self::start_wrapping(config, |bus, store| (bus, store)).await
    }

    /// Like [`Node::start`], with the bus and KV backend passed through `wrap` first (fault
    /// injection in tests: a decorator that hangs or fails some calls of the real backend).
    pub async fn start_wrapping(
        config: NodeConfig,
        wrap: impl FnOnce(
            Arc<dyn Transport>,
            Arc<dyn KvBackend>,
        ) -> (Arc<dyn Transport>, Arc<dyn KvBackend>),
    ) -> anyhow::Result<Arc<Node>> {
        data_dir::prepare(&config.node.data_dir)?;
        let engine = Engine::new(&config.engine)?;
        let mut durable = None;
        let (bus, store): (Arc<dyn Transport>, Arc<dyn KvBackend>) = match &config.nats.url {
            Some(url) => {
                let timeout = Duration::from_millis(config.nats.connect_timeout_ms);
                let nats = NatsBus::connect(&NatsOptions {
                    url: url.clone(),
                    connection_name: format!("agent-host {}", config.node.name),
                    connect_timeout: timeout,
                    subscription_capacity: config.nats.subscription_capacity as usize,
                    credentials_file: config.nats.credentials_file.clone(),
                })
                .await?;
                let kv = NatsKv::open(
                    nats.client().clone(),
                    &NatsKvOptions {
                        bucket: config.nats.kv_bucket.clone(),
                        replicas: config.nats.kv_replicas as usize,
                        timeout: timeout.max(Duration::from_secs(1)),
                    },
                )
                .await?;
                tracing::info!(url = %nats.url(), bucket = %kv.bucket(), "messaging on NATS, storage on JetStream KV");
                durable = Some(Arc::new(crate::agent::durable::DurableDelivery::new(
                    nats.client().clone(),
                    nats.url(),
                    crate::agent::durable::DurableSettings::from_config(&config.nats),
                )));
                (Arc::new(nats), Arc::new(kv))
            }
            None => (
                Arc::new(EmbeddedBus::new(
                    usize::try_from(config.defaults.max_message_bytes)
                        .unwrap_or(usize::MAX)
                        .max(1024),
                )),
                Arc::new(EmbeddedKv::open_with(
                    &config.node.data_dir.join("kv.redb"),
                    match config.node.kv_sync_ms {
                        0 => SyncPolicy::EveryWrite,
                        ms => SyncPolicy::Interval(Duration::from_millis(ms)),
                    },
                )?),
            ),
        };
        let (bus, store) = wrap(bus, store);
        let metrics = Arc::new(Metrics::new());
        let llm = crate::llm::LlmService::new(
            &config.llm,
            config.defaults.host_call_timeout_ms,
            metrics.clone(),
        )?;
        let mailboxes = crate::bus::ByteBudget::new(
            usize::try_from(config.node.mailboxes_max_bytes).unwrap_or(usize::MAX),
        );
        Ok(Arc::new(Node {
            config,
            engine,
            bus,
            store,
            metrics,
            llm,
            directory: Arc::new(NodeDirectory::default()),
            agents: tokio::sync::Mutex::new(HashMap::new()),
            loading: Arc::default(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            mailboxes,
            durable,
        }))
    }

    /// Loads every agent the node config lists; the first failure stops the start.
    /// `AGENT_NAME`/`AGENT_ID`/`CAPABILITY_CLUSTER` apply here (to the one agent listed).
    pub async fn load_configured_agents(&self) -> anyhow::Result<()> {
        for entry in self.config.agents.clone() {
            let req = LoadRequest {
                component: None,
                manifest: Some(entry.manifest.clone()),
                name: None,
            };
            let over = self.config.agent_override.clone();
            self.load_overriding(req, &over).await.map_err(|e| {
                anyhow::anyhow!("node config: agent {}: {e}", entry.manifest.display())
            })?;
        }
        Ok(())
    }

    /// Loads an agent. Nothing of the node changes when this fails.
    pub async fn load(&self, req: LoadRequest) -> anyhow::Result<AgentSummary> {
        self.load_overriding(req, &Default::default()).await
    }

    async fn load_overriding(
        &self,
        req: LoadRequest,
        over: &crate::config::AgentOverride,
    ) -> anyhow::Result<AgentSummary> {
        let mut manifest = match &req.manifest {
            Some(path) => Manifest::from_file(path)?,
            None => {
                let component = req.component.as_deref().ok_or_else(|| {
                    anyhow::anyhow!("nothing to load: give a component file (host load plugin.wasm) or a manifest with [agent] component")
                })?;
                let name = match &req.name {
                    Some(n) => n.clone(),
                    None => name_from_file(component)?,
                };
                Manifest::deny_all(&name)?
            }
        };
        if let Some(name) = &req.name {
            crate::subjects::validate_name(name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
            manifest.agent.name = name.clone();
        }
        over.apply(&mut manifest);
        let component = req.component.clone().or_else(|| manifest.agent.component.clone()).ok_or_else(|| {
            anyhow::anyhow!("no component to load: give one (host load plugin.wasm --manifest ...) or set [agent] component in the manifest")
        })?;
        let limits = self.instance_limits(&manifest)?;
        if manifest.subscriptions.durable && self.durable.is_none() {
            let file = manifest.source.as_ref().map(|p| p.display().to_string());
            anyhow::bail!(
                "manifest {}: {}",
                file.as_deref().unwrap_or("<inline>"),
                crate::agent::inbox::DURABLE_NEEDS_NATS
            );
        }

        // Refuse early (cheap), compile without holding the agents lock, check again at insert.
        self.check_capacity_and_unique(&*self.agents.lock().await, &manifest)?;
        let engine = self.engine.clone();
        let pin = manifest.agent.sha256.clone();
        let path = component.clone();
        let compiled =
            tokio::task::spawn_blocking(move || engine.compile_file(&path, pin.as_deref()))
                .await??;
        self.start_agent(manifest, Code::Wasm(compiled), limits)
            .await
    }

    #[cfg(feature = "bench")]
    /// Runs a native Rust handler as agent `name` through the same runner and capability
    /// checks as a component (nothing granted but replies): the dispatch benchmark's baseline.
    #[doc(hidden)]
    pub async fn load_native(
        &self,
        name: &str,
        factory: crate::agent::native::NativeFactory,
    ) -> anyhow::Result<AgentSummary> {
        let manifest = Manifest::deny_all(name)?;
        let limits = self.instance_limits(&manifest)?;
        self.start_agent(manifest, Code::Native(factory), limits)
            .await
    }

    /// Starts an agent and adds it to the table. Its name and id are reserved first, and its
    /// `init` runs without the table locked: a slow `init` delays only its own load, never
    /// `list`, `status`, `health` or another load.
    async fn start_agent(
        &self,
        manifest: Manifest,
        code: Code,
        limits: InstanceLimits,
    ) -> anyhow::Result<AgentSummary> {
        let reservation = {
            let agents = self.agents.lock().await;
            self.check_capacity_and_unique(&agents, &manifest)?;
            Reservation::new(&self.loading, &manifest)
        };
        let identity = Identity::new(
            &manifest.agent.cluster,
            &manifest.agent.name,
            &manifest.agent.id.to_string(),
        );
        let metrics = self.metrics.for_agent(&identity.name, &identity.cluster);
        let labels = metrics.labels.clone();
        let started = self
            .start_runner(&identity, manifest, code, limits, metrics)
            .await;
        let handle = match started {
            Ok(handle) => handle,
            Err(e) => {
                // Reserved, so no other agent of this name has series to keep.
                self.metrics.remove_agent(&labels);
                return Err(e);
            }
        };
        let mut agents = self.agents.lock().await;
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            drop(agents);
            handle.stop().await;
            self.metrics.remove_agent(&labels);
            anyhow::bail!(
                "agent '{}' was not added: the node is shutting down",
                identity.name
            );
        }
        for pattern in &handle.subscriptions {
            tracing::info!(agent = %identity.name, "subscribed to {pattern}");
        }
        tracing::info!(agent = %identity.name, agent_ref = %identity.agent_ref, "Agent '{}' v{} is ready", identity.name, handle.status.version.lock().expect("status lock"));
        let summary = handle.summary();
        self.directory.insert(&identity);
        agents.insert(identity.name.clone(), handle);
        drop(reservation);
        self.metrics.set_agents(agents.len());
        Ok(summary)
    }

    /// Instantiates, initialises and subscribes an agent (the slow part of a load).
    async fn start_runner(
        &self,
        identity: &Identity,
        manifest: Manifest,
        code: Code,
        limits: InstanceLimits,
        metrics: Arc<crate::telemetry::AgentMetrics>,
    ) -> anyhow::Result<AgentHandle> {
        let caps = Arc::new(self.capabilities(identity, &manifest, &metrics)?);
        let parts = RunnerParts {
            identity: identity.clone(),
            engine: self.engine.clone(),
            code,
            caps,
            limits,
            bus: self.bus.clone(),
            store: self.store.clone(),
            metrics,
            status: Arc::new(AgentStatus::default()),
            snapshot_every: self.config.node.snapshot_every,
            max_traps_per_message: self.config.node.max_traps_per_message.max(1),
            dedup_window: self.config.node.dedup_window,
            rollback_window: Duration::from_secs(self.config.node.rollback_window_secs),
            durable: self.durable.clone(),
        };
        let mailbox = crate::bus::MailboxLimits {
            messages: self.config.node.mailbox_capacity,
            bytes: Some(crate::bus::ByteBudget::within(
                &self.mailboxes,
                usize::try_from(self.config.node.mailbox_max_bytes).unwrap_or(usize::MAX),
            )),
        };
        runner::start(parts, Arc::new(manifest), mailbox).await
    }

    /// Refuses a load that would pass `[engine] max_agents` or reuse the name or id of an
    /// agent loaded or being loaded.
    fn check_capacity_and_unique(
        &self,
        agents: &HashMap<String, AgentHandle>,
        manifest: &Manifest,
    ) -> anyhow::Result<()> {
        let loading = self.loading.lock().expect("loading lock");
        if agents.len() + loading.len() >= self.config.engine.max_agents as usize {
            anyhow::bail!(
                "the node already runs {} agents (and loads {} more), its [engine] max_agents; raise it in the node config",
                agents.len(),
                loading.len()
            );
        }
        let file = manifest
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<no manifest>".into());
        let name = &manifest.agent.name;
        if agents.contains_key(name) {
            anyhow::bail!(
                "manifest {file}: field agent.name: an agent named '{name}' is already loaded on this node; choose another name (or --name) or unload it first"
            );
        }
        if loading.contains_key(name) {
            anyhow::bail!(
                "manifest {file}: field agent.name: an agent named '{name}' is being loaded on this node right now; choose another name (or --name), or wait for that load to finish"
            );
        }
        let id = manifest.agent.id.to_string();
        if let Some(other) = agents.values().find(|a| a.identity.id == id) {
            anyhow::bail!(
                "manifest {file}: field agent.id: id {id} is already used by agent '{}'; every agent needs its own id (remove the field to generate one)",
                other.identity.name
            );
        }
        if let Some((other, _)) = loading.iter().find(|(_, loading_id)| **loading_id == id) {
            anyhow::bail!(
                "manifest {file}: field agent.id: id {id} is already used by agent '{other}', which is being loaded; every agent needs its own id (remove the field to generate one)"
            );
        }
        Ok(())
    }

    /// Stops an agent after its in-flight message and removes it.
    pub async fn unload(&self, name: &str) -> anyhow::Result<AgentSummary> {
        let handle = {
            let mut agents = self.agents.lock().await;
            let handle = agents
                .remove(name)
                .ok_or_else(|| self.unknown_agent(name, &agents))?;
            self.metrics.set_agents(agents.len());
            handle
        };
        self.directory.remove(name);
        let mut summary = handle.summary();
        let labels = handle.metrics.labels.clone();
        handle.stop().await;
        self.metrics.remove_agent(&labels);
        summary.state = crate::agent::AgentState::Stopped;
        tracing::info!(agent = %name, "Agent '{name}' unloaded");
        Ok(summary)
    }

    pub async fn list(&self) -> Vec<AgentSummary> {
        let agents = self.agents.lock().await;
        let mut out: Vec<_> = agents.values().map(AgentHandle::summary).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub async fn status(&self, name: &str) -> anyhow::Result<AgentSummary> {
        let agents = self.agents.lock().await;
        agents
            .get(name)
            .map(AgentHandle::summary)
            .ok_or_else(|| self.unknown_agent(name, &agents))
    }

    /// The manifest summary of a loaded agent (what it may do).
    pub async fn grants(&self, name: &str) -> anyhow::Result<String> {
        let agents = self.agents.lock().await;
        agents
            .get(name)
            .map(|a| a.manifest.describe())
            .ok_or_else(|| self.unknown_agent(name, &agents))
    }

    fn unknown_agent(&self, name: &str, agents: &HashMap<String, AgentHandle>) -> anyhow::Error {
        if self
            .loading
            .lock()
            .expect("loading lock")
            .contains_key(name)
        {
            return anyhow::anyhow!(
                "agent '{name}' is still being loaded (its init is running); try again once `host load` has answered"
            );
        }
        let mut names: Vec<_> = agents.keys().cloned().collect();
        names.sort();
        if names.is_empty() {
            anyhow::anyhow!("no agent named '{name}' is loaded (the node runs no agents; load one with `host load`)")
        } else {
            anyhow::anyhow!(
                "no agent named '{name}' is loaded; loaded agents: {}",
                names.join(", ")
            )
        }
    }

    /// Publishes a message from outside (the CLI); with `wait`, waits for a reply.
    pub async fn send(
        &self,
        msg: BusMessage,
        wait: Option<Duration>,
    ) -> anyhow::Result<Option<BusMessage>> {
        let subject = msg.subject.clone();
        match wait {
            None => {
                self.bus
                    .publish(msg)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot publish to '{subject}': {e}"))?;
                Ok(None)
            }
            Some(timeout) => match self.bus.request(msg, timeout).await {
                Ok(reply) => Ok(Some(reply)),
                Err(crate::bus::BusError::Timeout) => {
                    anyhow::bail!(
                        "no reply on '{subject}' within {:.1} s",
                        timeout.as_secs_f64()
                    )
                }
                Err(crate::bus::BusError::NoResponders(_)) => {
                    anyhow::bail!("no agent listens on '{subject}' (no responders); check the subject with `host list`")
                }
                Err(e) => anyhow::bail!("request to '{subject}' failed: {e}"),
            },
        }
    }

    /// Stops every agent (each persists a final snapshot).
    pub async fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        let handles: Vec<AgentHandle> = self.agents.lock().await.drain().map(|(_, h)| h).collect();
        futures::future::join_all(handles.into_iter().map(AgentHandle::stop)).await;
        self.metrics.set_agents(0);
        if let Err(e) = self.store.sync().await {
            tracing::error!("cannot flush the kv store to disk: {e}");
        }
    }

    /// Whether every agent is running (for /health).
    pub async fn health(&self) -> (bool, Vec<AgentSummary>) {
        let list = self.list().await;
        let ok = list
            .iter()
            .all(|a| a.state == crate::agent::AgentState::Running);
        (ok, list)
    }
}

/// `echo.wasm` → `echo`; names must be valid agent names.
fn name_from_file(path: &Path) -> anyhow::Result<String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_lowercase()
        .replace('_', "-");
    crate::subjects::validate_name(&stem).map_err(|e| {
        anyhow::anyhow!(
            "cannot name the agent after the file {} ({e}); give a name with --name",
            path.display()
        )
    })?;
    Ok(stem)
}

impl Node {
    /// Swaps agent `name` to the component at `component`, carrying its state across. The new
    /// version is compiled, type-checked, instantiated and initialised before the agent
    /// pauses; any failure leaves the running version untouched.
    pub async fn upgrade(&self, name: &str, component: &Path) -> anyhow::Result<SwapReport> {
        let green = self.prepare_green(name, component).await?;
        self.controls(name)
            .await?
            .ask(|reply| Control::Swap(Box::new(green), reply))
            .await?
            .map_err(anyhow::Error::msg)
    }

    /// Returns agent `name` to the version its last upgrade replaced (see [`SwapReport`]).
    pub async fn rollback(&self, name: &str, force: bool) -> anyhow::Result<SwapReport> {
        self.controls(name)
            .await?
            .ask(|reply| Control::Rollback { force, reply })
            .await?
            .map_err(anyhow::Error::msg)
    }

    /// Keeps the upgraded version and retires the one kept warm.
    pub async fn promote(&self, name: &str) -> anyhow::Result<String> {
        self.controls(name)
            .await?
            .ask(Control::Promote)
            .await?
            .map_err(anyhow::Error::msg)
    }

    async fn controls(&self, name: &str) -> anyhow::Result<AgentControls> {
        let agents = self.agents.lock().await;
        agents
            .get(name)
            .map(AgentHandle::controls)
            .ok_or_else(|| self.unknown_agent(name, &agents))
    }
}
