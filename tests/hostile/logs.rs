//! The node's log and the operator's terminal: an agent cannot flood the log (denied calls
//! are logged as a sample, its own lines are bounded by `[limits] log_lines_per_second`),
//! forge a log line, or drive the terminal of whoever reads the log or runs `host status`,
//! `host list` or `host load` — whatever text it writes, returns or fails with.
//!
//! Each test runs a real `host run` process whose stderr (its log) goes to a file, and the
//! real `host` client verbs.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use super::{has, lacks, ATTACK, HOSTILE, MACHINE};
use crate::support::{plugin, stderr, stdout, NodeProcess};

/// A million denied calls, one message: ~6 s of CPU in a debug build (2-core machine).
const DENIALS: u64 = 1_000_000;

/// `hostile` with a CPU budget that lets a million denied calls finish even on a busy
/// machine, and a log rate of 50 lines a second.
fn logger() -> String {
    HOSTILE
        .replace("cpu_ms_per_message = 50", "cpu_ms_per_message = 60000")
        .replace(
            "publish_per_second = 100\n",
            "publish_per_second = 100\nlog_lines_per_second = 50\n",
        )
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

/// The node's Prometheus metrics, from the address its log announces.
fn metrics(node: &NodeProcess) -> String {
    let log = node.log_text();
    let url = log
        .split("http://")
        .find_map(|s| s.split_once("/metrics").map(|(addr, _)| addr))
        .expect("the node logs where its metrics are");
    let mut stream = std::net::TcpStream::connect(url).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {url}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
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

/// The number in `line` just before `marker` (41 in "(41 more denied calls").
fn number_before(line: &str, marker: &str) -> u64 {
    let head = &line[..line
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} in {line}"))];
    let digits: String = head
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    let digits: String = digits.chars().rev().collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("a number before {marker:?} in {line}"))
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

#[test]
fn a_denial_flood_is_counted_in_full_but_logged_as_a_sample() {
    let _shared = MACHINE.blocking_read();
    let node = node_with_logger();
    let started = Instant::now();
    let reply = ask(&node, &format!("deny-flood {DENIALS}"), 120);
    assert_eq!(
        reply.trim(),
        format!("deny-flood: {DENIALS} of {DENIALS} denied")
    );
    // One more, over a second later: its line says how many were not logged before it.
    std::thread::sleep(Duration::from_millis(1100));
    has(&ask(&node, "forbidden agent.secret.last", 5), &["denied"]);
    let seconds = started.elapsed().as_secs();
    let all = DENIALS + 1;

    let status = stdout(&node.host(&["status", "hostile"]));
    has(&status, &[&format!("{all} denied calls")]);
    has(
        &metrics(&node),
        &[&format!(
            "agent_host_denied_calls_total{{agent=\"hostile\",cluster=\"default\"}} {all}"
        )],
    );

    let log = node.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("denied: agent 'hostile' may not publish"))
        .collect();
    assert!(
        lines.len() >= 2 && lines.len() as u64 <= seconds + 1,
        "{} lines for {all} denials in {seconds} s: the first, then one a second at most:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        !lines[0].contains("not logged"),
        "the first as it is: {}",
        lines[0]
    );
    let last = lines.last().unwrap();
    has(last, &["agent.secret.last", &format!("; {all} in all")]);
    let unlogged: u64 = lines[1..]
        .iter()
        .map(|l| {
            number_before(
                l,
                " more denied calls since the previous line were not logged",
            )
        })
        .sum();
    assert_eq!(
        unlogged + lines.len() as u64,
        all,
        "each line says how many were not logged since the previous one:\n{}",
        lines.join("\n")
    );
    assert!(node.stop().success());
}

#[test]
fn an_agents_log_flood_is_bounded_and_counted_as_log_rate() {
    let _shared = MACHINE.blocking_read();
    let node = node_with_logger();
    let (said, printed) = (5_000u64, 1_000u64);
    let started = Instant::now();
    assert_eq!(
        ask(&node, &format!("say {said}"), 30).trim(),
        "say: wrote 5000 lines"
    );
    // One stdout write of many lines: each line counts.
    let many = "printed-line\n".repeat(printed as usize - 1) + "printed-line";
    assert_eq!(ask(&node, &format!("print {many}"), 30).trim(), "printed");
    let seconds = started.elapsed().as_secs() + 1;

    let log = node.log_text();
    let logged_say = log
        .lines()
        .filter(|l| l.contains(" INFO say ") && l.ends_with(" agent=hostile"))
        .count() as u64;
    let logged_print = log
        .lines()
        .filter(|l| l.contains(" INFO printed-line agent=hostile stream=\"stdout\""))
        .count() as u64;
    let logged = logged_say + logged_print;
    assert!(
        logged >= 50 && logged <= 50 + 50 * seconds,
        "one second's worth (50) and what the rate refilled in {seconds} s: {logged_say} + {logged_print}"
    );
    let dropped = said + printed - logged;
    has(
        &stdout(&node.host(&["status", "hostile"])),
        &[&format!(", {dropped} log lines over the log rate")],
    );
    has(
        &metrics(&node),
        &[&format!(
            "agent_host_limit_hits_total{{agent=\"hostile\",cluster=\"default\",limit=\"log_rate\"}} {dropped}"
        )],
    );
    let notes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("log lines dropped: agent 'hostile' writes more than 50 lines per second ([limits] log_lines_per_second)"))
        .collect();
    assert!(
        !notes.is_empty() && notes.len() as u64 <= seconds,
        "the first drop at once, then a note a second at most ({seconds} s):\n{}",
        notes.join("\n")
    );
    has(notes[0], &["; 1 dropped since the previous note, 1 in all"]);
    assert!(node.stop().success());
}

#[test]
fn texts_an_agent_controls_reach_the_operators_terminal_escaped() {
    let _shared = MACHINE.blocking_read();
    let node = node_with_logger();
    let attack = "bad\x1b[2J\u{9b}31m\u{202e}news\nfake";
    let sent = node.host(&["send", ATTACK, &format!("fail {attack}")]);
    assert!(sent.status.success(), "{}", stderr(&sent));
    let escaped = "bad\\u{1b}[2J\\u{9b}31m\\u{202e}news\\nfake";

    // `host status`: the agent's last error, escaped, on one line.
    let mut status = stdout(&node.host(&["status", "hostile"]));
    for _ in 0..100 {
        if status.contains("last error") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        status = stdout(&node.host(&["status", "hostile"]));
    }
    no_raw_controls("host status", &status);
    has(
        &status,
        &[&format!("last error handle {ATTACK}: {escaped}\n")],
    );

    // `host list --json` / `host status --json`: still JSON, nothing raw in it.
    for verb in [&["list", "--json"][..], &["status", "hostile", "--json"]] {
        let json = stdout(&node.host(verb));
        no_raw_controls(&verb.join(" "), &json);
        has(&json, &["bad\\u001b[2J\\u009b31m\\u202enews\\nfake"]);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let error = value
            .pointer("/0/last_error")
            .or(value.pointer("/agent/last_error"));
        let expected = format!("handle {ATTACK}: {attack}");
        assert_eq!(
            error.and_then(|e| e.as_str()),
            Some(expected.as_str()),
            "{verb:?}: the same values"
        );
    }
    let list = stdout(&node.host(&["list"]));
    no_raw_controls("host list", &list);
    has(&list, &["hostile"]);

    // A failed `host load`: the init error is the agent's text.
    let manifest = node.dir.path().join("broken.toml");
    let broken = logger().replace("name = \"hostile\"", "name = \"broken\"")
        + "[config]\ninit = \"fail \\u001b]0;owned\\u0007 init refused\\r\"\n";
    std::fs::write(&manifest, broken).unwrap();
    let load = node.host(&[
        "load",
        plugin("hostile").to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ]);
    assert!(!load.status.success(), "the load is refused");
    assert!(!load.stderr.contains(&0x1b) && !load.stdout.contains(&0x1b));
    let err = stderr(&load);
    no_raw_controls("host load's error", &err);
    has(
        &err,
        &[
            "init of agent 'broken' failed",
            "\\u{1b}]0;owned\\u{7} init refused\\r",
        ],
    );
    lacks(&node.log_text(), &["\x1b"]);
    assert!(node.stop().success());
}
