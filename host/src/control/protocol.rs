//! The messages of the control API. Each line on the socket is one of these as JSON.

use serde::{Deserialize, Serialize};

use crate::node::LoadRequest;

/// What a client asks a node. Paths are absolute (the client resolves them).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "kebab-case")]
pub enum Request {
    Load(LoadRequest),
    Unload {
        name: String,
    },
    /// Swap an agent to a new component, carrying its state across; with `canary`, serve
    /// both versions and move conversations to the new one in steps (answers once started).
    Upgrade {
        name: String,
        component: std::path::PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        canary: Option<crate::agent::plan::RolloutPlan>,
    },
    /// Upgrade every agent running a component, in waves (answers when done or stopped).
    UpgradeComponent {
        /// A digest prefix or the component's file name without `.wasm`.
        selector: String,
        component: std::path::PathBuf,
        plan: crate::agent::plan::RolloutPlan,
    },
    /// Go back to the version the last upgrade replaced.
    Rollback {
        name: String,
        #[serde(default)]
        force: bool,
    },
    /// Keep the upgraded version; retire the one kept warm.
    Promote {
        name: String,
    },
    List,
    /// The node's health: agents not running, where the bus stands.
    Health,
    Status {
        name: String,
    },
    Send {
        subject: String,
        #[serde(default)]
        headers: Vec<(String, String)>,
        payload: Vec<u8>,
        /// Wait this long for a reply (milliseconds); none: publish only.
        wait_ms: Option<u64>,
    },
}

/// A node's answer: `ok` with a JSON `result`, or an `error` in plain words.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: impl Serialize) -> Response {
        match serde_json::to_value(result) {
            Ok(v) => Response {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Response::err(format!("cannot encode the answer: {e}")),
        }
    }

    pub fn err(error: impl Into<String>) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(error.into()),
        }
    }
}

/// The reply to a `send` that waited.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}
