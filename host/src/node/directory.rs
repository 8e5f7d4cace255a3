//! Which agents run on this node, by name and by id: `send` by name resolves through it,
//! and a `send` by reference is checked against it.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::agent::Identity;
use crate::capabilities::messaging::Directory;

/// The agents on this node by name and by id, for `send` by name and to check a `send`
/// by reference.
#[derive(Default)]
pub(super) struct NodeDirectory {
    maps: RwLock<DirectoryMaps>,
}

#[derive(Default)]
struct DirectoryMaps {
    /// name → (cluster, id)
    by_name: HashMap<String, (String, String)>,
    /// id → (cluster, name)
    by_id: HashMap<String, (String, String)>,
}

impl NodeDirectory {
    pub(super) fn insert(&self, identity: &Identity) {
        let mut maps = self.maps.write().expect("directory lock");
        let (cluster, name, id) = (&identity.cluster, &identity.name, &identity.id);
        maps.by_name
            .insert(name.clone(), (cluster.clone(), id.clone()));
        maps.by_id
            .insert(id.clone(), (cluster.clone(), name.clone()));
    }

    pub(super) fn remove(&self, name: &str) {
        let mut maps = self.maps.write().expect("directory lock");
        if let Some((_, id)) = maps.by_name.remove(name) {
            maps.by_id.remove(&id);
        }
    }
}

impl Directory for NodeDirectory {
    fn lookup(&self, name: &str) -> Option<(String, String)> {
        let maps = self.maps.read().expect("directory lock");
        maps.by_name.get(name).cloned()
    }

    fn lookup_id(&self, id: &str) -> Option<(String, String)> {
        let maps = self.maps.read().expect("directory lock");
        maps.by_id.get(id).cloned()
    }
}
