//! Turns a parsed TOML document into a validated [`Manifest`], one section at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::{Table, Value};
use uuid::Uuid;

use super::{
    AgentSection, FilesAccess, KvGrants, Limits, LlmGrants, Manifest, MessagingGrants,
    Subscriptions, DEFAULT_CLUSTER,
};
use crate::config::fields::{describe, FieldError, Section};
use crate::subjects::{validate_name, validate_pattern, RESERVED_CLUSTERS};

const SECTIONS: &[&str] = &[
    "agent",
    "subscriptions",
    "messaging",
    "llm",
    "kv",
    "limits",
    "files",
    "config",
];
const EXAMPLE_ID: &str = "\"01936f11-4ea2-7000-8000-000000000001\"";

pub(super) fn manifest(
    document: &Table,
    source: Option<&Path>,
    default_name: Option<&str>,
) -> Result<Manifest, FieldError> {
    let root = Section::root(document, SECTIONS)?;
    Ok(Manifest {
        source: source.map(Path::to_path_buf),
        agent: agent(&root, source, default_name)?,
        subscriptions: subscriptions(&root)?,
        messaging: messaging(&root)?,
        llm: llm(&root)?,
        kv: kv(&root)?,
        limits: limits(&root)?,
        files: files(&root, document.contains_key("files"))?,
        files_max_bytes: files_max_bytes(&root)?,
        config: config(&root)?,
    })
}

fn agent(
    root: &Section,
    source: Option<&Path>,
    default_name: Option<&str>,
) -> Result<AgentSection, FieldError> {
    let s = root.section("agent", &["name", "cluster", "id", "component", "sha256"])?;

    let name = match (s.string("name", "\"my-agent\"")?, default_name) {
        (Some(name), _) => name,
        (None, Some(name)) => name.to_string(),
        (None, None) => {
            return Err(s.error(
                "name",
                "missing; add name = \"my-agent\" to the [agent] section",
            ))
        }
    };
    validate_name(&name).map_err(|e| s.error("name", e))?;

    let cluster = s
        .string("cluster", "\"orchestration\"")?
        .unwrap_or_else(|| DEFAULT_CLUSTER.to_string());
    validate_name(&cluster).map_err(|e| s.error("cluster", e))?;
    if RESERVED_CLUSTERS.contains(&cluster.as_str()) {
        return Err(s.error(
            "cluster",
            format!(
                "{cluster:?} is reserved (it would make subject patterns overlap); choose another cluster name"
            ),
        ));
    }

    let id = match s.string("id", EXAMPLE_ID)? {
        None => Uuid::now_v7(),
        Some(text) => parse_id(&text).map_err(|e| s.error("id", e))?,
    };

    let component =
        match s.string("component", "\"my-agent.wasm\"")? {
            None => None,
            Some(path) if path.trim().is_empty() => return Err(s.error(
                "component",
                "is empty; expected a path to a .wasm component, relative to the manifest's folder",
            )),
            Some(path) => Some(resolve(source, &path)),
        };

    let sha256 = match s.string("sha256", "\"<64 hex characters>\"")? {
        None => None,
        Some(hash) => Some(check_sha256(hash).map_err(|e| s.error("sha256", e))?),
    };

    Ok(AgentSection {
        name,
        cluster,
        id,
        component,
        sha256,
    })
}

pub(crate) fn parse_id(text: &str) -> Result<Uuid, String> {
    let id = Uuid::parse_str(text).map_err(|e| {
        format!("{text:?} is not a UUID ({e}); expected a UUID v7 like {EXAMPLE_ID}, or leave id out to generate one")
    })?;
    match id.get_version_num() {
        7 => Ok(id),
        v => Err(format!(
            "{text:?} is a version {v} UUID; expected a UUID v7 (time-ordered) like {EXAMPLE_ID}, or leave id out to generate one"
        )),
    }
}

fn check_sha256(hash: String) -> Result<String, String> {
    if hash.len() != 64 {
        return Err(format!(
            "has {} characters; expected 64 lower-case hex characters (as printed by sha256sum)",
            hash.chars().count()
        ));
    }
    if let Some(c) = hash.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
        return Err(format!(
            "contains {c:?}; expected 64 lower-case hex characters (as printed by sha256sum)"
        ));
    }
    Ok(hash)
}

/// Joins a path written in a file onto that file's folder; absolute paths stay as they are.
pub(crate) fn resolve(source: Option<&Path>, path: &str) -> PathBuf {
    match source.and_then(Path::parent) {
        Some(dir) => dir.join(path),
        None => PathBuf::from(path),
    }
}

fn subscriptions(root: &Section) -> Result<Subscriptions, FieldError> {
    let s = root.section(
        "subscriptions",
        &["legacy", "broadcast", "agent_ref", "durable"],
    )?;
    let d = Subscriptions::default();
    Ok(Subscriptions {
        legacy: s.bool("legacy")?.unwrap_or(d.legacy),
        broadcast: s.bool("broadcast")?.unwrap_or(d.broadcast),
        agent_ref: s.bool("agent_ref")?.unwrap_or(d.agent_ref),
        durable: s.bool("durable")?.unwrap_or(d.durable),
    })
}

fn messaging(root: &Section) -> Result<MessagingGrants, FieldError> {
    let s = root.section("messaging", &["publish", "send"])?;
    let publish = s
        .string_list("publish", "[\"agent.to.*.>\"]")?
        .unwrap_or_default();
    for (i, pattern) in publish.iter().enumerate() {
        validate_pattern(pattern).map_err(|e| {
            s.error(
                &format!("publish[{i}]"),
                format!("{e}; expected a subject pattern like \"agent.to.*.>\" or \"agent.broadcast.status\""),
            )
        })?;
    }
    let send = s
        .string_list("send", "[\"ddd-expert\"]")?
        .unwrap_or_default();
    for (i, name) in send.iter().enumerate() {
        if name != "*" {
            validate_name(name).map_err(|e| {
                s.error(
                    &format!("send[{i}]"),
                    format!(
                        "{e}; expected an agent name like \"ddd-expert\", or \"*\" for any agent"
                    ),
                )
            })?;
        }
    }
    Ok(MessagingGrants { publish, send })
}

fn llm(root: &Section) -> Result<LlmGrants, FieldError> {
    let s = root.section(
        "llm",
        &[
            "models",
            "max_tokens_per_minute",
            "max_requests_per_minute",
            "max_tokens_per_call",
        ],
    )?;
    let models = s
        .string_list("models", "[\"llama3.2:1b\"]")?
        .unwrap_or_default();
    for (i, model) in models.iter().enumerate() {
        if model.trim().is_empty() || model.chars().any(char::is_whitespace) {
            return Err(s.error(
                &format!("models[{i}]"),
                format!("{model:?} is not a model name; expected a name like \"llama3.2:1b\", or \"*\" for any model"),
            ));
        }
    }
    let no_zero = "it would refuse every call; to deny LLM use, leave models empty";
    Ok(LlmGrants {
        models,
        max_tokens_per_minute: s.positive("max_tokens_per_minute", "20000", no_zero)?,
        max_requests_per_minute: s.positive("max_requests_per_minute", "60", no_zero)?,
        max_tokens_per_call: s.positive("max_tokens_per_call", "4096", no_zero)?,
    })
}

fn kv(root: &Section) -> Result<KvGrants, FieldError> {
    let s = root.section("kv", &["max_bytes", "max_keys"])?;
    let d = KvGrants::default();
    Ok(KvGrants {
        max_bytes: s.bytes("max_bytes")?.unwrap_or(d.max_bytes),
        max_keys: s.uint("max_keys", "10000")?.unwrap_or(d.max_keys),
    })
}

fn limits(root: &Section) -> Result<Limits, FieldError> {
    let s = root.section(
        "limits",
        &[
            "memory",
            "cpu_ms_per_message",
            "max_message_bytes",
            "publish_per_second",
            "log_lines_per_second",
            "table_elements",
            "instances",
            "tables",
            "memories",
            "max_snapshot_bytes",
        ],
    )?;
    let no_zero = "the agent could not run; leave the field out for the node default";
    Ok(Limits {
        memory: s.positive_bytes("memory", no_zero)?,
        cpu_ms_per_message: s.positive("cpu_ms_per_message", "200", no_zero)?,
        max_message_bytes: s.positive_bytes("max_message_bytes", no_zero)?,
        publish_per_second: s.positive(
            "publish_per_second",
            "100",
            "the agent could send nothing but replies; leave the field out for the node default",
        )?,
        log_lines_per_second: s.positive(
            "log_lines_per_second",
            "100",
            "every line the agent logs would be dropped; leave the field out for the node default",
        )?,
        table_elements: s.positive("table_elements", "20000", no_zero)?,
        instances: s.positive("instances", "20", no_zero)?,
        tables: s.positive("tables", "4", no_zero)?,
        memories: s.positive("memories", "2", no_zero)?,
        max_snapshot_bytes: s.positive_bytes(
            "max_snapshot_bytes",
            "no state could be saved; leave the field out for the agent's [kv] max_bytes",
        )?,
    })
}

/// `[files]`: present means granted, so `access` must say how (no silent default).
fn files(root: &Section, present: bool) -> Result<Option<FilesAccess>, FieldError> {
    let s = root.section("files", &["access", "max_bytes"])?;
    let expected = "expected access = \"read-only\" or access = \"read-write\"";
    match s.string("access", "\"read-only\"")?.as_deref() {
        None if !present => Ok(None),
        None => Err(s.error(
            "access",
            format!("missing; {expected} (or remove [files] to grant no file access)"),
        )),
        Some("read-only") => Ok(Some(FilesAccess::ReadOnly)),
        Some("read-write") => Ok(Some(FilesAccess::ReadWrite)),
        Some(other) => Err(s.error(
            "access",
            format!("{other:?} is not an access mode; {expected}"),
        )),
    }
}

/// `[files] max_bytes`: a quota only a read-write grant can use.
fn files_max_bytes(root: &Section) -> Result<Option<u64>, FieldError> {
    let s = root.section("files", &["access", "max_bytes"])?;
    let max_bytes = s.positive_bytes(
        "max_bytes",
        "the agent could write nothing; use access = \"read-only\" instead",
    )?;
    if max_bytes.is_some() && s.string("access", "\"read-write\"")?.as_deref() != Some("read-write")
    {
        return Err(s.error(
            "max_bytes",
            "applies only to access = \"read-write\" (a read-only directory cannot grow); remove max_bytes or set access = \"read-write\"",
        ));
    }
    Ok(max_bytes)
}

fn config(root: &Section) -> Result<BTreeMap<String, String>, FieldError> {
    let s = root.section_any("config")?;
    let mut out = BTreeMap::new();
    for (key, value) in s.entries() {
        match value {
            Value::String(text) => {
                out.insert(key.clone(), text.clone());
            }
            Value::Array(_) | Value::Table(_) => {
                return Err(s.error(
                    key,
                    format!("expected a string, found {}; config values are strings (encode structured values, e.g. as JSON text)", describe(value)),
                ))
            }
            other => {
                return Err(s.error(
                    key,
                    format!("expected a string, found {}; quote it: {key} = \"{other}\"", describe(other)),
                ))
            }
        }
    }
    Ok(out)
}
