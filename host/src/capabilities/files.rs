//! The size quota of a read-write `[files]` grant (`[files] max_bytes`, node default
//! `[defaults] files_max_bytes`).
//!
//! The agent writes through WASI (`wasi:filesystem`), which wasmtime-wasi serves; it has no
//! hook for a quota, so [`shadow_writes`] replaces the four calls that can make a file
//! longer with versions that check the quota first and then delegate to wasmtime-wasi:
//! `descriptor.write`, `descriptor.set-size`, and `descriptor.write-via-stream` /
//! `append-via-stream`, whose output stream is wrapped in a [`QuotaStream`]. A write that
//! would take the directory past its quota fails inside the agent with `insufficient-space`
//! (`ENOSPC`, "No space left on device" in Rust's std); the host logs why and counts it
//! as a `files` limit hit.
//!
//! What counts is the apparent size of the files in the agent's directory (a sparse file
//! counts as long as it claims to be). The quota keeps a running upper bound of that size:
//! growth is added as it happens, and only when a write would not fit is the directory
//! walked again to learn what deletions and truncations gave back. Files the agent creates
//! empty and directories cost nothing against the quota.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime::component::{Linker, Resource};
use wasmtime::StoreContextMut;
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{ErrorCode, HostDescriptor};
use wasmtime_wasi::p2::{
    DynOutputStream, FsError, OutputStream, Pollable, StreamError, StreamResult,
};

use crate::agent::AgentStore;
use crate::telemetry::AgentMetrics;
use crate::units::format_bytes;

/// The WASI filesystem interface wasmtime-wasi links (components importing any 0.2.x
/// version resolve to it).
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// How many bytes an agent's `[files]` directory may hold, and how many it holds.
pub struct FilesQuota {
    dir: PathBuf,
    max_bytes: u64,
    /// At least the bytes in the directory: exact after a walk, grown by every write since.
    used: Mutex<u64>,
    agent: Arc<str>,
    metrics: Arc<AgentMetrics>,
}

/// Why a write was refused (logged; the agent sees `insufficient-space`).
#[derive(Debug)]
struct OverQuota {
    used: u64,
    growth: u64,
    max: u64,
}

impl FilesQuota {
    /// The quota of directory `dir`, starting from what is already in it.
    pub fn new(
        dir: &Path,
        max_bytes: u64,
        agent: &str,
        metrics: Arc<AgentMetrics>,
    ) -> std::io::Result<FilesQuota> {
        Ok(FilesQuota {
            dir: dir.to_path_buf(),
            max_bytes,
            used: Mutex::new(directory_size(dir)?),
            agent: Arc::from(agent),
            metrics,
        })
    }

    /// The quota in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Takes `growth` more bytes, or refuses (logged, counted) when they do not fit even
    /// after measuring the directory again.
    fn reserve(&self, growth: u64) -> Result<(), OverQuota> {
        if growth == 0 {
            return Ok(());
        }
        let mut used = self.used.lock().expect("files quota lock");
        if used.saturating_add(growth) > self.max_bytes {
            // Deletions and truncations are not tracked: learn what they gave back.
            if let Ok(measured) = directory_size(&self.dir) {
                *used = measured;
            }
        }
        if used.saturating_add(growth) > self.max_bytes {
            let refused = OverQuota {
                used: *used,
                growth,
                max: self.max_bytes,
            };
            drop(used);
            self.refuse(&refused);
            return Err(refused);
        }
        *used += growth;
        Ok(())
    }

    fn refuse(&self, why: &OverQuota) {
        self.metrics.limits.files.inc();
        // A looping writer would flood the log: the 1st, 2nd, 4th, 8th ... refusal is logged.
        let n = self.metrics.limits.files.get();
        if n.is_power_of_two() {
            tracing::warn!(
                agent = %self.agent,
                "file write refused: {} more would take its [files] directory ({}) to more than its quota of {} ([files] max_bytes or [defaults] files_max_bytes); the agent sees \"no space left on device\" ({n} refused so far)",
                format_bytes(why.growth),
                format_bytes(why.used),
                format_bytes(why.max)
            );
        }
    }
}

/// The apparent size of the files under `dir` (symlinks are not followed).
pub fn directory_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.path().symlink_metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

/// `ENOSPC` (28 on Linux and the BSDs), which wasmtime-wasi maps to `insufficient-space`
/// when the agent asks `filesystem-error-code` what a failed stream write was.
const ENOSPC: i32 = 28;

fn no_space() -> std::io::Error {
    std::io::Error::from_raw_os_error(ENOSPC)
}

/// The quota of the agent whose store this is, if its directory has one.
fn quota_of(store: &AgentStore) -> Option<Arc<FilesQuota>> {
    store.caps.files.as_ref()?.quota.clone()
}

/// The length of the file behind `fd`, if it is a file.
fn file_len(store: &mut AgentStore, fd: &Resource<Descriptor>) -> Option<u64> {
    let view = store.filesystem();
    match view.table.get(fd).ok()? {
        Descriptor::File(f) => f.file.metadata().ok().map(|m| m.len()),
        Descriptor::Dir(_) => None,
    }
}

fn borrowed(fd: &Resource<Descriptor>) -> Resource<Descriptor> {
    Resource::new_borrow(fd.rep())
}

/// Converts wasmtime-wasi's filesystem error into the WIT result (traps stay traps).
fn fs_result<T>(r: Result<T, FsError>) -> wasmtime::Result<Result<T, ErrorCode>> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(e) => Ok(Err(e.downcast()?)),
    }
}

/// Replaces wasmtime-wasi's file-growing calls in `linker` with quota-checking ones (see
/// the module docs). Call after `wasmtime_wasi::p2::add_to_linker_async`.
pub fn shadow_writes(linker: &mut Linker<AgentStore>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let result = define_shadows(linker);
    linker.allow_shadowing(false);
    result
}

fn define_shadows(linker: &mut Linker<AgentStore>) -> wasmtime::Result<()> {
    let mut types = linker.instance(FILESYSTEM_TYPES)?;
    types.func_wrap_async(
        "[method]descriptor.write",
        |mut store: StoreContextMut<'_, AgentStore>,
         (fd, buf, offset): (Resource<Descriptor>, Vec<u8>, u64)| {
            Box::new(async move {
                let data = store.data_mut();
                if let Some(quota) = quota_of(data) {
                    let len = file_len(data, &fd).unwrap_or(0);
                    let end = offset.saturating_add(buf.len() as u64);
                    if quota.reserve(end.saturating_sub(len)).is_err() {
                        return Ok((Err(ErrorCode::InsufficientSpace),));
                    }
                }
                let mut view = data.filesystem();
                Ok((fs_result(view.write(fd, buf, offset).await)?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.set-size",
        |mut store: StoreContextMut<'_, AgentStore>, (fd, size): (Resource<Descriptor>, u64)| {
            Box::new(async move {
                let data = store.data_mut();
                if let Some(quota) = quota_of(data) {
                    let len = file_len(data, &fd).unwrap_or(0);
                    if quota.reserve(size.saturating_sub(len)).is_err() {
                        return Ok((Err(ErrorCode::InsufficientSpace),));
                    }
                }
                let mut view = data.filesystem();
                Ok((fs_result(view.set_size(fd, size).await)?,))
            })
        },
    )?;
    types.func_wrap(
        "[method]descriptor.write-via-stream",
        |mut store: StoreContextMut<'_, AgentStore>, (fd, offset): (Resource<Descriptor>, u64)| {
            let data = store.data_mut();
            let stream = fs_result(data.filesystem().write_via_stream(borrowed(&fd), offset))?;
            Ok((wrap(data, &fd, stream, Some(offset))?,))
        },
    )?;
    types.func_wrap(
        "[method]descriptor.append-via-stream",
        |mut store: StoreContextMut<'_, AgentStore>, (fd,): (Resource<Descriptor>,)| {
            let data = store.data_mut();
            let stream = fs_result(data.filesystem().append_via_stream(borrowed(&fd)))?;
            Ok((wrap(data, &fd, stream, None)?,))
        },
    )?;
    Ok(())
}

/// Puts a [`QuotaStream`] around a file's output stream when the agent has a quota.
fn wrap(
    store: &mut AgentStore,
    fd: &Resource<Descriptor>,
    stream: Result<Resource<DynOutputStream>, ErrorCode>,
    position: Option<u64>,
) -> wasmtime::Result<Result<Resource<DynOutputStream>, ErrorCode>> {
    let (Ok(stream), Some(quota)) = (&stream, quota_of(store)) else {
        return Ok(stream);
    };
    let view = store.filesystem();
    let file = match view.table.get(fd)? {
        Descriptor::File(f) => f.file.clone(),
        Descriptor::Dir(_) => return Ok(Err(ErrorCode::IsDirectory)),
    };
    let inner: DynOutputStream = view.table.delete(Resource::new_own(stream.rep()))?;
    let wrapped: DynOutputStream = Box::new(QuotaStream {
        inner,
        file,
        position,
        quota,
    });
    Ok(Ok(view.table.push(wrapped)?))
}

/// A file's output stream that takes each write's growth from the quota first.
struct QuotaStream {
    inner: DynOutputStream,
    file: Arc<std::fs::File>,
    /// Where the next write lands; `None` for an append stream (always at the end).
    position: Option<u64>,
    quota: Arc<FilesQuota>,
}

impl QuotaStream {
    fn growth(&self, n: u64) -> u64 {
        match self.position {
            None => n,
            Some(at) => {
                let len = self.file.metadata().map(|m| m.len()).unwrap_or(0);
                at.saturating_add(n).saturating_sub(len)
            }
        }
    }
}

#[async_trait::async_trait]
impl Pollable for QuotaStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[async_trait::async_trait]
impl OutputStream for QuotaStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let n = bytes.len() as u64;
        if self.quota.reserve(self.growth(n)).is_err() {
            return Err(StreamError::LastOperationFailed(wasmtime::Error::from(
                no_space(),
            )));
        }
        self.inner.write(bytes)?;
        if let Some(at) = &mut self.position {
            *at += n;
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(dir: &Path, max: u64) -> FilesQuota {
        let metrics = crate::telemetry::Metrics::new().for_agent("a", "default");
        FilesQuota::new(dir, max, "a", metrics).unwrap()
    }

    #[test]
    fn the_quota_starts_from_what_is_already_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), vec![0; 700]).unwrap();
        std::fs::write(dir.path().join("b"), vec![0; 200]).unwrap();
        assert_eq!(directory_size(dir.path()).unwrap(), 900);
        let q = quota(dir.path(), 1000);
        assert!(q.reserve(100).is_ok(), "900 + 100 fits in 1000");
        std::fs::write(dir.path().join("c"), vec![0; 100]).unwrap();
        assert!(q.reserve(1).is_err(), "1001 does not");
        assert_eq!(q.metrics.limits.files.get(), 1, "the refusal is counted");
    }

    #[test]
    fn space_given_back_by_deleting_files_is_found_when_a_write_would_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old"), vec![0; 900]).unwrap();
        let q = quota(dir.path(), 1000);
        std::fs::remove_file(dir.path().join("old")).unwrap();
        assert!(q.reserve(1000).is_ok(), "the walk finds the 900 bytes free");
    }
}
