//! The agent's own key-value namespace (quota from the manifest's `[kv]`).

use serde::{de::DeserializeOwned, Serialize};

use crate::bindings::agent::host::kv as wit;
pub use crate::bindings::agent::host::kv::{CasOutcome, Entry};
use crate::error::host;
use crate::{AgentError, Result};

/// The value under `key`, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>> {
    Ok(host(wit::get(key))?.map(|e| e.value))
}

/// The value and its revision (for [`compare_and_swap`]).
pub fn get_entry(key: &str) -> Result<Option<Entry>> {
    host(wit::get(key))
}

/// Stores `value`; returns the new revision.
pub fn set(key: &str, value: impl AsRef<[u8]>) -> Result<u64> {
    host(wit::set(key, value.as_ref()))
}

pub fn delete(key: &str) -> Result<()> {
    host(wit::delete(key))
}

/// Keys starting with `prefix`, sorted.
pub fn list_keys(prefix: &str) -> Result<Vec<String>> {
    host(wit::list_keys(prefix))
}

/// Writes `value` only if `key` is still at revision `expected` (`None`: only if absent).
pub fn compare_and_swap(
    key: &str,
    expected: Option<u64>,
    value: impl AsRef<[u8]>,
) -> Result<CasOutcome> {
    host(wit::compare_and_swap(key, expected, value.as_ref()))
}

/// The value under `key` parsed as JSON.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>> {
    match get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AgentError::new(format!("kv key '{key}' is not the expected JSON: {e}"))),
    }
}

/// Stores `value` as JSON.
pub fn set_json<T: Serialize>(key: &str, value: &T) -> Result<u64> {
    set(key, serde_json::to_vec(value)?)
}
