//! Every subject string the host uses is built or checked here, so the subject scheme
//! (docs/design.md, Subjects) lives in one place.
//!
//! Subjects are dot-separated tokens. In patterns, `*` matches exactly one token and `>`
//! matches one or more tokens and may only stand last (NATS semantics).

/// Cluster names that would make the agent subject patterns overlap.
pub const RESERVED_CLUSTERS: [&str; 2] = ["to", "broadcast"];

/// The header carrying the sending agent's reference; set by the host only.
pub const SENDER_HEADER: &str = "Agent-Ref";

/// The NATS message-id header used to deduplicate a message delivered twice.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Header carrying the error on a dead-lettered message.
pub const ERROR_HEADER: &str = "Agent-Error";

/// The legacy inbox pattern of an agent: `agent.to.{name}.>`.
pub fn legacy_inbox(name: &str) -> String {
    format!("agent.to.{name}.>")
}

/// The broadcast pattern every agent hears: `agent.broadcast.>`.
pub fn broadcast() -> String {
    "agent.broadcast.>".to_string()
}

/// The agent-ref command pattern of an agent: `agent.*.*.{id}.command.>`.
pub fn agent_ref_commands(id: &str) -> String {
    format!("agent.*.*.{id}.command.>")
}

/// A command on the legacy scheme: `agent.to.{name}.{command}`.
pub fn legacy_command(name: &str, command: &str) -> String {
    format!("agent.to.{name}.{command}")
}

/// A command on the agent-ref scheme: `agent.{cluster}.{name}.{id}.command.{command}`.
pub fn agent_ref_command(cluster: &str, name: &str, id: &str, command: &str) -> String {
    format!("agent.{cluster}.{name}.{id}.command.{command}")
}

/// Where messages that keep failing go: `agent.dlq.{name}`.
pub fn dead_letter(name: &str) -> String {
    format!("agent.dlq.{name}")
}

/// The durable JetStream consumer of one of an agent's patterns: `agent-{id}-{pattern}`.
/// Derived from the id only, so it survives renames, restarts and moves between nodes.
pub fn durable_consumer(id: &str, pattern: &str) -> String {
    format!("agent-{id}-{pattern}")
}

/// A unique reply subject for one request.
pub fn reply_inbox(unique: &str) -> String {
    format!("_INBOX.{unique}")
}

/// The `{cluster}.{name}.{id}` form of an agent reference.
pub fn agent_ref_string(cluster: &str, name: &str, id: &str) -> String {
    format!("{cluster}.{name}.{id}")
}

/// Checks a subject to publish to: non-empty tokens, no wildcards, no whitespace.
pub fn validate_subject(subject: &str) -> Result<(), String> {
    check_tokens(subject, false)
}

/// Checks a subscription or grant pattern: like a subject, plus `*` tokens and a final `>`.
pub fn validate_pattern(pattern: &str) -> Result<(), String> {
    check_tokens(pattern, true)
}

fn check_tokens(s: &str, wildcards: bool) -> Result<(), String> {
    if plainly_valid(s.as_bytes()) {
        return Ok(());
    }
    check_full(s, wildcards)
}

/// The check that explains what is wrong; [`plainly_valid`] answers most subjects first.
fn check_full(s: &str, wildcards: bool) -> Result<(), String> {
    if s.is_empty() {
        return Err("a subject cannot be empty".into());
    }
    if s.len() > 1024 {
        return Err(format!(
            "subject is {} bytes long; at most 1024 allowed",
            s.len()
        ));
    }
    let count = s.split('.').count();
    for (i, token) in s.split('.').enumerate() {
        if token.is_empty() {
            return Err(format!(
                "'{s}' has an empty token (two dots in a row, or a dot at an end)"
            ));
        }
        if let Some(c) = token.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "'{s}' contains the character {c:?}; subjects have no whitespace"
            ));
        }
        let wild = token == "*" || token == ">";
        if wild && !wildcards {
            return Err(format!(
                "'{s}' contains the wildcard '{token}'; publish to a concrete subject"
            ));
        }
        if token == ">" && i + 1 != count {
            return Err(format!(
                "'{s}' has '>' before the end; '>' may only be the last token"
            ));
        }
        if !wild && (token.contains('*') || token.contains('>')) {
            return Err(format!(
                "'{s}' has '{token}'; wildcards must be whole tokens"
            ));
        }
    }
    Ok(())
}

/// The fast path of every publish: printable ASCII, no empty token, no wildcard. Anything
/// else (patterns included) goes through the full check, which explains the problem.
/// Written without early exits so the compiler checks many bytes per instruction: a byte at
/// a time, this was ~750 instructions for a reply inbox on every reply.
fn plainly_valid(bytes: &[u8]) -> bool {
    if bytes.is_empty() || bytes.len() > 1024 || bytes[0] == b'.' || bytes[bytes.len() - 1] == b'.'
    {
        return false;
    }
    // Printable ASCII is 0x21..=0x7e: one subtraction and compare per byte.
    let bad_byte = bytes.iter().fold(0u8, |bad, &b| {
        bad | u8::from(b.wrapping_sub(0x21) > 0x5d) | u8::from(b == b'*') | u8::from(b == b'>')
    });
    let empty_token = bytes.iter().zip(&bytes[1..]).fold(0u8, |bad, (&a, &b)| {
        bad | u8::from((a == b'.') & (b == b'.'))
    });
    bad_byte == 0 && empty_token == 0
}

/// Whether `subject` matches `pattern` (both assumed valid).
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(pt), Some(st)) if pt == st => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Checks an agent or cluster name: one subject token of lower-case letters, digits, `-`
/// and `_`, so it can stand in every subject the host builds.
pub fn validate_name(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 64 {
        return Err("expected 1 to 64 characters".into());
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "'{value}' contains {c:?}; expected lower-case letters, digits, '-' or '_' (one subject token)"
        ));
    }
    Ok(())
}

/// Checks an agent id as it stands in subjects: a UUID in its canonical lower-case,
/// hyphenated form (what manifests and `runtime.self` give), so that it is exactly one
/// subject token and names exactly one agent's agent-ref inbox.
pub fn validate_agent_id(value: &str) -> Result<(), String> {
    let canonical = uuid::Uuid::parse_str(value)
        .ok()
        .map(|id| id.to_string())
        .filter(|canonical| canonical == value);
    match canonical {
        Some(_) => Ok(()),
        None => Err(format!(
            "{value:?} is not an agent id; expected a UUID in lower-case hyphenated form like \"01936f11-4ea2-7000-8000-000000000001\" (the id from the agent's manifest or runtime::self)"
        )),
    }
}

/// Checks a command (the subject tail after the agent's prefix): one or more tokens.
pub fn validate_command(command: &str) -> Result<(), String> {
    validate_subject(command).map_err(|e| format!("command {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_exactly_one_token() {
        assert!(matches("agent.*.x", "agent.a.x"));
        assert!(!matches("agent.*.x", "agent.a.b.x"));
        assert!(!matches("agent.*", "agent"));
    }

    #[test]
    fn greater_than_matches_one_or_more_trailing_tokens() {
        assert!(matches("agent.to.echo.>", "agent.to.echo.hello"));
        assert!(matches("agent.to.echo.>", "agent.to.echo.a.b.c"));
        assert!(!matches("agent.to.echo.>", "agent.to.echo"));
        assert!(!matches("agent.to.echo.>", "agent.to.echoes.x"));
    }

    #[test]
    fn agent_ref_pattern_matches_commands_for_that_id_only() {
        let p = agent_ref_commands("0193");
        assert!(matches(&p, "agent.orchestration.sage.0193.command.plan"));
        assert!(!matches(&p, "agent.orchestration.sage.0194.command.plan"));
        assert!(!matches(&p, "agent.orchestration.sage.0193.event.plan"));
    }

    #[test]
    fn subjects_reject_wildcards_and_empty_tokens() {
        assert!(validate_subject("agent.to.echo.hi").is_ok());
        assert!(validate_subject("agent.*.x").is_err());
        assert!(validate_subject("agent..x").is_err());
        assert!(validate_subject("agent.x.").is_err());
        assert!(validate_subject("agent x").is_err());
        assert!(validate_subject("").is_err());
    }

    #[test]
    fn the_fast_path_accepts_only_subjects_the_full_check_accepts() {
        // Every string of up to four bytes over an alphabet with each kind of byte that
        // matters: a token byte, the separator, both wildcards, space, a control byte, DEL
        // and a non-ASCII byte.
        let alphabet = [b'a', b'.', b'*', b'>', b' ', 0x01, 0x7f, 0xc3];
        let mut strings = Vec::new();
        let mut shorter: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..4 {
            shorter = shorter
                .iter()
                .flat_map(|s| alphabet.iter().map(move |&b| [s.as_slice(), &[b]].concat()))
                .collect();
            strings.extend(shorter.iter().cloned());
        }
        for bytes in strings {
            if plainly_valid(&bytes) {
                let text = std::str::from_utf8(&bytes).expect("the fast path takes ASCII only");
                let full = check_full(text, false);
                assert!(full.is_ok(), "fast path accepted {text:?}: {full:?}");
            }
        }
        // A long inbox, as async-nats makes them, takes the fast path.
        assert!(plainly_valid(
            b"_INBOX.sO2WeZlmvoqsK2DsOQp2bT.Gx8rP3kqZ1sO2WeZlmvoqsK2"
        ));
    }

    #[test]
    fn patterns_allow_whole_token_wildcards_with_gt_last() {
        assert!(validate_pattern("agent.*.>").is_ok());
        assert!(validate_pattern("agent.>.x").is_err());
        assert!(validate_pattern("agent.a*").is_err());
    }

    #[test]
    fn agent_ids_are_canonical_uuids_and_nothing_else() {
        assert!(validate_agent_id("01936f11-4ea2-7000-8000-000000000001").is_ok());
        for bad in [
            "",
            "01936F11-4EA2-7000-8000-000000000001",
            "01936f114ea270008000000000000001",
            "{01936f11-4ea2-7000-8000-000000000001}",
            "01936f11-4ea2-7000-8000-000000000001.command.x",
            "x.01936f11-4ea2-7000-8000-000000000001",
            "*",
        ] {
            assert!(validate_agent_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_single_lower_case_tokens() {
        assert!(validate_name("ddd-expert").is_ok());
        assert!(validate_name("Sage").is_err());
        assert!(validate_name("a.b").is_err());
        assert!(validate_name("").is_err());
    }
}
