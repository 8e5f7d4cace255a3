//! The plain-words summary printed by `host check`, so an operator can review what an
//! agent may do without reading TOML or knowing the subject scheme.

use std::fmt::Write;

use super::Manifest;
use crate::subjects;
use crate::units::format_bytes;

pub(super) fn describe(m: &Manifest) -> String {
    let mut out = String::new();
    identity(m, &mut out);
    listens(m, &mut out);
    messaging(m, &mut out);
    llm(m, &mut out);
    storage_and_limits(m, &mut out);
    config(m, &mut out);
    files(m, &mut out);
    out.push_str("May NOT:\n");
    match m.files {
        None => out.push_str("  - read or write files (WASI grants no preopened directories)\n"),
        Some(_) => out.push_str(&format!(
            "  - reach any file outside {} (.., absolute paths and symlinks stay inside it)\n",
            super::FILES_GUEST_DIR
        )),
    }
    out.push_str("  - open network connections (WASI grants no sockets)\n");
    out.push_str("  - read environment variables or arguments (WASI grants none)\n");
    out.push_str(
        "  - publish, send, or use models beyond the grants above (such calls return error::denied)\n",
    );
    out
}

fn identity(m: &Manifest, out: &mut String) {
    let a = &m.agent;
    let _ = writeln!(out, "Agent {} in cluster {}", a.name, a.cluster);
    let _ = writeln!(out, "  reference: {}", m.agent_ref());
    if let Some(source) = &m.source {
        let _ = writeln!(out, "  manifest: {}", source.display());
    }
    match &a.component {
        Some(path) => {
            let _ = writeln!(out, "  component: {}", path.display());
        }
        None => out.push_str("  component: chosen by the loader\n"),
    }
    match &a.sha256 {
        Some(hash) => {
            let _ = writeln!(out, "  sha256: {hash} (a different component is refused)");
        }
        None => out.push_str("  sha256: not pinned\n"),
    }
}

fn listens(m: &Manifest, out: &mut String) {
    let s = &m.subscriptions;
    out.push_str("Listens on:\n");
    let id = m.agent.id.to_string();
    let patterns = [
        (
            s.legacy,
            subjects::legacy_inbox(&m.agent.name),
            "legacy inbox",
        ),
        (s.broadcast, subjects::broadcast(), "broadcasts"),
        (
            s.agent_ref,
            subjects::agent_ref_commands(&id),
            "agent-ref commands",
        ),
    ];
    let mut any = false;
    for (on, pattern, what) in patterns {
        if on {
            any = true;
            let _ = writeln!(out, "  - {pattern} ({what})");
        }
    }
    if !any {
        out.push_str("  - nothing (all subscriptions are off)\n");
    }
    if s.durable {
        out.push_str("  delivery: durable (JetStream consumer, acknowledged after handle)\n");
    } else {
        out.push_str("  delivery: direct (messages sent while it is down are not kept)\n");
    }
}

fn list(out: &mut String, items: &[String], none: &str) {
    if items.is_empty() {
        let _ = writeln!(out, "  - {none}");
    }
    for item in items {
        let _ = writeln!(out, "  - {item}");
    }
}

fn messaging(m: &Manifest, out: &mut String) {
    out.push_str("May publish and request to:\n");
    list(
        out,
        &m.messaging.publish,
        "no subjects (only replies to the message it is handling)",
    );
    out.push_str("May send to agents:\n");
    if m.messaging.send.iter().any(|n| n == "*") {
        out.push_str("  - any agent\n");
    } else {
        list(out, &m.messaging.send, "no agents");
    }
}

fn limit(value: Option<u64>, unit: &str) -> String {
    match value {
        Some(n) => format!("{n}{unit}"),
        None => "no limit".to_string(),
    }
}

fn llm(m: &Manifest, out: &mut String) {
    let l = &m.llm;
    out.push_str("May use language models:\n");
    if l.models.is_empty() {
        out.push_str("  - none (every LLM call is denied)\n");
        return;
    }
    if l.models.iter().any(|n| n == "*") {
        out.push_str("  - any model\n");
    } else {
        list(out, &l.models, "none");
    }
    let _ = writeln!(
        out,
        "  tokens per minute: {}",
        limit(l.max_tokens_per_minute, "")
    );
    let _ = writeln!(
        out,
        "  requests per minute: {}",
        limit(l.max_requests_per_minute.map(u64::from), "")
    );
    let _ = writeln!(
        out,
        "  tokens per call: {}",
        limit(l.max_tokens_per_call.map(u64::from), "")
    );
}

fn storage_and_limits(m: &Manifest, out: &mut String) {
    let _ = writeln!(
        out,
        "Key-value store: its own namespace only, up to {} in at most {} keys",
        format_bytes(m.kv.max_bytes),
        m.kv.max_keys
    );
    let node_default = || "node default".to_string();
    let l = &m.limits;
    out.push_str("Limits:\n");
    let _ = writeln!(
        out,
        "  memory: {}",
        l.memory.map(format_bytes).unwrap_or_else(node_default)
    );
    let _ = writeln!(
        out,
        "  CPU time per message: {}",
        l.cpu_ms_per_message
            .map(|ms| format!("{ms}ms"))
            .unwrap_or_else(node_default)
    );
    let _ = writeln!(
        out,
        "  largest message: {}",
        l.max_message_bytes
            .map(format_bytes)
            .unwrap_or_else(node_default)
    );
    let _ = writeln!(
        out,
        "  messages sent per second (replies excepted): {}",
        l.publish_per_second
            .map(|n| n.to_string())
            .unwrap_or_else(node_default)
    );
    let _ = writeln!(
        out,
        "  log lines per second (runtime.log, stdout, stderr): {}",
        l.log_lines_per_second
            .map(|n| n.to_string())
            .unwrap_or_else(node_default)
    );
    let _ = writeln!(
        out,
        "  largest snapshot of its state: {}{}",
        format_bytes(m.max_snapshot_bytes()),
        match l.max_snapshot_bytes {
            Some(_) => "",
            None => " (its [kv] max_bytes)",
        }
    );
    let count = |n: Option<u32>| n.map(|n| n.to_string()).unwrap_or_else(node_default);
    let _ = writeln!(
        out,
        "  core instances {}, tables {}, memories {}, table elements {}",
        count(l.instances),
        count(l.tables),
        count(l.memories),
        count(l.table_elements)
    );
}

fn files(m: &Manifest, out: &mut String) {
    if let Some(access) = m.files {
        let _ = writeln!(
            out,
            "Files: {} in its private directory, seen as {} ({{data dir}}/files/{} on the node)",
            access.as_str(),
            super::FILES_GUEST_DIR,
            m.agent.id
        );
        if access == super::FilesAccess::ReadWrite {
            let quota = m
                .files_max_bytes
                .map(format_bytes)
                .unwrap_or_else(|| "the node default ([defaults] files_max_bytes)".to_string());
            let _ = writeln!(
                out,
                "  holding at most {quota}; writes beyond fail with \"no space left\""
            );
        }
    }
}

fn config(m: &Manifest, out: &mut String) {
    out.push_str("Config keys (read with runtime.config):\n");
    let keys: Vec<String> = m.config.keys().cloned().collect();
    list(out, &keys, "none");
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::manifest::tests::FULL;
    use crate::manifest::Manifest;

    #[test]
    fn describe_covers_grants_limits_and_denials_in_plain_words() {
        let m = Manifest::parse(FULL, Some(Path::new("configs/agents/sage.toml"))).unwrap();
        let text = m.describe();
        for expected in [
            "Agent sage in cluster orchestration",
            "orchestration.sage.01936f11-4ea2-7000-8000-000000000001",
            "agent.to.sage.> (legacy inbox)",
            "agent.*.*.01936f11-4ea2-7000-8000-000000000001.command.> (agent-ref commands)",
            "delivery: durable",
            "agent.broadcast.status",
            "ddd-expert",
            "llama3.2:1b",
            "tokens per minute: 20000",
            "up to 8MiB in at most 500 keys",
            "memory: 64MiB",
            "CPU time per message: 200ms",
            "system_prompt",
            "May NOT:",
            "files",
            "network",
            "environment variables",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(
            !text.contains("agent.broadcast.> (broadcasts)"),
            "broadcast is off:\n{text}"
        );
    }

    #[test]
    fn describe_of_deny_all_says_node_default_and_none() {
        let text = Manifest::deny_all("echo").unwrap().describe();
        for expected in [
            "agent.to.echo.> (legacy inbox)",
            "agent.broadcast.> (broadcasts)",
            "no subjects",
            "no agents",
            "every LLM call is denied",
            "up to 1MiB in at most 10000 keys",
            "memory: node default",
            "CPU time per message: node default",
            "largest message: node default",
            "largest snapshot of its state: 1MiB (its [kv] max_bytes)",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }
}
