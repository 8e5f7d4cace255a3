//! The embedded key-value store: one redb file under the node's data dir.
//!
//! Layout, all in one database so a single write transaction keeps them consistent:
//! - `kv_entries`: `ns NUL key` -> `(revision, value)`. Keys cannot contain NUL and
//!   namespaces may not, so key `a` of namespace `xa` and key `xa`... of namespace `x`
//!   never meet, and one namespace's keys are one contiguous, sorted range.
//! - `kv_usage`: `ns` -> `(bytes, keys)`, updated with every write so quota checks never
//!   rescan the namespace.
//! - `kv_meta`: `last_revision` -> the highest revision ever handed out. Revisions are
//!   per database and never reused, so a compare-and-swap holding a revision from before a
//!   delete and re-create still conflicts.
//!
//! redb commits with fsync, so writes run on tokio's blocking pool; reads are short and
//! never wait for writers (MVCC), so they run inline.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

use super::keys::{validate_key, validate_namespace, validate_prefix};
use super::quota::{admit, check_value_size};
use super::{CasOutcome, KvBackend, KvEntry, KvError, Quota, Usage};

const ENTRIES: TableDefinition<&[u8], (u64, &[u8])> = TableDefinition::new("kv_entries");
const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("kv_usage");
const META: TableDefinition<&str, u64> = TableDefinition::new("kv_meta");
const LAST_REVISION: &str = "last_revision";

/// Key-value storage in a local redb file: the default backend, needing no server.
///
/// Cheap to share: wrap it in an `Arc` and hand it to every agent.
pub struct EmbeddedKv {
    db: Arc<Database>,
    path: PathBuf,
    sync: SyncPolicy,
    flusher: Option<Flusher>,
}

/// When writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every write is flushed to disk (fsync) before it returns.
    EveryWrite,
    /// Writes return once committed; a background flush makes them durable at most this
    /// long after (as JetStream's file store does with its sync interval). A crash loses at
    /// most the writes of this window; closing the store flushes everything.
    Interval(std::time::Duration),
}

/// The background thread that makes `Interval` writes durable.
struct Flusher {
    dirty: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    fn start(db: Arc<Database>, every: std::time::Duration) -> Flusher {
        use std::sync::atomic::Ordering;
        let dirty = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let thread = {
            let (dirty, stop) = (dirty.clone(), stop.clone());
            std::thread::Builder::new()
                .name("kv-flush".into())
                .spawn(move || loop {
                    let stopping = {
                        let (lock, wake) = &*stop;
                        let guard = lock.lock().expect("flusher lock");
                        let (guard, _) = wake.wait_timeout(guard, every).expect("flusher lock");
                        *guard
                    };
                    if dirty.swap(false, Ordering::AcqRel) {
                        if let Err(e) = flush(&db) {
                            tracing::error!("kv store: flushing to disk failed: {e}");
                            dirty.store(true, Ordering::Release);
                        }
                    }
                    if stopping {
                        return;
                    }
                })
                .expect("spawn kv flush thread")
        };
        Flusher {
            dirty,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Flusher {
    /// Makes every write durable before the store closes.
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().expect("flusher lock") = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Mode of the store file: it holds every agent's data and snapshots, for the node's user
/// only.
pub const STORE_FILE_MODE: u32 = 0o600;

/// Opens (or creates) the store file owner-only: a new file gets the mode at creation, not
/// by a chmod after, and an existing one that others could read (made before the host
/// created it owner-only) is tightened, since it is the node's own.
fn open_private(path: &Path) -> Result<std::fs::File, KvError> {
    let unavailable = |e: std::io::Error| {
        KvError::Unavailable(format!("cannot open kv store {}: {e}", path.display()))
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(STORE_FILE_MODE)
        .open(path)
        .map_err(unavailable)?;
    let mode = file.metadata().map_err(unavailable)?.permissions().mode() & 0o7777;
    if mode != STORE_FILE_MODE {
        file.set_permissions(std::fs::Permissions::from_mode(STORE_FILE_MODE))
            .map_err(unavailable)?;
        tracing::warn!(
            "kv store {} had mode {mode:04o}; it is now {STORE_FILE_MODE:04o} (owner only): it holds every agent's data",
            path.display()
        );
    }
    Ok(file)
}

/// An empty durable commit: makes all earlier non-durable commits durable.
fn flush(db: &Database) -> Result<(), KvError> {
    let mut txn = db.begin_write().or_kv("flush")?;
    txn.set_durability(Durability::Immediate).or_kv("flush")?;
    txn.commit().or_kv("flush")
}

impl EmbeddedKv {
    /// Opens the store at `path`, creating the file and its parent directories if missing.
    ///
    /// Blocking (file I/O); call it at startup. Fails with a message naming the path, since
    /// the usual causes (unwritable data dir, a second host on the same dir) are fixed there.
    pub fn open(path: &Path) -> Result<EmbeddedKv, KvError> {
        Self::open_with(path, SyncPolicy::EveryWrite)
    }

    /// Opens the store with the given [`SyncPolicy`].
    pub fn open_with(path: &Path, sync: SyncPolicy) -> Result<EmbeddedKv, KvError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::private_dir::create_missing(parent).map_err(|e| {
                KvError::Unavailable(format!(
                    "cannot create directory {} for the kv store {}: {e}",
                    parent.display(),
                    path.display()
                ))
            })?;
        }
        let file = open_private(path)?;
        let backend = redb::backends::FileBackend::new(file)
            .map_err(|e| classify(&format!("cannot open kv store {}", path.display()), e))?;
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|e| match e {
                DatabaseError::DatabaseAlreadyOpen => KvError::Unavailable(format!(
                    "kv store {} is already open (is another host using this data dir?)",
                    path.display()
                )),
                other => classify(&format!("cannot open kv store {}", path.display()), other),
            })?;
        // Create the tables up front so reads never meet a missing table.
        let txn = db.begin_write().or_kv("creating tables")?;
        txn.open_table(ENTRIES).or_kv("creating tables")?;
        txn.open_table(USAGE).or_kv("creating tables")?;
        txn.open_table(META).or_kv("creating tables")?;
        txn.commit().or_kv("creating tables")?;
        let db = Arc::new(db);
        let flusher = match sync {
            SyncPolicy::EveryWrite => None,
            SyncPolicy::Interval(every) => Some(Flusher::start(db.clone(), every)),
        };
        Ok(EmbeddedKv {
            db,
            path: path.to_path_buf(),
            sync,
            flusher,
        })
    }

    /// The file this store lives in, for logs and status output.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `op` in one write transaction on the blocking pool (durable now or within the
    /// sync interval, per the [`SyncPolicy`]). `op` returns the
    /// result and whether to commit; nothing is written unless it says so.
    async fn write<T, F>(&self, what: &'static str, op: F) -> Result<T, KvError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<(T, bool), KvError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let (durability, dirty) = match (&self.sync, &self.flusher) {
            (SyncPolicy::Interval(_), Some(f)) => (Durability::None, Some(f.dirty.clone())),
            _ => (Durability::Immediate, None),
        };
        let in_memory = dirty.is_some();
        let run = move || {
            let mut txn = db.begin_write().or_kv(what)?;
            txn.set_durability(durability).or_kv(what)?;
            match op(&txn) {
                Ok((out, true)) => {
                    txn.commit().or_kv(what)?;
                    if let Some(dirty) = dirty {
                        dirty.store(true, std::sync::atomic::Ordering::Release);
                    }
                    Ok(out)
                }
                Ok((out, false)) => {
                    txn.abort().or_kv(what)?;
                    Ok(out)
                }
                Err(e) => {
                    // The caller's error matters more than a failed abort.
                    let _ = txn.abort();
                    Err(e)
                }
            }
        };
        if in_memory {
            // No fsync: a short in-memory commit. Running it here saves two thread hops
            // per write (to the blocking pool and back), which bound an agent that writes
            // on every message.
            return run();
        }
        tokio::task::spawn_blocking(run)
            .await
            .map_err(|e| KvError::Internal(format!("kv store: {what}: write task failed: {e}")))?
    }
}

#[async_trait::async_trait]
impl KvBackend for EmbeddedKv {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<KvEntry>, KvError> {
        validate_namespace(ns)?;
        validate_key(key)?;
        let txn = self.db.begin_read().or_kv("get")?;
        let table = txn.open_table(ENTRIES).or_kv("get")?;
        let found = table.get(entry_key(ns, key).as_slice()).or_kv("get")?;
        Ok(found.map(|guard| {
            let (revision, value) = guard.value();
            KvEntry {
                value: value.to_vec(),
                revision,
            }
        }))
    }

    async fn set(&self, ns: &str, key: &str, value: &[u8], quota: &Quota) -> Result<u64, KvError> {
        match self.put(ns, key, None, value, quota).await? {
            CasOutcome::Swapped(revision) => Ok(revision),
            CasOutcome::Conflict(_) => Err(KvError::Internal(
                "kv store: unconditional set reported a conflict".into(),
            )),
        }
    }

    async fn delete(&self, ns: &str, key: &str) -> Result<(), KvError> {
        validate_namespace(ns)?;
        validate_key(key)?;
        let (ns, key) = (ns.to_owned(), key.to_owned());
        self.write("delete", move |txn| {
            let mut entries = txn.open_table(ENTRIES).or_kv("delete")?;
            let removed = entries
                .remove(entry_key(&ns, &key).as_slice())
                .or_kv("delete")?
                .map(|guard| (key.len() + guard.value().1.len()) as u64);
            let Some(freed) = removed else {
                return Ok(((), false));
            };
            let mut usage = txn.open_table(USAGE).or_kv("delete")?;
            let used = read_usage(&usage, &ns)?;
            let left = Usage {
                bytes: used.bytes.saturating_sub(freed),
                keys: used.keys.saturating_sub(1),
            };
            if left.keys == 0 {
                usage.remove(ns.as_str()).or_kv("delete")?;
            } else {
                usage
                    .insert(ns.as_str(), (left.bytes, left.keys))
                    .or_kv("delete")?;
            }
            Ok(((), true))
        })
        .await
    }

    async fn list_keys(
        &self,
        ns: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, KvError> {
        validate_namespace(ns)?;
        validate_prefix(prefix)?;
        let mut keys = Vec::new();
        if limit == 0 {
            return Ok(keys);
        }
        let start = entry_key(ns, prefix);
        let txn = self.db.begin_read().or_kv("list keys")?;
        let table = txn.open_table(ENTRIES).or_kv("list keys")?;
        for item in table.range(start.as_slice()..).or_kv("list keys")? {
            let (stored, _) = item.or_kv("list keys")?;
            let stored = stored.value();
            if !stored.starts_with(&start) {
                break;
            }
            let key = std::str::from_utf8(&stored[ns.len() + 1..]).map_err(|_| {
                KvError::Internal(format!("kv store: namespace {ns:?} holds a non-UTF-8 key"))
            })?;
            keys.push(key.to_owned());
            if keys.len() == limit {
                break;
            }
        }
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

    async fn sync(&self) -> Result<(), KvError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || flush(&db))
            .await
            .map_err(|e| KvError::Internal(format!("kv store: flush task failed: {e}")))?
    }

    async fn usage(&self, ns: &str) -> Result<Usage, KvError> {
        validate_namespace(ns)?;
        let txn = self.db.begin_read().or_kv("usage")?;
        let table = txn.open_table(USAGE).or_kv("usage")?;
        read_usage(&table, ns)
    }
}

impl EmbeddedKv {
    /// The one write path of `set` and `compare_and_swap`: `condition` is `None` for an
    /// unconditional write, `Some(expected)` for a swap.
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
        let (ns, key, value, quota) = (ns.to_owned(), key.to_owned(), value.to_vec(), *quota);
        self.write("write", move |txn| {
            let stored_key = entry_key(&ns, &key);
            let mut entries = txn.open_table(ENTRIES).or_kv("write")?;
            let current = entries
                .get(stored_key.as_slice())
                .or_kv("write")?
                .map(|guard| {
                    let (revision, old) = guard.value();
                    (revision, (key.len() + old.len()) as u64)
                });
            let current_revision = current.map(|(revision, _)| revision);
            if let Some(expected) = condition {
                if expected != current_revision {
                    return Ok((CasOutcome::Conflict(current_revision), false));
                }
            }

            let mut usage = txn.open_table(USAGE).or_kv("write")?;
            let used = read_usage(&usage, &ns)?;
            let after = admit(
                used,
                &key,
                current.map(|(_, size)| size),
                value.len(),
                &quota,
            )?;

            let mut meta = txn.open_table(META).or_kv("write")?;
            let last = meta.get(LAST_REVISION).or_kv("write")?.map(|g| g.value());
            let revision = last.unwrap_or(0) + 1;
            meta.insert(LAST_REVISION, revision).or_kv("write")?;
            entries
                .insert(stored_key.as_slice(), (revision, value.as_slice()))
                .or_kv("write")?;
            usage
                .insert(ns.as_str(), (after.bytes, after.keys))
                .or_kv("write")?;
            Ok((CasOutcome::Swapped(revision), true))
        })
        .await
    }
}

/// `ns NUL key`: see the module docs for why this cannot collide across namespaces.
fn entry_key(ns: &str, key: &str) -> Vec<u8> {
    let mut stored = Vec::with_capacity(ns.len() + 1 + key.len());
    stored.extend_from_slice(ns.as_bytes());
    stored.push(0);
    stored.extend_from_slice(key.as_bytes());
    stored
}

fn read_usage(
    table: &impl ReadableTable<&'static str, (u64, u64)>,
    ns: &str,
) -> Result<Usage, KvError> {
    let found = table.get(ns).or_kv("reading usage")?;
    Ok(found
        .map(|guard| {
            let (bytes, keys) = guard.value();
            Usage { bytes, keys }
        })
        .unwrap_or_default())
}

/// Turns redb's many error types into a [`KvError`] saying what was being done.
trait OrKv<T> {
    fn or_kv(self, what: &str) -> Result<T, KvError>;
}

impl<T, E: Into<redb::Error>> OrKv<T> for Result<T, E> {
    fn or_kv(self, what: &str) -> Result<T, KvError> {
        self.map_err(|e| classify(&format!("kv store: {what}"), e))
    }
}

/// I/O trouble (disk full, file locked) may pass, so it is `Unavailable`; anything else
/// (corruption, a type mismatch) is `Internal`.
fn classify(context: &str, error: impl Into<redb::Error>) -> KvError {
    match error.into() {
        e @ (redb::Error::Io(_) | redb::Error::DatabaseAlreadyOpen) => {
            KvError::Unavailable(format!("{context}: {e}"))
        }
        e => KvError::Internal(format!("{context}: {e}")),
    }
}
