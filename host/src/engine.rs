//! The wasmtime engine of a node: its configuration (pooling allocator sized from the node
//! config, epoch interruption), the epoch ticker, and the compile cache keyed by digest so
//! N agents of one component compile once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::agent::AgentStore;
use crate::bindings::AgentPre;
use crate::config::EngineSection;

/// Instances each agent may need at once: blue plus green during an upgrade.
const INSTANCES_PER_AGENT: u32 = 2;
/// Fiber stacks beyond one per agent. A stack is held only while an instance is inside a
/// call; an agent handles one message at a time, so one per agent covers every agent being
/// mid-call at once, and the spare ones cover upgrades initialising a new version then.
const SPARE_STACKS: u32 = 64;
/// Largest wasm stack of a call: unbounded recursion traps ("stack overflow") here.
const MAX_WASM_STACK: usize = 512 << 10;
/// The fiber stack a call runs on: the wasm stack plus room for host functions.
const ASYNC_STACK: usize = MAX_WASM_STACK + (256 << 10);
/// Memory mappings one agent costs (Linux caps them per process at `vm.max_map_count`):
/// its linear memory (accessible part and the rest of its slot) and its fiber stack (stack
/// and guard page). Copy-on-write memory images add two more per memory.
const MAPPINGS_PER_AGENT: u64 = 4;
const MAPPINGS_PER_COW_IMAGE: u64 = 2;
/// Mappings the process needs besides its agents (code, heap, threads, pools).
const MAPPINGS_RESERVED: u64 = 4096;
/// Core instances and memories inside one component (a Rust wasip2 component has a
/// handful: the main module, the WASI adapter and shims).
/// They are also the most `[limits] instances`, `memories` and `tables` may allow.
pub const CORE_INSTANCES_PER_COMPONENT: u32 = 20;
pub const MEMORIES_PER_COMPONENT: u32 = 2;
pub const TABLES_PER_COMPONENT: u32 = 4;
/// Elements one table may have in the pool, the most `[limits] table_elements` may allow.
pub const TABLE_ELEMENTS: u32 = 20_000;

/// Why a component could not be loaded; the text says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read component {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("component {path} is not a regular file (it is {kind}); give the path of a .wasm component file")]
    NotAFile { path: String, kind: &'static str },
    #[error("component {path} is {} ({size} bytes{}), more than this node's limit of {} ([engine] max_component_bytes); an agent component is a few MiB: check the path, or raise [engine] max_component_bytes in the node config",
        crate::units::format_bytes(*size), if *grew { " once it grew while being read" } else { "" }, crate::units::format_bytes(*limit))]
    TooLarge {
        path: String,
        size: u64,
        limit: u64,
        grew: bool,
    },
    #[error("{what} is not a WebAssembly component ({reason}); build agents with `cargo build --release --target wasm32-wasip2`")]
    NotAComponent { what: String, reason: String },
    #[error("{what} does not implement the agent:host/agent world the host provides: {reason}; build it with the SDK in sdk/ against wit/")]
    WrongWorld { what: String, reason: String },
    #[error("{what} has sha256 {actual}, but the manifest pins {expected}; update [agent] sha256 or load the pinned component")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
}

/// A component compiled and type-checked against the agent world, ready to instantiate.
pub struct CompiledAgent {
    pub digest: String,
    pub pre: AgentPre<AgentStore>,
    pub size_bytes: usize,
}

/// One engine per node.
pub struct Engine {
    engine: wasmtime::Engine,
    linker: Linker<AgentStore>,
    cache: Mutex<HashMap<String, Arc<CompiledAgent>>>,
    /// Digest → the file name (without `.wasm`) a component was first compiled from, so
    /// `host upgrade --component NAME` finds the agents running it after upgrades too.
    names: Mutex<HashMap<String, String>>,
    tick: Duration,
    /// Largest component file [`Engine::compile_file`] reads (`[engine] max_component_bytes`).
    max_component_bytes: u64,
}

impl Engine {
    /// Builds the engine and starts its epoch ticker (stops when the engine is dropped).
    pub fn new(settings: &EngineSection) -> anyhow::Result<Arc<Engine>> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // WASIp3 async exports are not used; without them an export call is ~4x cheaper.
        config.concurrency_support(false);
        // For profiling: `perf` (and a perf map reader) then names each guest function
        // (`wasm[0]::function[50]::agent:host/guest@0.1.0#handle`) instead of a bare address.
        if std::env::var_os("AGENT_HOST_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let max_memory = settings.max_memory;
        let instances = settings
            .max_agents
            .saturating_mul(INSTANCES_PER_AGENT)
            .max(4);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(instances)
            .total_core_instances(
                instances
                    .saturating_mul(CORE_INSTANCES_PER_COMPONENT / 4)
                    .max(16),
            )
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .total_memories(instances.saturating_mul(MEMORIES_PER_COMPONENT))
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .total_tables(instances.saturating_mul(TABLES_PER_COMPONENT))
            .max_tables_per_component(TABLES_PER_COMPONENT)
            .table_elements(TABLE_ELEMENTS as usize)
            .total_stacks(settings.max_agents.saturating_add(SPARE_STACKS))
            .max_memory_size(usize::try_from(max_memory).unwrap_or(usize::MAX));
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        config.max_wasm_stack(MAX_WASM_STACK);
        config.async_stack_size(ASYNC_STACK);
        config.memory_init_cow(use_cow_images(settings.max_agents));
        // Each pool slot reserves this much address space: the largest memory an agent may
        // have, not the 4 GiB default, so thousands of slots fit in the address space.
        config.memory_reservation(max_memory);
        config.memory_guard_size(64 * 1024);
        config.memory_reservation_for_growth(0);
        let engine = wasmtime::Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        crate::capabilities::files::shadow_writes(&mut linker)?;
        crate::capabilities::add_to_linker(&mut linker)?;

        let this = Arc::new(Engine {
            engine,
            linker,
            cache: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            tick: Duration::from_millis(settings.epoch_tick_ms.max(1)),
            max_component_bytes: settings.max_component_bytes,
        });
        start_epoch_ticker(Arc::downgrade(&this));
        Ok(this)
    }

    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// How often the epoch advances (the granularity of CPU limits).
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// How many distinct components (by sha256) this engine has compiled: loading many
    /// agents of one component compiles it once.
    pub fn compiled_count(&self) -> usize {
        self.cache.lock().expect("compile cache lock").len()
    }

    /// Reads and compiles a component file (see [`Engine::compile`]). Anything but a regular
    /// file of at most `[engine] max_component_bytes` is refused before it is read, so a
    /// huge file, `/dev/zero` or a FIFO cannot fill the node's memory or hang the load.
    pub fn compile_file(
        &self,
        path: &Path,
        pinned_sha256: Option<&str>,
    ) -> Result<Arc<CompiledAgent>, LoadError> {
        use crate::bounded_file::BoundedReadError;
        let shown = path.display().to_string();
        let bytes =
            crate::bounded_file::read(path, self.max_component_bytes).map_err(|e| match e {
                BoundedReadError::Io(source) => LoadError::Read {
                    path: shown.clone(),
                    source,
                },
                BoundedReadError::NotRegular { kind } => LoadError::NotAFile {
                    path: shown.clone(),
                    kind,
                },
                BoundedReadError::TooLarge { size, limit, grew } => LoadError::TooLarge {
                    path: shown.clone(),
                    size,
                    limit,
                    grew,
                },
            })?;
        let compiled = self.compile(&bytes, &path.display().to_string(), pinned_sha256)?;
        if let Some(stem) = path.file_stem() {
            self.names
                .lock()
                .expect("component names lock")
                .entry(compiled.digest.clone())
                .or_insert_with(|| stem.to_string_lossy().into_owned());
        }
        Ok(compiled)
    }

    /// The file name (without `.wasm`) the component with `digest` was first compiled from.
    pub fn component_name(&self, digest: &str) -> Option<String> {
        self.names
            .lock()
            .expect("component names lock")
            .get(digest)
            .cloned()
    }

    /// Compiles and type-checks a component against the agent world. Cached by sha256:
    /// loading the same component again costs a hash. CPU-heavy on a miss: call it off
    /// the message path (e.g. in `spawn_blocking`).
    pub fn compile(
        &self,
        bytes: &[u8],
        what: &str,
        pinned_sha256: Option<&str>,
    ) -> Result<Arc<CompiledAgent>, LoadError> {
        let digest = hex::encode(Sha256::digest(bytes));
        if let Some(expected) = pinned_sha256 {
            if !expected.eq_ignore_ascii_case(&digest) {
                return Err(LoadError::DigestMismatch {
                    what: what.to_string(),
                    expected: expected.to_string(),
                    actual: digest,
                });
            }
        }
        if let Some(hit) = self.cache.lock().expect("compile cache lock").get(&digest) {
            return Ok(hit.clone());
        }
        if wasmparser_is_core_module(bytes) {
            return Err(LoadError::NotAComponent {
                what: what.to_string(),
                reason: "it is a core WebAssembly module, not a component".into(),
            });
        }
        let component =
            Component::new(&self.engine, bytes).map_err(|e| LoadError::NotAComponent {
                what: what.to_string(),
                reason: format!("{e:#}"),
            })?;
        let instance_pre =
            self.linker
                .instantiate_pre(&component)
                .map_err(|e| LoadError::WrongWorld {
                    what: what.to_string(),
                    reason: format!("{e:#}"),
                })?;
        let pre = AgentPre::new(instance_pre).map_err(|e| LoadError::WrongWorld {
            what: what.to_string(),
            reason: format!("{e:#}"),
        })?;
        let compiled = Arc::new(CompiledAgent {
            digest: digest.clone(),
            pre,
            size_bytes: bytes.len(),
        });
        self.cache
            .lock()
            .expect("compile cache lock")
            .insert(digest, compiled.clone());
        Ok(compiled)
    }
}

/// Whether memories start as copy-on-write mappings of the component's data image (cheap
/// to instantiate, shared pages) or as copies of it. Copy-on-write costs two more memory
/// mappings per agent, so a node sized for more agents than the kernel's mapping limit
/// allows copies instead; a node that cannot fit even that is told how to fix it.
fn use_cow_images(max_agents: u32) -> bool {
    let limit = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    let Some(limit) = limit else {
        return true;
    };
    let (cow, fits) = mapping_plan(max_agents, limit);
    if !fits {
        let needed = u64::from(max_agents) * MAPPINGS_PER_AGENT + MAPPINGS_RESERVED;
        tracing::warn!(
            "[engine] max_agents = {max_agents} needs about {needed} memory mappings, but this kernel allows {limit} per process (vm.max_map_count): loads will fail with 'Cannot allocate memory' after about {} agents; raise it (sysctl -w vm.max_map_count={}) or lower max_agents",
            limit.saturating_sub(MAPPINGS_RESERVED) / MAPPINGS_PER_AGENT,
            (needed + u64::from(max_agents) * MAPPINGS_PER_COW_IMAGE).next_power_of_two()
        );
    }
    cow
}

/// Given the kernel's mapping limit: whether copy-on-write images fit, and whether the
/// agents fit at all.
fn mapping_plan(max_agents: u32, limit: u64) -> (bool, bool) {
    let needed = |per_agent: u64| u64::from(max_agents) * per_agent + MAPPINGS_RESERVED;
    (
        needed(MAPPINGS_PER_AGENT + MAPPINGS_PER_COW_IMAGE) <= limit,
        needed(MAPPINGS_PER_AGENT) <= limit,
    )
}

/// A core module starts with the same magic as a component but a different layer/version.
fn wasmparser_is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[0..4] == b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

fn start_epoch_ticker(engine: Weak<Engine>) {
    let tick = match engine.upgrade() {
        Some(e) => e.tick,
        None => return,
    };
    std::thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || loop {
            std::thread::sleep(tick);
            match engine.upgrade() {
                Some(e) => e.engine.increment_epoch(),
                None => return,
            }
        })
        .expect("spawn epoch ticker thread");
}

#[cfg(test)]
mod tests {
    use super::mapping_plan;

    #[test]
    fn copy_on_write_images_are_dropped_before_the_mapping_limit_is_reached() {
        let linux_default = 65_530;
        assert_eq!(mapping_plan(1_000, linux_default), (true, true));
        assert_eq!(
            mapping_plan(10_000, linux_default),
            (true, true),
            "64,096 fits"
        );
        assert_eq!(
            mapping_plan(12_000, linux_default),
            (false, true),
            "copies instead"
        );
        assert_eq!(
            mapping_plan(20_000, linux_default),
            (false, false),
            "warned at start"
        );
        assert_eq!(
            mapping_plan(20_000, 262_144),
            (true, true),
            "a raised limit"
        );
    }
}
