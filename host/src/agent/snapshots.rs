//! Where an agent's snapshots go: kept in memory for restarts after a trap, and persisted
//! in the node's KV store (namespace `sys.snapshots`) by a background writer, so a node
//! restart resumes from them without the agent ever waiting on a disk flush. Only
//! snapshots within the agent's `[limits] max_snapshot_bytes` get here (checked where they
//! are taken: `snapshot_limit.rs`), since the namespace is written without a quota.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::storage::{KvBackend, Quota};

/// Namespace in the KV store where agents' last snapshots are kept across node restarts.
pub const SNAPSHOT_NAMESPACE: &str = "sys.snapshots";

/// A persisted snapshot: the version that wrote it, a newline, the state bytes.
pub fn encode(version: &str, state: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(version.len() + 1 + state.len());
    out.extend_from_slice(version.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(state);
    out
}

/// `(version, state)` of a persisted snapshot.
pub fn decode(bytes: &[u8]) -> Option<(String, Vec<u8>)> {
    let pos = bytes.iter().position(|b| *b == b'\n')?;
    let version = std::str::from_utf8(&bytes[..pos]).ok()?.to_string();
    Some((version, bytes[pos + 1..].to_vec()))
}

/// The last persisted snapshot of agent `id`, if any.
pub async fn load(store: &dyn KvBackend, id: &str) -> Option<(String, Vec<u8>)> {
    let entry = store.get(SNAPSHOT_NAMESPACE, id).await.ok().flatten()?;
    decode(&entry.value)
}

/// Writes the newest submitted snapshot in the background; older unwritten ones are
/// skipped (only the latest matters).
pub struct SnapshotWriter {
    pending: Arc<Mutex<Option<Vec<u8>>>>,
    wake: Arc<Notify>,
    closed: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl SnapshotWriter {
    pub fn spawn(
        store: Arc<dyn KvBackend>,
        agent_id: String,
        agent_name: String,
    ) -> SnapshotWriter {
        let pending: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let wake = Arc::new(Notify::new());
        let closed = Arc::new(AtomicBool::new(false));
        let task = {
            let (pending, wake, closed) = (pending.clone(), wake.clone(), closed.clone());
            tokio::spawn(async move {
                // A state that did not change since the last write is not written again: a
                // stateless agent would otherwise cost a KV write (a JetStream round trip on
                // NATS) every SNAPSHOT_FREQUENCY messages for nothing.
                let mut written: Option<Vec<u8>> = None;
                loop {
                    wake.notified().await;
                    let next = pending.lock().expect("snapshot lock").take();
                    if let Some(bytes) = next {
                        if written.as_deref() != Some(bytes.as_slice()) {
                            let ok = write(store.as_ref(), &agent_id, &agent_name, &bytes).await;
                            written = ok.then_some(bytes);
                        }
                    }
                    if closed.load(Ordering::Acquire) {
                        return;
                    }
                }
            })
        };
        SnapshotWriter {
            pending,
            wake,
            closed,
            task: Some(task),
        }
    }

    /// Queues `encoded` (see [`encode`]) to be written; returns at once.
    pub fn submit(&self, encoded: Vec<u8>) {
        *self.pending.lock().expect("snapshot lock") = Some(encoded);
        self.wake.notify_one();
    }

    /// Writes what is pending and stops; after this no older snapshot can land.
    pub async fn close(mut self) {
        self.stop_writer();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn stop_writer(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

impl Drop for SnapshotWriter {
    /// An agent that ends without `close` (it failed) still gets its pending snapshot
    /// written, and the writer task ends.
    fn drop(&mut self) {
        self.stop_writer();
    }
}

/// Writes one snapshot now; false (and logged) when the store refused it.
pub async fn write(
    store: &dyn KvBackend,
    agent_id: &str,
    agent_name: &str,
    encoded: &[u8],
) -> bool {
    match store
        .set(SNAPSHOT_NAMESPACE, agent_id, encoded, &Quota::UNLIMITED)
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(agent = %agent_name, "cannot persist snapshot: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_keeps_the_version_that_wrote_it() {
        let bytes = encode("1.2.0", b"{\"count\":3}\n");
        assert_eq!(
            decode(&bytes),
            Some(("1.2.0".to_string(), b"{\"count\":3}\n".to_vec()))
        );
    }

    #[tokio::test]
    async fn an_unchanged_snapshot_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn KvBackend> =
            Arc::new(crate::storage::EmbeddedKv::open(&dir.path().join("kv.redb")).unwrap());
        let writer = SnapshotWriter::spawn(store.clone(), "id-1".into(), "a".into());
        let revision = || async {
            let entry = store.get(SNAPSHOT_NAMESPACE, "id-1").await.unwrap();
            entry.map(|e| e.revision)
        };
        writer.submit(encode("1.0.0", b"same"));
        // The write is an fsync on a shared disk: wait for it rather than a fixed time.
        let written = async {
            loop {
                if let Some(revision) = revision().await {
                    break revision;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), written)
            .await
            .expect("written once within 10 s");
        writer.submit(encode("1.0.0", b"same"));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(revision().await, Some(first), "not rewritten");
        writer.submit(encode("1.0.0", b"changed"));
        writer.close().await;
        assert!(revision().await.unwrap() > first, "a change is written");
    }

    #[tokio::test]
    async fn the_writer_persists_the_latest_snapshot_before_it_closes() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn KvBackend> =
            Arc::new(crate::storage::EmbeddedKv::open(&dir.path().join("kv.redb")).unwrap());
        let writer = SnapshotWriter::spawn(store.clone(), "id-1".into(), "a".into());
        for n in 0..50 {
            writer.submit(encode("1.0.0", format!("{n}").as_bytes()));
        }
        writer.close().await;
        assert_eq!(
            load(store.as_ref(), "id-1").await,
            Some(("1.0.0".to_string(), b"49".to_vec()))
        );
    }
}
