//! The properties the fuzz targets in `host/fuzz` check, kept here so the normal test suite
//! replays every input a fuzzer ever found (`host/fuzz/regressions/`) through exactly the
//! same checks. Each function panics when the property breaks, which is what a fuzzer
//! reports as a crash.

use crate::bus::Routes;
use crate::config::NodeConfig;
use crate::manifest::Manifest;
use crate::subjects::{matches, validate_pattern, validate_subject};

/// Any text given as a manifest parses or is refused with an error that says something; a
/// manifest that parses can be described and asked about its grants.
pub fn check_manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Manifest::parse(text, None) {
        Ok(manifest) => {
            let _ = manifest.describe();
            let _ = manifest.agent_ref();
            let _ = manifest.messaging.allows_publish("agent.to.other.task");
            let _ = manifest.messaging.allows_send_to("other");
            let _ = manifest.llm.allows_model("llama3.2:1b");
        }
        Err(e) => assert!(
            !e.to_string().is_empty(),
            "an error must say what was wrong"
        ),
    }
}

/// Any text given as a node config parses or is refused with an error that says something.
pub fn check_node_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = NodeConfig::parse(text, None, &|_| None) {
        assert!(
            !e.to_string().is_empty(),
            "an error must say what was wrong"
        );
    }
}

/// Subject matching three ways agrees: [`matches`], the bus's subscription index
/// ([`Routes`], what the embedded bus delivers by) and [`reference_match`]. Input: lines;
/// all but the last are subscription patterns, the last is the subject published to.
/// Removing every subscription again leaves the index empty.
pub fn check_subjects(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines: Vec<&str> = text.split('\n').collect();
    let subject = lines.pop().unwrap_or_default();
    let patterns: Vec<&str> = lines
        .into_iter()
        .take(64)
        .filter(|p| validate_pattern(p).is_ok())
        .collect();
    let mut routes = Routes::default();
    for (id, pattern) in patterns.iter().enumerate() {
        routes.insert(pattern, id as u64, ());
    }
    assert_eq!(routes.len(), patterns.len());
    if validate_subject(subject).is_ok() {
        let mut delivered = Vec::new();
        routes.for_each_match(subject, |id, _| delivered.push(id as usize));
        delivered.sort_unstable();
        let expected: Vec<usize> = (0..patterns.len())
            .filter(|&i| reference_match(patterns[i], subject))
            .collect();
        let by_matches: Vec<usize> = (0..patterns.len())
            .filter(|&i| matches(patterns[i], subject))
            .collect();
        assert_eq!(
            by_matches, expected,
            "subjects::matches disagrees on {subject:?}"
        );
        assert_eq!(
            delivered, expected,
            "the bus index disagrees on {subject:?}"
        );
    }
    for (id, pattern) in patterns.iter().enumerate() {
        assert!(
            routes.remove(pattern, id as u64),
            "{pattern:?} was inserted"
        );
    }
    assert!(
        routes.is_empty(),
        "removing every subscription leaves nothing behind"
    );
}

/// The NATS rule stated directly on token lists: `*` is exactly one token, a final `>` one
/// or more; written independently of [`matches`] so the two can check each other.
pub fn reference_match(pattern: &str, subject: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let s: Vec<&str> = subject.split('.').collect();
    let token_ok = |(pt, st): (&&str, &&str)| *pt == "*" || pt == st;
    if p.last() == Some(&">") {
        let head = &p[..p.len() - 1];
        s.len() > head.len() && head.iter().zip(&s).all(token_ok)
    } else {
        p.len() == s.len() && p.iter().zip(&s).all(token_ok)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Every file under `host/fuzz/{dir}/{target}`: the seeds and the inputs that once
    /// crashed a target (`regressions`).
    fn inputs(target: &str) -> Vec<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut files = Vec::new();
        for dir in ["seeds", "regressions"] {
            if let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) {
                files.extend(entries.map(|e| e.expect("a readable directory entry").path()));
            }
        }
        files.sort();
        files
    }

    fn replay(target: &str, check: fn(&[u8])) {
        let files = inputs(target);
        assert!(
            !files.is_empty(),
            "no seeds or regressions for the {target} fuzz target"
        );
        for file in files {
            let data = std::fs::read(&file).expect("a readable input");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(
                outcome.is_ok(),
                "{} breaks the {target} check",
                file.display()
            );
        }
    }

    #[test]
    fn every_manifest_a_fuzzer_found_is_parsed_or_refused_without_a_panic() {
        replay("manifest", super::check_manifest);
    }

    #[test]
    fn every_node_config_a_fuzzer_found_is_parsed_or_refused_without_a_panic() {
        replay("node_config", super::check_node_config);
    }

    #[test]
    fn every_subject_set_a_fuzzer_found_matches_the_same_way_in_the_index_and_the_rule() {
        replay("subjects", super::check_subjects);
    }

    #[test]
    fn the_reference_rule_is_the_nats_rule() {
        use super::reference_match as m;
        assert!(m("agent.*.x", "agent.a.x"));
        assert!(!m("agent.*.x", "agent.a.b.x"));
        assert!(m("agent.>", "agent.a.b"));
        assert!(!m("agent.>", "agent"));
        assert!(m("a.b", "a.b"));
        assert!(!m("a.b", "a.b.c"));
    }
}
