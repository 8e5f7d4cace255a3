//! What an agent gets on this node: its instance limits and its capability contexts, from
//! its manifest where it says, else from the node's `[defaults]`.

use std::sync::Arc;
use std::time::Duration;

use super::Node;
use crate::agent::instance::InstanceLimits;
use crate::agent::{AgentCaps, FilesDir, Identity};
use crate::capabilities::{
    kv::KvCtx, llm::LlmCtx, log_rate::LogRate, messaging::MessagingCtx, rate::PublishRate,
    runtime::RuntimeCtx,
};
use crate::manifest::Manifest;
use crate::storage::Quota;

/// The least time the host-call watch allows past a host call's own timeout before it
/// abandons the instance. A busy or hypervisor-stalled runtime can poll a call late: with
/// 100 ms, a stall between a 300 ms timeout and the watch trapped agents whose call had
/// already timed out cleanly.
const MIN_HOST_CALL_MARGIN_MS: u64 = 1_000;

impl Node {
    /// The limits of one instance: the manifest's `[limits]`, else the node's `[defaults]`.
    pub(super) fn instance_limits(&self, manifest: &Manifest) -> anyhow::Result<InstanceLimits> {
        let d = &self.config.defaults;
        let memory = manifest.limits.memory.unwrap_or(d.memory);
        if memory > self.config.engine.max_memory {
            anyhow::bail!(
                "manifest {}: field limits.memory: {} is more than this node's [engine] max_memory of {}; lower it or raise max_memory in the node config",
                manifest.source.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                crate::units::format_bytes(memory),
                crate::units::format_bytes(self.config.engine.max_memory)
            );
        }
        let cpu = manifest
            .limits
            .cpu_ms_per_message
            .unwrap_or(d.cpu_ms_per_message);
        // The capability modules time out their own calls at these bounds; the margin lets
        // them answer `timeout` before the instance is abandoned for being blocked.
        let call_ms = d
            .host_call_timeout_ms
            .max(self.config.llm.timeout_ms.unwrap_or(0));
        let margin_ms = (call_ms / 4).max(MIN_HOST_CALL_MARGIN_MS);
        let host_call_limit = Duration::from_millis(call_ms + margin_ms);
        Ok(InstanceLimits {
            memory_bytes: memory,
            cpu_per_message: Duration::from_millis(cpu),
            host_call_limit,
            counts: crate::agent::limits::counts_for(manifest, &d.counts)?,
            init_timeout: Duration::from_millis(d.init_timeout_ms),
            handoff_timeout: Duration::from_millis(d.handoff_timeout_ms),
            max_snapshot_bytes: manifest.max_snapshot_bytes(),
        })
    }

    /// What the agent may use, each capability's context built from its manifest's grants
    /// and the node's defaults.
    pub(super) fn capabilities(
        &self,
        identity: &Identity,
        manifest: &Manifest,
        metrics: &Arc<crate::telemetry::AgentMetrics>,
    ) -> anyhow::Result<AgentCaps> {
        let d = &self.config.defaults;
        let max_message = manifest
            .limits
            .max_message_bytes
            .unwrap_or(d.max_message_bytes);
        let files_dir = match manifest.files {
            None => None,
            Some(access) => Some(
                FilesDir::create(
                    &self.config.node.data_dir,
                    identity,
                    access,
                    manifest.files_max_bytes.unwrap_or(d.files_max_bytes),
                    metrics.clone(),
                )
                .map_err(
                    |e| anyhow::anyhow!("cannot create the [files] directory of agent '{}' under {}: {e}; the node's data dir must be writable", identity.name, self.config.node.data_dir.display()),
                )?,
            ),
        };
        Ok(AgentCaps {
            messaging: MessagingCtx {
                identity: identity.clone(),
                grants: manifest.messaging.clone(),
                bus: self.bus.clone(),
                directory: self.directory.clone(),
                unified_subjects: self.config.node.unified_subjects,
                max_message_bytes: usize::try_from(max_message).unwrap_or(usize::MAX),
                max_timeout: Duration::from_millis(d.host_call_timeout_ms),
                metrics: metrics.clone(),
                publish_rate: PublishRate::new(
                    manifest
                        .limits
                        .publish_per_second
                        .unwrap_or(d.publish_per_second),
                    &identity.name,
                    metrics.clone(),
                ),
            },
            kv: KvCtx {
                namespace: identity.id.clone(),
                quota: Quota {
                    max_bytes: manifest.kv.max_bytes,
                    max_keys: manifest.kv.max_keys,
                },
                backend: self.store.clone(),
                timeout: Duration::from_millis(d.host_call_timeout_ms),
                agent: Arc::from(identity.name.as_str()),
            },
            llm: LlmCtx::new(
                identity.clone(),
                manifest.llm.clone(),
                metrics.clone(),
                self.llm.clone(),
            ),
            runtime: RuntimeCtx {
                identity: identity.clone(),
                config: manifest.config.clone(),
                log_rate: Arc::new(LogRate::new(
                    manifest
                        .limits
                        .log_lines_per_second
                        .unwrap_or(d.log_lines_per_second),
                    &identity.name,
                    metrics.clone(),
                )),
            },
            files: files_dir,
        })
    }
}
