//! Carrying state across versions: what the host hands `restore`, and helpers to read it.
//!
//! `restore(from_version, state)` gets the state the *running* version wrote. On an upgrade
//! that is an older version's state; on a rollback (`host rollback`) it is a newer one's —
//! [`is_downgrade`] tells them apart. Returning an error leaves the agent's state untouched
//! and aborts the upgrade (or refuses the rollback) with that text.

use std::sync::OnceLock;

use serde::de::DeserializeOwned;

use crate::{AgentError, Result};

static MY_VERSION: OnceLock<&'static str> = OnceLock::new();

#[doc(hidden)]
pub fn set_my_version(version: &'static str) {
    let _ = MY_VERSION.set(version);
}

/// This component's version (its crate version).
pub fn my_version() -> &'static str {
    MY_VERSION.get().copied().unwrap_or("0.0.0")
}

/// Whether state written by `from_version` comes from a newer version than this one: a
/// rollback is handing this (older) version the newer version's state.
pub fn is_downgrade(from_version: &str) -> bool {
    numeric(from_version) > numeric(my_version())
}

fn numeric(version: &str) -> Vec<u64> {
    version
        .split(['.', '-', '+'])
        .map_while(|part| part.parse::<u64>().ok())
        .collect()
}

/// Reads `state` as this version's form `New`, or else as an older version's form `Old`
/// and converts it — the usual `restore` of a new version, in one line:
///
/// ```ignore
/// *self = state::read_or_convert::<Self, CounterV1>(state)?;
/// ```
pub fn read_or_convert<New, Old>(state: &[u8]) -> Result<New>
where
    New: DeserializeOwned + From<Old>,
    Old: DeserializeOwned,
{
    match serde_json::from_slice::<New>(state) {
        Ok(new) => Ok(new),
        Err(as_new) => serde_json::from_slice::<Old>(state).map(New::from).map_err(|as_old| {
            AgentError::new(format!(
                "saved state is neither this version's form ({as_new}) nor the older one's ({as_old})"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number_not_text() {
        assert!(numeric("0.10.0") > numeric("0.9.3"));
        assert!(numeric("1.0.0-rc.1") == numeric("1.0.0"));
    }
}
