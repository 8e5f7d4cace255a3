//! A load in progress holds its agent's name and id, so the node's agent table need not be
//! locked while the agent's `init` runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::manifest::Manifest;

/// A name and id held for a load in progress, released when the load ends either way.
pub(super) struct Reservation {
    loading: Arc<Mutex<HashMap<String, String>>>,
    name: String,
}

impl Reservation {
    pub(super) fn new(loading: &Arc<Mutex<HashMap<String, String>>>, manifest: &Manifest) -> Self {
        let name = manifest.agent.name.clone();
        loading
            .lock()
            .expect("loading lock")
            .insert(name.clone(), manifest.agent.id.to_string());
        Reservation {
            loading: loading.clone(),
            name,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.loading
            .lock()
            .expect("loading lock")
            .remove(&self.name);
    }
}
