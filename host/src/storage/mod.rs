//! Key-value storage behind the WIT `kv` interface.
//!
//! An agent only ever passes a key; the host supplies the namespace (the agent's id, or a
//! host-owned one such as `sys.snapshots`), so no agent can name another agent's keys.
//! Storage sits behind [`KvBackend`] so the embedded file store ([`EmbeddedKv`]) used on a
//! single machine can be swapped for NATS JetStream KV buckets on a cluster without agents
//! noticing: keys already follow JetStream's key rules ([`validate_key`]), and revisions and
//! compare-and-swap mean the same on both.

mod embedded;
mod keys;
mod nats_kv;
mod quota;

#[cfg(test)]
mod embedded_tests;

pub use embedded::{EmbeddedKv, SyncPolicy};
pub use keys::{validate_key, MAX_KEY_BYTES};
pub use nats_kv::{NatsKv, NatsKvOptions};

/// A stored value together with the revision it was written at.
///
/// The revision is what an agent hands back to [`KvBackend::compare_and_swap`] to say
/// "only if nobody wrote since I read".
#[derive(Debug, Clone, PartialEq)]
pub struct KvEntry {
    pub value: Vec<u8>,
    pub revision: u64,
}

/// What a compare-and-swap did, mirroring the WIT `cas-outcome`.
#[derive(Debug, Clone, PartialEq)]
pub enum CasOutcome {
    /// Written; the new revision.
    Swapped(u64),
    /// Not written, because the key was not at the expected revision; carries the key's
    /// current revision (`None` when absent) so the agent can re-read and retry.
    Conflict(Option<u64>),
}

/// Storage limits of one namespace, taken from the agent's manifest (`[kv]`).
///
/// Bytes count the key and the value of every key, so an agent cannot dodge the limit
/// with many empty values under long keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Sum of key + value bytes over all keys of the namespace.
    pub max_bytes: u64,
    /// Number of keys in the namespace.
    pub max_keys: u64,
}

impl Quota {
    /// No limit, for host-owned namespaces (e.g. snapshots) that the host itself bounds.
    pub const UNLIMITED: Quota = Quota {
        max_bytes: u64::MAX,
        max_keys: u64::MAX,
    };
}

/// What a namespace currently uses, in the units [`Quota`] limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Sum of key + value bytes over all keys.
    pub bytes: u64,
    /// Number of keys.
    pub keys: u64,
}

/// Why a storage call failed; each variant maps onto the WIT `error` variant of the same name,
/// and the text is shown to the agent author, so it says what to change.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The caller passed something no backend accepts (bad key or prefix).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The write would take the namespace over its manifest quota.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The store cannot be reached right now (file locked, server down); retrying may help.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or a damaged store; retrying will not help.
    #[error("internal: {0}")]
    Internal(String),
}

/// A place to keep every agent's key-value data, one namespace per agent.
///
/// Implementations must make each method atomic on its own; callers never need locks.
#[async_trait::async_trait]
pub trait KvBackend: Send + Sync + 'static {
    /// The key's value and revision, or `None` when absent.
    async fn get(&self, ns: &str, key: &str) -> Result<Option<KvEntry>, KvError>;

    /// Stores value; returns the new revision. Fails with QuotaExceeded if the namespace would
    /// exceed `quota.max_bytes` (sum of key+value bytes of all its keys) or `quota.max_keys`.
    /// Returns only once the write is durable.
    async fn set(&self, ns: &str, key: &str, value: &[u8], quota: &Quota) -> Result<u64, KvError>;

    /// Removes the key and frees its quota; deleting an absent key is Ok, so a retried
    /// delete never fails.
    async fn delete(&self, ns: &str, key: &str) -> Result<(), KvError>;

    /// Keys of the namespace starting with prefix, sorted, at most `limit`.
    async fn list_keys(&self, ns: &str, prefix: &str, limit: usize)
        -> Result<Vec<String>, KvError>;

    /// Writes only if the key's current revision equals `expected` (None: only if absent).
    /// Atomic: of many concurrent swaps from the same revision exactly one succeeds.
    async fn compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
        quota: &Quota,
    ) -> Result<CasOutcome, KvError>;

    /// Bytes and keys used by a namespace.
    async fn usage(&self, ns: &str) -> Result<Usage, KvError>;

    /// Makes every write so far durable (a node calls it when it stops).
    async fn sync(&self) -> Result<(), KvError> {
        Ok(())
    }
}
