//! Key-value storage on a NATS JetStream KV bucket, shared by every node on the cluster, so
//! an agent's storage (and its last snapshot) survives moving it to another node.
//!
//! Layout in the one bucket (default `AGENT_KV`, `[nats] kv_bucket`):
//! - `{namespace}.{key}`: the values. A namespace is an agent id (a UUID: one token, dashes
//!   allowed) or a host-owned dotted name such as `sys.snapshots`; keys already follow the
//!   JetStream key rules ([`validate_key`]), so `{namespace}.{key}` is a valid KV key.
//! - `sys.usage.{namespace}`: the namespace's quota usage record, JSON `{"bytes":…,"keys":…}`.
//!
//! Revisions are the bucket stream's sequence numbers: they grow across the whole bucket
//! and are never reused, exactly like the embedded store's, so a compare-and-swap holding a
//! revision from before a delete and re-create still conflicts.
//!
//! Quota: a usage record per namespace, kept in the bucket (not computed by scanning the
//! namespace on every write, which costs a consumer and a pass over every key). JetStream
//! has no multi-key transaction on servers before 2.12, so the record and the value are two
//! writes, each guarded by its revision, ordered so usage is never under-counted: growth is
//! reserved in the record (compare-and-swap) before the value is written, a shrink is
//! released only after. A writer that dies between the two leaves the record too high by
//! that one write (the namespace may refuse writes a little early), never too low (it can
//! never exceed its quota). Every value write is itself conditional on the revision it was
//! sized against, so concurrent writers on several nodes cannot slip past the accounting.
//! One visible difference from the embedded store, under contention only: writers racing
//! on one namespace each hold their reservation until they land or lose, so in a nearly
//! full namespace a racing write may be refused for quota where, a moment later, it would
//! have fitted (a loser whose key moved meanwhile still gets its conflict). An agent's
//! namespace has one writer (the agent handles one message at a time), so this only
//! shows when the same agent id runs on two nodes at once.

use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation, Store, UpdateErrorKind};
use async_nats::jetstream::{self, stream::StorageType};
use bytes::Bytes;
use futures::StreamExt;

use super::keys::{validate_key, validate_namespace, validate_prefix};
use super::quota::{admit, check_value_size};
use super::{CasOutcome, KvBackend, KvEntry, KvError, Quota, Usage};

/// Namespace of the usage records.
const USAGE_NAMESPACE: &str = "sys.usage";

/// Attempts of a read-check-write cycle that lost a race before giving up; each loss means
/// another writer made progress, so this is only reached under a pathological storm.
const MAX_ATTEMPTS: usize = 64;

/// How to open the bucket.
#[derive(Debug, Clone)]
pub struct NatsKvOptions {
    /// Bucket name (`A-Z a-z 0-9 _ -`).
    pub bucket: String,
    /// Copies kept by the cluster when this node creates the bucket.
    pub replicas: usize,
    /// Bound on every JetStream call, so an unreachable server is `unavailable`, not a hang.
    pub timeout: Duration,
}

/// [`KvBackend`] on a JetStream KV bucket.
pub struct NatsKv {
    client: async_nats::Client,
    store: Store,
    bucket: String,
    timeout: Duration,
}

impl NatsKv {
    /// Opens the bucket, creating it (history 1, file storage) if no node has yet. An
    /// existing bucket is used as it is, so an operator's settings (replicas, limits) stay.
    pub async fn open(
        client: async_nats::Client,
        options: &NatsKvOptions,
    ) -> Result<NatsKv, KvError> {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(options.timeout);
        let bucket = &options.bucket;
        let store = match js.get_key_value(bucket.as_str()).await {
            Ok(store) => store,
            Err(_) => {
                let config = kv::Config {
                    bucket: bucket.clone(),
                    description: "agent-host: agents' key-value storage and snapshots".into(),
                    history: 1,
                    storage: StorageType::File,
                    num_replicas: options.replicas.max(1),
                    ..Default::default()
                };
                match js.create_key_value(config).await {
                    Ok(store) => {
                        tracing::info!(%bucket, replicas = options.replicas, "created the JetStream KV bucket");
                        store
                    }
                    // Another node may have created it in the meantime.
                    Err(create) => js.get_key_value(bucket.as_str()).await.map_err(|_| {
                        KvError::Unavailable(format!(
                            "cannot open or create the JetStream KV bucket '{bucket}': {create}; \
                             check that the NATS server runs with JetStream enabled (nats-server -js) \
                             and that this account may create streams"
                        ))
                    })?,
                }
            }
        };
        Ok(NatsKv {
            client,
            store,
            bucket: bucket.clone(),
            timeout: options.timeout,
        })
    }

    /// The bucket's name, for logs and status output.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The live (not deleted) entry under a full bucket key, and the revision to expect when
    /// writing it next (the delete marker's for a deleted key, 0 for one never written).
    async fn read(&self, full: &str) -> Result<(Option<kv::Entry>, u64), KvError> {
        let entry = self
            .bounded("read", self.store.entry(full.to_string()))
            .await?
            .map_err(|e| self.failed("read", full, e))?;
        Ok(match entry {
            Some(e) if e.operation == Operation::Put => {
                let revision = e.revision;
                (Some(e), revision)
            }
            Some(marker) => (None, marker.revision),
            None => (None, 0),
        })
    }

    /// Writes `value` under `full` only if the key is still at `last` (0: never written).
    /// `Ok(None)` when another writer got there first.
    async fn write_if(&self, full: &str, value: Bytes, last: u64) -> Result<Option<u64>, KvError> {
        let result = self
            .bounded("write", self.store.update(full, value, last))
            .await?;
        match result {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(self.failed("write", full, e)),
        }
    }

    /// Applies `change` to a namespace's usage record atomically (re-reading on a race).
    async fn adjust_usage(
        &self,
        ns: &str,
        change: impl Fn(Usage) -> Result<Usage, KvError>,
    ) -> Result<(), KvError> {
        let full = usage_key(ns);
        for _ in 0..MAX_ATTEMPTS {
            let (entry, last) = self.read(&full).await?;
            let used = entry
                .map(|e| decode_usage(&e.value))
                .transpose()?
                .unwrap_or_default();
            let next = change(used)?;
            if next == used {
                return Ok(());
            }
            if self
                .write_if(&full, encode_usage(next), last)
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
        Err(self.contended(&full))
    }

    /// The one write path of `set` and `compare_and_swap` (see the module docs for the order).
    async fn put(
        &self,
        ns: &str,
        key: &str,
        condition: Option<Option<u64>>,
        value: &[u8],
        quota: &Quota,
    ) -> Result<CasOutcome, KvError> {
        validate_namespace(ns)?;
        validate_key(key)?;
        check_value_size(key, value.len(), quota)?;
        let full = entry_key(ns, key);
        let value = Bytes::copy_from_slice(value);
        let new_size = (key.len() + value.len()) as u64;
        for _ in 0..MAX_ATTEMPTS {
            let (current, last) = self.read(&full).await?;
            let current_revision = current.as_ref().map(|e| e.revision);
            if let Some(expected) = condition {
                if expected != current_revision {
                    return Ok(CasOutcome::Conflict(current_revision));
                }
            }
            let old_size = current.as_ref().map(|e| (key.len() + e.value.len()) as u64);
            let grows = old_size.is_none_or(|old| new_size > old);
            if grows {
                let reserved = self
                    .adjust_usage(ns, |used| admit(used, key, old_size, value.len(), quota))
                    .await;
                if let Err(refused @ KvError::QuotaExceeded(_)) = reserved {
                    // Racing writers' reservations count until they land or are given back;
                    // if the key moved meanwhile, this write lost a race rather than the quota.
                    let (now, now_last) = self.read(&full).await?;
                    if now_last == last {
                        return Err(refused);
                    }
                    if condition.is_some() {
                        return Ok(CasOutcome::Conflict(now.map(|e| e.revision)));
                    }
                    continue;
                }
                reserved?;
            }
            match self.write_if(&full, value.clone(), last).await? {
                Some(revision) => {
                    if let Some(old) = old_size.filter(|old| *old > new_size) {
                        self.adjust_usage(ns, |used| Ok(shrink(used, old - new_size, 0)))
                            .await?;
                    }
                    return Ok(CasOutcome::Swapped(revision));
                }
                None => {
                    // Lost a race: give back what was reserved, then re-read.
                    if grows {
                        let (bytes, keys) = match old_size {
                            Some(old) => (new_size - old, 0),
                            None => (new_size, 1),
                        };
                        self.adjust_usage(ns, |used| Ok(shrink(used, bytes, keys)))
                            .await?;
                    }
                    if condition.is_some() {
                        let (now, _) = self.read(&full).await?;
                        return Ok(CasOutcome::Conflict(now.map(|e| e.revision)));
                    }
                }
            }
        }
        Err(self.contended(&full))
    }

    /// Runs one JetStream call with the store's timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = T>,
    ) -> Result<T, KvError> {
        tokio::time::timeout(self.timeout, call).await.map_err(|_| {
            KvError::Unavailable(format!(
                "JetStream KV bucket '{}': {what} got no answer within {:?}; is the NATS server reachable?",
                self.bucket, self.timeout
            ))
        })
    }

    fn failed(&self, what: &str, key: &str, e: impl std::fmt::Display) -> KvError {
        KvError::Unavailable(format!(
            "JetStream KV bucket '{}': {what} of '{key}' failed: {e}",
            self.bucket
        ))
    }

    fn contended(&self, key: &str) -> KvError {
        KvError::Unavailable(format!(
            "JetStream KV bucket '{}': '{key}' changed under {MAX_ATTEMPTS} attempts in a row; retry later",
            self.bucket
        ))
    }
}

#[async_trait::async_trait]
impl KvBackend for NatsKv {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<KvEntry>, KvError> {
        validate_namespace(ns)?;
        validate_key(key)?;
        let (entry, _) = self.read(&entry_key(ns, key)).await?;
        Ok(entry.map(|e| KvEntry {
            value: e.value.to_vec(),
            revision: e.revision,
        }))
    }

    async fn set(&self, ns: &str, key: &str, value: &[u8], quota: &Quota) -> Result<u64, KvError> {
        match self.put(ns, key, None, value, quota).await? {
            CasOutcome::Swapped(revision) => Ok(revision),
            CasOutcome::Conflict(_) => Err(KvError::Internal(
                "JetStream KV: an unconditional set reported a conflict".into(),
            )),
        }
    }

    async fn delete(&self, ns: &str, key: &str) -> Result<(), KvError> {
        validate_namespace(ns)?;
        validate_key(key)?;
        let full = entry_key(ns, key);
        for _ in 0..MAX_ATTEMPTS {
            let (current, _) = self.read(&full).await?;
            let Some(current) = current else {
                return Ok(());
            };
            let deleted = self
                .bounded(
                    "delete",
                    self.store
                        .delete_expect_revision(&full, Some(current.revision)),
                )
                .await?;
            match deleted {
                Ok(()) => {
                    let freed = (key.len() + current.value.len()) as u64;
                    return self
                        .adjust_usage(ns, |used| Ok(shrink(used, freed, 1)))
                        .await;
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(self.failed("delete", &full, e)),
            }
        }
        Err(self.contended(&full))
    }

    async fn list_keys(
        &self,
        ns: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, KvError> {
        validate_namespace(ns)?;
        validate_prefix(prefix)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut keys = self.bounded("list keys", self.namespace_keys(ns)).await??;
        keys.retain(|k| k.starts_with(prefix));
        keys.sort();
        keys.truncate(limit);
        Ok(keys)
    }

    async fn compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
        quota: &Quota,
    ) -> Result<CasOutcome, KvError> {
        self.put(ns, key, Some(expected), value, quota).await
    }

    async fn usage(&self, ns: &str) -> Result<Usage, KvError> {
        validate_namespace(ns)?;
        let (entry, _) = self.read(&usage_key(ns)).await?;
        Ok(entry
            .map(|e| decode_usage(&e.value))
            .transpose()?
            .unwrap_or_default())
    }
}

impl NatsKv {
    /// Every live key of a namespace, read with an ordered consumer over the namespace's
    /// subjects only (last value per key, headers only), so listing one agent's keys never
    /// walks the rest of the bucket.
    async fn namespace_keys(&self, ns: &str) -> Result<Vec<String>, KvError> {
        let subject_prefix = format!("{}{ns}.", self.store.prefix);
        let consumer = self
            .store
            .stream
            .create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: format!("{subject_prefix}>"),
                headers_only: true,
                replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| self.failed("list keys", ns, e))?;
        let mut keys = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(keys);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| self.failed("list keys", ns, e))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| self.failed("list keys", ns, e))?;
            let info = message
                .info()
                .map_err(|e| self.failed("list keys", ns, e))?;
            let pending = info.pending;
            let deleted = message
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
            if !deleted {
                if let Some(key) = message.subject.as_str().strip_prefix(&subject_prefix) {
                    keys.push(key.to_string());
                }
            }
            if pending == 0 {
                break;
            }
        }
        Ok(keys)
    }
}

/// `{namespace}.{key}`: see the module docs.
fn entry_key(ns: &str, key: &str) -> String {
    format!("{ns}.{key}")
}

fn usage_key(ns: &str) -> String {
    entry_key(USAGE_NAMESPACE, ns)
}

fn shrink(used: Usage, bytes: u64, keys: u64) -> Usage {
    Usage {
        bytes: used.bytes.saturating_sub(bytes),
        keys: used.keys.saturating_sub(keys),
    }
}

fn encode_usage(u: Usage) -> Bytes {
    Bytes::from(format!("{{\"bytes\":{},\"keys\":{}}}", u.bytes, u.keys))
}

fn decode_usage(bytes: &[u8]) -> Result<Usage, KvError> {
    #[derive(serde::Deserialize)]
    struct Record {
        bytes: u64,
        keys: u64,
    }
    let r: Record = serde_json::from_slice(bytes).map_err(|e| {
        KvError::Internal(format!(
            "JetStream KV: a usage record is not {{\"bytes\":N,\"keys\":N}}: {e}"
        ))
    })?;
    Ok(Usage {
        bytes: r.bytes,
        keys: r.keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_namespace_then_the_key_and_usage_sits_apart() {
        let id = "01936f11-4ea2-7000-8000-000000000001";
        assert_eq!(entry_key(id, "user.42"), format!("{id}.user.42"));
        validate_key(&entry_key(id, "user.42")).unwrap();
        assert_eq!(usage_key(id), format!("sys.usage.{id}"));
        validate_key(&usage_key("sys.snapshots")).unwrap();
    }

    #[test]
    fn usage_records_round_trip_and_a_damaged_one_is_internal() {
        let u = Usage { bytes: 12, keys: 3 };
        assert_eq!(decode_usage(&encode_usage(u)).unwrap(), u);
        assert!(matches!(decode_usage(b"nope"), Err(KvError::Internal(_))));
        assert_eq!(shrink(u, 20, 1), Usage { bytes: 0, keys: 2 });
    }
}
