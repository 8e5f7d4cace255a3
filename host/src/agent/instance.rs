//! Creating an agent's store and live instance from its pre-instantiated component.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx};

use super::limits::{
    describe_trap, within_lifecycle_bound, HostCallWatch, InstanceCounts, LimitHit, Limiter,
};
#[cfg(feature = "bench")]
use super::native::{NativeFactory, NativeGuest};
use super::stdio::LogStream;
use super::{AgentCaps, AgentStore, CpuBudgetExceeded, Turn};
use crate::bindings::{Agent, AgentRef, Message};
use crate::engine::{CompiledAgent, Engine};
use crate::manifest::{FilesAccess, FILES_GUEST_DIR};

/// What an agent runs: a compiled component, or (as the benchmarks' baseline) native code
/// driven through the same runner and capability checks.
#[derive(Clone)]
pub enum Code {
    Wasm(Arc<CompiledAgent>),
    #[cfg(feature = "bench")]
    Native(NativeFactory),
}

impl Code {
    /// Whether this is a component (native code, a benchmark's baseline, cannot be upgraded).
    pub fn is_component(&self) -> bool {
        match self {
            Code::Wasm(_) => true,
            #[cfg(feature = "bench")]
            Code::Native(_) => false,
        }
    }

    /// The sha256 of the component ("native" for native code).
    pub fn digest(&self) -> String {
        match self {
            Code::Wasm(c) => c.digest.clone(),
            #[cfg(feature = "bench")]
            Code::Native(_) => "native".to_string(),
        }
    }
}

enum Guest {
    Wasm(Agent),
    #[cfg(feature = "bench")]
    Native(Box<dyn NativeGuest>),
}

/// Limits applied to one instance.
#[derive(Clone, Copy, Debug)]
pub struct InstanceLimits {
    pub memory_bytes: u64,
    pub cpu_per_message: Duration,
    /// Longest the instance may stay inside one host call before the call is abandoned.
    pub host_call_limit: Duration,
    /// Core instances, tables, memories and table elements the instance may create.
    pub counts: InstanceCounts,
    /// Longest `init`, `version`, and the `restore` of a new instance, may take in all
    /// (`[defaults] init_timeout_ms`): a load or restart waits on them.
    pub init_timeout: Duration,
    /// Longest a `snapshot`, or a `restore` handing a serving agent's state over, may take in
    /// all (`[defaults] handoff_timeout_ms`): the agent serves nothing meanwhile.
    pub handoff_timeout: Duration,
    /// Largest snapshot the host keeps or hands on (see `agent/snapshots.rs`).
    pub max_snapshot_bytes: u64,
}

const INIT_FIELD: &str = "[defaults] init_timeout_ms";
const HANDOFF_FIELD: &str = "[defaults] handoff_timeout_ms";

/// A live instance and the store that owns its memory.
pub struct Live {
    pub store: Store<AgentStore>,
    guest: Guest,
    limits: InstanceLimits,
}

/// The `guest` exports; the outer error is a trap (the instance is then unusable). Every
/// call is bounded: CPU by the epoch deadline, time inside one host call by the watch, and
/// the lifecycle calls (all but `handle`) by wall time in all.
impl Live {
    pub async fn call_version(&mut self) -> wasmtime::Result<String> {
        let watch = self.store.data().watch.clone();
        let limit = self.limits.init_timeout;
        let Live { store, guest, .. } = self;
        let call = watch.bound(async move {
            match guest {
                Guest::Wasm(b) => b.agent_host_guest().call_version(store).await,
                #[cfg(feature = "bench")]
                Guest::Native(n) => Ok(n.version()),
            }
        });
        within_lifecycle_bound("version", limit, INIT_FIELD, call).await
    }

    pub async fn call_init(&mut self, me: &AgentRef) -> wasmtime::Result<Result<(), String>> {
        let watch = self.store.data().watch.clone();
        let limit = self.limits.init_timeout;
        let Live { store, guest, .. } = self;
        let call = watch.bound(async move {
            match guest {
                Guest::Wasm(b) => b.agent_host_guest().call_init(store, me).await,
                #[cfg(feature = "bench")]
                Guest::Native(_) => Ok(Ok(())),
            }
        });
        within_lifecycle_bound("init", limit, INIT_FIELD, call).await
    }

    pub async fn call_handle(&mut self, msg: &Message) -> wasmtime::Result<Result<(), String>> {
        let watch = self.store.data().watch.clone();
        let Live { store, guest, .. } = self;
        watch
            .bound(async move {
                match guest {
                    Guest::Wasm(b) => b.agent_host_guest().call_handle(store, msg).await,
                    #[cfg(feature = "bench")]
                    Guest::Native(n) => Ok(n.handle(store.data_mut(), msg).await),
                }
            })
            .await
    }

    pub async fn call_snapshot(&mut self) -> wasmtime::Result<Vec<u8>> {
        let watch = self.store.data().watch.clone();
        let limit = self.limits.handoff_timeout;
        let Live { store, guest, .. } = self;
        let call = watch.bound(async move {
            match guest {
                Guest::Wasm(b) => b.agent_host_guest().call_snapshot(store).await,
                #[cfg(feature = "bench")]
                Guest::Native(n) => Ok(n.snapshot()),
            }
        });
        within_lifecycle_bound("snapshot", limit, HANDOFF_FIELD, call).await
    }

    /// `restore` as a hand-off: a serving agent's state to another of its versions (an
    /// upgrade, a rollback, a canary), bounded by `[defaults] handoff_timeout_ms`.
    pub async fn call_restore(
        &mut self,
        from_version: &str,
        state: &[u8],
    ) -> wasmtime::Result<Result<(), String>> {
        let limit = self.limits.handoff_timeout;
        self.restore_within(from_version, state, limit, HANDOFF_FIELD)
            .await
    }

    /// `restore` of a new instance before it serves (a start or a restart from the last
    /// snapshot), bounded like `init` by `[defaults] init_timeout_ms`.
    pub async fn call_restore_on_start(
        &mut self,
        from_version: &str,
        state: &[u8],
    ) -> wasmtime::Result<Result<(), String>> {
        let limit = self.limits.init_timeout;
        self.restore_within(from_version, state, limit, INIT_FIELD)
            .await
    }

    async fn restore_within(
        &mut self,
        from_version: &str,
        state: &[u8],
        limit: Duration,
        field: &'static str,
    ) -> wasmtime::Result<Result<(), String>> {
        let watch = self.store.data().watch.clone();
        let Live { store, guest, .. } = self;
        let call = watch.bound(async move {
            match guest {
                Guest::Wasm(b) => {
                    b.agent_host_guest()
                        .call_restore(store, from_version, state)
                        .await
                }
                #[cfg(feature = "bench")]
                Guest::Native(n) => Ok(n.restore(from_version, state)),
            }
        });
        within_lifecycle_bound("restore", limit, field, call).await
    }
}

impl Live {
    /// Opens a turn: sets what host calls check against and arms the CPU deadline.
    pub fn begin_turn(&mut self, reply_to: Option<&str>, budget: Duration) {
        let data = self.store.data_mut();
        data.limits.begin_turn();
        let turn = &mut data.turn;
        turn.set_reply_to(reply_to);
        turn.replied = false;
        turn.cpu_budget = budget;
        self.store.set_epoch_deadline(1);
    }

    /// Wall time since the current (or last) export call began.
    pub fn since_call_start(&self) -> std::time::Duration {
        self.store.data().watch.since_call_start()
    }

    /// What a trap of the current call was, in words, and which limit it hit (if any).
    pub fn describe_trap(&self, trap: &wasmtime::Error) -> (String, Option<LimitHit>) {
        describe_trap(trap, self.store.data().limits.refused_in_turn())
    }

    /// Bytes of linear memory this instance grew to (a canary's memory gate reads it).
    pub fn memory_in_use(&self) -> u64 {
        self.store.data().limits.memory_in_use()
    }
}

/// Instantiates `compiled` with nothing granted through WASI but stdout/stderr (to the log),
/// clocks, randomness and, with `[files]`, the agent's private directory.
pub async fn instantiate(
    engine: &Engine,
    code: &Code,
    caps: Arc<AgentCaps>,
    limits: InstanceLimits,
) -> anyhow::Result<Live> {
    let name = caps.runtime.identity.name.clone();
    let mut wasi = WasiCtx::builder();
    wasi.stdout(LogStream::new(&caps.runtime.log_rate, "stdout"))
        .stderr(LogStream::new(&caps.runtime.log_rate, "stderr"))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    if let Some(files) = &caps.files {
        // cap-std resolves every path inside this directory: `..`, absolute paths and
        // symlinks cannot leave it.
        let perms = match files.access {
            FilesAccess::ReadOnly => FsPerms::ReadOnly,
            FilesAccess::ReadWrite => FsPerms::ReadWrite,
        };
        wasi.preopened_dir(&files.host_path, FILES_GUEST_DIR, perms)
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot open the [files] directory {} of agent '{name}': {e:#}; check that the node's data dir is writable",
                    files.host_path.display()
                )
            })?;
    }
    let wasi = wasi.build();
    let limiter = Limiter::new(
        &name,
        limits.memory_bytes,
        limits.counts,
        caps.messaging.metrics.clone(),
    );
    let watch = HostCallWatch::new(limits.host_call_limit, engine.tick());
    let data = AgentStore {
        wasi,
        table: ResourceTable::new(),
        limits: limiter,
        watch: watch.clone(),
        caps,
        turn: Turn::idle(),
    };
    let mut store = Store::new(engine.wasmtime(), data);
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_callback(|ctx| {
        let data = ctx.data();
        if data.cpu_used() > data.turn.cpu_budget {
            let budget_ms = data.turn.cpu_budget.as_millis() as u64;
            return Err(CpuBudgetExceeded { budget_ms }.into());
        }
        // Let other agents run on this worker thread, then keep going. `yield_now` puts the
        // task at the back of the run queue; a plain wake would re-run it first.
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
    // Instantiation runs the component's start code: bound it like a call.
    store.data_mut().turn.cpu_budget = limits.cpu_per_message.max(Duration::from_secs(1));
    store.set_epoch_deadline(1);
    let guest = match code {
        Code::Wasm(compiled) => Guest::Wasm(
            watch
                .bound(compiled.pre.instantiate_async(&mut store))
                .await
                .map_err(|e| match limits.counts.explain(&e) {
                    Some(why) => wasmtime::format_err!("agent '{name}': {why}"),
                    None => e,
                })?,
        ),
        #[cfg(feature = "bench")]
        Code::Native(factory) => Guest::Native(factory()),
    };
    Ok(Live {
        store,
        guest,
        limits,
    })
}
