//! The node's log: whatever text an agent writes, it cannot forge a log line or put a
//! terminal escape into the log.
//!
//! Each test runs a real `host run` process whose stderr (its log) goes to a file, and the
//! real `host` client verbs.

use super::{has, ATTACK, HOSTILE, MACHINE};
use crate::support::{plugin, stderr, stdout, NodeProcess};

/// `hostile` as tests/hostile.rs loads it.
fn logger() -> String {
    HOSTILE.to_string()
}

/// A `host run` process (its log in a file, /metrics on a free port) with `hostile`
/// loaded from [`logger`].
fn node_with_logger() -> NodeProcess {
    let node = NodeProcess::start("");
    let path = node.dir.path().join("hostile.toml");
    std::fs::write(&path, logger()).unwrap();
    let load = node.host(&[
        "load",
        plugin("hostile").to_str().unwrap(),
        "--manifest",
        path.to_str().unwrap(),
    ]);
    assert!(load.status.success(), "{}", stderr(&load));
    node
}

/// Sends `text` to the hostile agent and returns its reply (it must reply within `secs`).
fn ask(node: &NodeProcess, text: &str, secs: u64) -> String {
    let out = node.host(&["send", ATTACK, text, "--wait", &secs.to_string()]);
    assert!(out.status.success(), "{text:?}: {}", stderr(&out));
    stdout(&out)
}

/// Asserts that no character that drives a terminal or breaks a line is in `text` raw,
/// but line breaks.
fn no_raw_controls(what: &str, text: &str) {
    let raw: Vec<char> = text
        .chars()
        .filter(|c| agent_host::escape::is_hazard(*c) && *c != '\n')
        .collect();
    assert!(raw.is_empty(), "{what} has raw {raw:?}:\n{text}");
}

#[test]
fn agent_text_cannot_forge_a_log_line_or_put_terminal_escapes_in_the_log() {
    let _shared = MACHINE.blocking_read();
    let node = node_with_logger();
    let forged = "1999-12-31T23:59:59.000000Z  INFO all is well agent=echo";
    let text = format!("hello\n{forged}\r\x1b[2J\u{9b}31m\u{202e}reversed");
    assert_eq!(
        ask(&node, &format!("log {text}"), 5).trim_end(),
        format!("logged {text}"),
        "piped, a reply's payload is printed byte for byte"
    );
    ask(&node, "print stdout\x1b]0;owned\x07 text\rover", 5);

    let bytes = std::fs::read(&node.log).unwrap();
    assert!(!bytes.contains(&0x1b), "no raw ESC in the log");
    assert!(!bytes.contains(&b'\r'), "no raw carriage return in the log");
    let log = String::from_utf8(bytes).unwrap();
    no_raw_controls("the log", &log);
    assert!(
        !log.lines().any(|l| l.starts_with("1999-12-31")),
        "a forged line:\n{log}"
    );
    has(
        &log,
        &[
            &format!(
                "INFO hello\\n{forged}\\r\\u{{1b}}[2J\\u{{9b}}31m\\u{{202e}}reversed agent=hostile"
            ),
            "INFO stdout\\u{1b}]0;owned\\u{7} text\\rover agent=hostile stream=\"stdout\"",
        ],
    );
    assert!(node.stop().success());
}
