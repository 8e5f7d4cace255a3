//! `[limits] max_snapshot_bytes`: the largest snapshot of an agent's state the host takes.
//!
//! A snapshot is kept in memory for restarts, persisted in the node's KV store (outside
//! the agent's `[kv]` quota) and handed to another version on upgrades. Without a bound an
//! agent could grow its state and have the host store it for it: a 48 MiB snapshot of an
//! agent allowed 64 KiB of KV grew `kv.redb` from 1 to 129 MiB. So every snapshot is checked
//! where it is taken, and one over the limit (by default the agent's `[kv] max_bytes`) is
//! refused: a periodic one is not kept or persisted (the previous one stays), an upgrade or
//! hand-off that needs it is refused (the serving version keeps serving), and on stop the
//! state since the last good snapshot is lost, which is logged as an error.

use std::time::Duration;

use super::runner::Runner;
use crate::units::format_bytes;

/// How often a refusal that repeats (a periodic snapshot every `snapshot_every` messages,
/// a hand-off per switching message) is logged once it has been logged the first time.
pub(super) const LOG_EVERY: Duration = Duration::from_secs(60);

/// What to do about a refused snapshot.
pub const FIX: &str =
    "raise [limits] max_snapshot_bytes in its manifest (default: its [kv] max_bytes), or have the agent keep less state";

/// A snapshot over the agent's `[limits] max_snapshot_bytes`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("v{version}'s snapshot of {} is over its limit of {} ([limits] max_snapshot_bytes)", size(*.bytes), size(*.limit))]
pub struct SnapshotTooLarge {
    pub version: String,
    pub bytes: u64,
    pub limit: u64,
}

/// Why [`Runner::take_snapshot`] returned no snapshot.
#[derive(Debug)]
pub(super) enum NotTaken {
    /// The agent has no live instance (it is restarting or failed).
    NoInstance,
    /// The instance trapped in `snapshot` (it was restarted from the last snapshot).
    Trapped,
    /// The snapshot was over the limit; it was counted and is the agent's last error.
    TooLarge(SnapshotTooLarge),
}

/// `48MiB (50331648 bytes)`, or `70001 bytes` when there is no shorter unit.
fn size(bytes: u64) -> String {
    let short = format_bytes(bytes);
    if short == format!("{bytes}B") {
        format!("{bytes} bytes")
    } else {
        format!("{short} ({bytes} bytes)")
    }
}

impl Runner {
    /// Checks a snapshot that `version` produced against the agent's limit. A refusal is
    /// counted (`agent_host_limit_hits_total{limit="snapshot"}`) and becomes the agent's
    /// last error; the caller decides what else it means.
    pub(super) fn admit_snapshot(
        &self,
        version: &str,
        state: &[u8],
    ) -> Result<(), SnapshotTooLarge> {
        let limit = self.parts.limits.max_snapshot_bytes;
        let bytes = state.len() as u64;
        if bytes <= limit {
            return Ok(());
        }
        let refused = SnapshotTooLarge {
            version: version.to_string(),
            bytes,
            limit,
        };
        self.parts.metrics.limits.snapshot.inc();
        self.parts
            .status
            .set_error(format!("snapshot refused: {refused}; {FIX}"));
        Err(refused)
    }

    /// Takes a periodic snapshot and queues it for the store; a refused one leaves the
    /// previous snapshot in place and is logged (sampled: the first, then once a minute).
    pub(super) async fn snapshot_to_store(&mut self) {
        match self.take_snapshot().await {
            Ok(encoded) => {
                if let Some(writer) = &self.writer {
                    writer.submit(encoded);
                }
            }
            Err(NotTaken::TooLarge(refused)) => {
                if let Some(held_back) = self.snapshot_refusals.sample() {
                    tracing::warn!(
                        agent = %self.parts.identity.name,
                        "snapshot refused: {refused}; it is not kept or persisted, a restart resumes from the previous snapshot{}; {FIX}",
                        held_back_text(held_back)
                    );
                }
            }
            Err(NotTaken::NoInstance | NotTaken::Trapped) => {}
        }
    }

    /// On stop with a snapshot over the limit: nothing is persisted, so what the agent did
    /// since its last good snapshot is lost. An error, since it is data lost.
    pub(super) fn report_state_lost_on_stop(&self, refused: &SnapshotTooLarge) {
        let last = match &self.last_snapshot {
            Some((version, state)) => format!(
                "the next start resumes from its last good snapshot (v{version}, {})",
                size(state.len() as u64)
            ),
            None => "it has no good snapshot, so the next start begins from a fresh state".into(),
        };
        tracing::error!(
            agent = %self.parts.identity.name,
            "stopped without saving its state: {refused}. The state since its last good snapshot is lost: {last}. To keep it next time, {FIX}"
        );
    }

    /// A canary hand-off refused for the snapshot's size: the serving version keeps the
    /// conversation, nothing is lost; an event says so (sampled like the periodic refusals).
    pub(super) fn report_refused_handoff(&mut self, refused: &SnapshotTooLarge, to_version: &str) {
        if let Some(held_back) = self.snapshot_refusals.sample() {
            let name = self.parts.identity.name.clone();
            self.parts.status.record(
                &name,
                format!(
                    "state hand-off to v{to_version} refused: {refused}; v{} serves the message instead, nothing lost, and the canary goes on{}; {FIX}",
                    self.version,
                    held_back_text(held_back)
                ),
            );
        }
    }
}

fn held_back_text(held_back: u64) -> String {
    match held_back {
        0 => String::new(),
        n => format!(" ({n} more refusal(s) since the last one logged)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_both_sizes_and_the_field() {
        let e = SnapshotTooLarge {
            version: "0.1.0".into(),
            bytes: 48 << 20,
            limit: 64 << 10,
        };
        assert_eq!(
            e.to_string(),
            "v0.1.0's snapshot of 48MiB (50331648 bytes) is over its limit of 64KiB (65536 bytes) ([limits] max_snapshot_bytes)"
        );
        assert_eq!(size(70_001), "70001 bytes");
    }
}
