//! Environment overrides, applied after the file so deployments can keep one file.
//!
//! The variable names are the ones the existing deployment already sets. An empty value
//! counts as unset, because `VAR=` in a compose file or shell usually means "not set".

use std::path::PathBuf;

use super::llm::base_url;
use super::read::check_stream_name;
use super::{ConfigError, NodeConfig};
use crate::subjects::{validate_name, RESERVED_CLUSTERS};

/// Every variable the node config reads, for docs and `host check` (`LOG_LEVEL` is read by
/// the logger itself).
pub const ENV_VARS: [&str; 10] = [
    "ENABLE_UNIFIED_SUBJECTS",
    "SNAPSHOT_FREQUENCY",
    "HOST_CONTROL",
    "OLLAMA_HOST",
    "OLLAMA_NUM_PARALLEL",
    "NATS_URL",
    "STREAM_NAME",
    "AGENT_NAME",
    "AGENT_ID",
    "CAPABILITY_CLUSTER",
];

pub(super) fn apply(
    config: &mut NodeConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());

    if let Some(v) = get("ENABLE_UNIFIED_SUBJECTS") {
        config.node.unified_subjects = match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(ConfigError::in_env(
                    "ENABLE_UNIFIED_SUBJECTS",
                    format!("{v:?} is not a boolean; expected true, false, 1 or 0"),
                ))
            }
        };
    }
    if let Some(v) = get("SNAPSHOT_FREQUENCY") {
        config.node.snapshot_every = number("SNAPSHOT_FREQUENCY", &v, "100")?;
    }
    if let Some(v) = get("HOST_CONTROL") {
        config.control.socket = Some(PathBuf::from(v));
    }
    if let Some(v) = get("OLLAMA_HOST") {
        config.llm.ollama_url = base_url(&v).map_err(|e| ConfigError::in_env("OLLAMA_HOST", e))?;
    }
    if let Some(v) = get("OLLAMA_NUM_PARALLEL") {
        let n = number("OLLAMA_NUM_PARALLEL", &v, "2")?;
        if n == 0 {
            return Err(ConfigError::in_env(
                "OLLAMA_NUM_PARALLEL",
                "0 would let no LLM call run; expected a whole number like 2",
            ));
        }
        config.llm.num_parallel = n;
    }
    if let Some(v) = get("NATS_URL") {
        config.nats.url = Some(v.trim().to_string());
    }
    if let Some(v) = get("NATS_CREDS").filter(|v| !v.trim().is_empty()) {
        config.nats.credentials_file = Some(PathBuf::from(v.trim()));
    }
    if let Some(v) = get("STREAM_NAME") {
        check_stream_name(&v).map_err(|e| ConfigError::in_env("STREAM_NAME", e))?;
        config.nats.stream_name = v;
    }
    agent_identity(config, &get)
}

/// `AGENT_NAME`, `AGENT_ID`, `CAPABILITY_CLUSTER`: checked like the manifest fields they
/// replace, and only accepted when the node config lists exactly one agent.
fn agent_identity(
    config: &mut NodeConfig,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let mut set = Vec::new();
    if let Some(v) = get("AGENT_NAME") {
        let v = v.trim().to_string();
        validate_name(&v).map_err(|e| ConfigError::in_env("AGENT_NAME", e))?;
        config.agent_override.name = Some(v);
        set.push("AGENT_NAME");
    }
    if let Some(v) = get("AGENT_ID") {
        let id =
            crate::manifest::parse_id(v.trim()).map_err(|e| ConfigError::in_env("AGENT_ID", e))?;
        config.agent_override.id = Some(id);
        set.push("AGENT_ID");
    }
    if let Some(v) = get("CAPABILITY_CLUSTER") {
        let v = v.trim().to_string();
        validate_name(&v).map_err(|e| ConfigError::in_env("CAPABILITY_CLUSTER", e))?;
        if RESERVED_CLUSTERS.contains(&v.as_str()) {
            return Err(ConfigError::in_env(
                "CAPABILITY_CLUSTER",
                format!("{v:?} is reserved (it would make subject patterns overlap); choose another cluster name"),
            ));
        }
        config.agent_override.cluster = Some(v);
        set.push("CAPABILITY_CLUSTER");
    }
    let Some(first) = set.first() else {
        return Ok(());
    };
    match config.agents.len() {
        1 => Ok(()),
        0 => Err(ConfigError::in_env(
            first,
            format!(
                "{} name(s) the agent of a one-agent node, but the node config lists no [[agents]]; \
                 add one [[agents]] manifest = \"...\" entry, or unset {}",
                set.join(", "),
                set.join(", ")
            ),
        )),
        n => Err(ConfigError::in_env(
            first,
            format!(
                "{} would give all {n} agents of the node config the same identity; \
                 unset {} and set each agent's [agent] name/id/cluster in its manifest, \
                 or run one node per agent",
                set.join(", "),
                set.join(", ")
            ),
        )),
    }
}

fn number(var: &str, value: &str, example: &str) -> Result<u32, ConfigError> {
    value.trim().parse::<u32>().map_err(|_| {
        let problem = if value.trim().parse::<u64>().is_ok() {
            format!(
                "{value:?} is too large; expected a whole number up to {}",
                u32::MAX
            )
        } else {
            format!("{value:?} is not a number; expected a whole number like {example}")
        };
        ConfigError::in_env(var, problem)
    })
}
