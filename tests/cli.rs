//! What an operator does with the `host` command against a real node process.

mod support;

use support::{host_bin, plugin, stderr, stdout, NodeProcess};

#[test]
fn an_operator_loads_an_agent_sends_to_it_lists_and_unloads_it() {
    let node = NodeProcess::start("");
    let echo = plugin("echo");

    let out = node.host(&["load", echo.to_str().unwrap()]);
    assert!(out.status.success(), "load failed: {}", stderr(&out));
    assert!(
        stdout(&out).contains("loaded 'echo' v0.1.0 as default.echo."),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("subscribed to agent.to.echo.>"),
        "{}",
        stdout(&out)
    );

    let out = node.host(&["send", "agent.to.echo.hello", "hi there", "--wait", "5"]);
    assert!(out.status.success(), "send failed: {}", stderr(&out));
    assert_eq!(stdout(&out), "hi there\n");

    let out = node.host(&["list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "echo");
    assert_eq!(list[0]["cluster"], "default");
    assert_eq!(list[0]["state"], "running");
    assert_eq!(list[0]["handled"], 1);
    let id = list[0]["id"].as_str().unwrap();
    assert_eq!(
        uuid::Uuid::parse_str(id).unwrap().get_version_num(),
        7,
        "generated ids are UUID v7"
    );

    let out = node.host(&["list"]);
    assert!(stdout(&out).contains("echo"), "{}", stdout(&out));

    let out = node.host(&["status", "echo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("state      running"), "{text}");
    assert!(text.contains("listens    agent.to.echo.>"), "{text}");

    let out = node.host(&["unload", "echo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = node.host(&["status", "echo"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no agent named 'echo'"),
        "{}",
        stderr(&out)
    );

    let log = node.log_text();
    assert!(log.contains("Agent 'echo' v0.1.0 is ready"), "{log}");
    assert!(node.stop().success());
}

#[test]
fn counter_state_survives_a_node_restart() {
    let node = NodeProcess::start("");
    let counter = plugin("counter");
    let out = node.host(&["load", counter.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for n in [5, 7] {
        let out = node.host(&[
            "send",
            "agent.to.counter.cmd",
            &format!("add {n}"),
            "--wait",
            "5",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = node.host(&["send", "agent.to.counter.cmd", "get", "--wait", "5"]);
    assert_eq!(stdout(&out), "12\n");
    let list: serde_json::Value =
        serde_json::from_slice(&node.host(&["list", "--json"]).stdout).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_string();

    // Same data dir, same agent id (pinned in a manifest): the count comes back.
    let manifest = node.dir.path().join("counter.toml");
    std::fs::write(
        &manifest,
        format!("[agent]\nname = \"counter\"\nid = \"{id}\"\n"),
    )
    .unwrap();
    let node = node.restart();
    let out = node.host(&[
        "load",
        counter.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = node.host(&["send", "agent.to.counter.cmd", "get", "--wait", "5"]);
    assert_eq!(stdout(&out), "12\n", "{}", stderr(&out));
    assert!(node.stop().success());
}

#[test]
fn the_node_log_shows_agent_output_and_denied_calls_and_the_socket_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let node = NodeProcess::start("");
    let mode = std::fs::metadata(&node.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "control socket is owner-only");
    let out = node.host(&["load", plugin("probe").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = node.host(&[
        "send",
        "agent.to.probe.cmd",
        "print hello from wasm",
        "--wait",
        "5",
    ]);
    assert_eq!(stdout(&out), "printed\n", "{}", stderr(&out));
    let out = node.host(&[
        "send",
        "agent.to.probe.cmd",
        "publish agent.secret.x boo",
        "--wait",
        "5",
    ]);
    assert!(
        stdout(&out).starts_with("error: denied:"),
        "{}",
        stdout(&out)
    );
    let out = node.host(&["status", "probe", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["agent"]["denied"], 1);
    let log = node.log_text();
    assert!(
        log.contains("hello from wasm") && log.contains("stdout"),
        "{log}"
    );
    assert!(log.contains("to stderr: hello from wasm"), "{log}");
    assert!(
        log.contains("denied: agent 'probe' may not publish to 'agent.secret.x'"),
        "{log}"
    );
    assert!(node.stop().success());
}

#[test]
fn send_with_wait_to_a_subject_nobody_serves_fails_with_a_clear_error() {
    let node = NodeProcess::start("");
    let out = node.host(&["send", "agent.to.nobody.hello", "x", "--wait", "0.5"]);
    assert!(!out.status.success(), "must exit non-zero");
    assert!(
        stderr(&out).contains("agent.to.nobody.hello"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("no agent listens") || stderr(&out).contains("no reply"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn send_with_wait_to_an_agent_that_never_replies_times_out() {
    let node = NodeProcess::start("");
    let counter = plugin("counter");
    assert!(node
        .host(&["load", counter.to_str().unwrap()])
        .status
        .success());
    // counter rejects an unknown command without replying
    let out = node.host(&["send", "agent.to.counter.cmd", "bogus", "--wait", "0.5"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no reply on 'agent.to.counter.cmd' within 0.5 s"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn client_verbs_say_no_node_runs_when_the_socket_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nothing.sock");
    for args in [
        vec!["list"],
        vec!["status", "x"],
        vec!["unload", "x"],
        vec!["send", "a.b", "x"],
    ] {
        let out = std::process::Command::new(host_bin())
            .args(&args)
            .arg("--control")
            .arg(&socket)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains("no node is running at"), "{args:?}: {err}");
        assert!(
            err.contains("host run"),
            "{args:?} says how to start one: {err}"
        );
    }
}

#[test]
fn loading_bad_files_gives_clear_errors_and_leaves_the_node_serving() {
    let node = NodeProcess::start("");
    let echo = plugin("echo");
    assert!(node
        .host(&["load", echo.to_str().unwrap()])
        .status
        .success());
    let dir = node.dir.path();

    let missing = dir.join("missing.wasm");
    let out = node.host(&["load", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not a file"), "{}", stderr(&out));

    let text = dir.join("notes.wasm");
    std::fs::write(&text, "hello, I am not wasm").unwrap();
    let out = node.host(&["load", text.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not a WebAssembly component"),
        "{}",
        stderr(&out)
    );

    let core = dir.join("core.wasm");
    std::fs::write(&core, wat::parse_str("(module)").unwrap()).unwrap();
    let out = node.host(&["load", core.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("core WebAssembly module, not a component"),
        "{}",
        stderr(&out)
    );

    let other = dir.join("other.wasm");
    let other_world = r#"(component
        (core module $m (func (export "run") (result i32) i32.const 0))
        (core instance $i (instantiate $m))
        (func $run (result u32) (canon lift (core func $i "run")))
        (export "run" (func $run)))"#;
    std::fs::write(&other, wat::parse_str(other_world).unwrap()).unwrap();
    let out = node.host(&["load", other.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not implement the agent:host/agent world"),
        "{}",
        stderr(&out)
    );

    let out = node.host(&["send", "agent.to.echo.x", "still here", "--wait", "5"]);
    assert_eq!(
        stdout(&out),
        "still here\n",
        "echo keeps serving: {}",
        stderr(&out)
    );
    let list: serde_json::Value =
        serde_json::from_slice(&node.host(&["list", "--json"]).stdout).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "no half-loaded agent is left behind"
    );
}

#[test]
fn check_validates_a_manifest_and_component_and_prints_the_grants() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("sage.toml");
    std::fs::write(
        &manifest,
        r#"
[agent]
name = "sage"
cluster = "orchestration"
[messaging]
publish = ["agent.broadcast.status"]
send = ["ddd-expert"]
[llm]
models = ["llama3.2:1b"]
[config]
system_prompt = "You are wise"
"#,
    )
    .unwrap();
    let out = std::process::Command::new(host_bin())
        .args([
            "check",
            manifest.to_str().unwrap(),
            plugin("echo").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("valid manifest"), "{text}");
    assert!(text.contains("agent:host/agent world"), "{text}");
    assert!(text.contains("agent.broadcast.status"), "{text}");
    assert!(text.contains("ddd-expert"), "{text}");
    assert!(text.contains("llama3.2:1b"), "{text}");
}

#[test]
fn check_rejects_bad_manifests_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown.toml",
            "[agent]\nname = \"a\"\ncolour = \"red\"\n",
            "colour",
        ),
        (
            "type.toml",
            "[agent]\nname = \"a\"\n[limits]\ncpu_ms_per_message = \"fast\"\n",
            "cpu_ms_per_message",
        ),
        (
            "reserved.toml",
            "[agent]\nname = \"a\"\ncluster = \"to\"\n",
            "agent.cluster",
        ),
        (
            "broadcast.toml",
            "[agent]\nname = \"a\"\ncluster = \"broadcast\"\n",
            "reserved",
        ),
        (
            "pattern.toml",
            "[agent]\nname = \"a\"\n[messaging]\npublish = [\"agent.>.x\"]\n",
            "messaging.publish[0]",
        ),
    ];
    for (file, text, expected) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(host_bin())
            .args(["check", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{file} must be rejected");
        let err = stderr(&out);
        assert!(err.contains(file), "{file}: error names the file: {err}");
        assert!(
            err.contains(expected),
            "{file}: error mentions {expected}: {err}"
        );
    }
}

#[test]
fn every_verb_has_help() {
    for verb in [
        "run", "load", "list", "status", "unload", "send", "check", "upgrade", "rollback",
        "promote",
    ] {
        let out = std::process::Command::new(host_bin())
            .args([verb, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{verb} --help");
        assert!(
            stdout(&out).contains("Usage: host"),
            "{verb}: {}",
            stdout(&out)
        );
    }
}

#[test]
fn an_operator_upgrades_rolls_back_and_promotes_from_the_command_line() {
    let node = NodeProcess::start("");
    let (v1, v2) = (plugin("counter"), plugin("counter_v2"));
    assert!(node.host(&["load", v1.to_str().unwrap()]).status.success());
    node.host(&["send", "agent.to.counter.cmd", "add 10", "--wait", "5"]);

    let out = node.host(&["upgrade", "counter", v2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("upgraded 'counter' v0.1.0 -> v0.2.0"),
        "{}",
        stdout(&out)
    );
    let out = node.host(&["send", "agent.to.counter.cmd", "stats", "--wait", "5"]);
    assert_eq!(stdout(&out), "count=10 adds=0 version=0.2.0\n");
    let status = stdout(&node.host(&["status", "counter"]));
    assert!(
        status.contains("version    0.2.0") && status.contains("warm       v0.1.0"),
        "{status}"
    );
    assert!(
        status.contains("event      upgraded v0.1.0 → v0.2.0"),
        "{status}"
    );

    let out = node.host(&["rollback", "counter"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("rolled back 'counter' v0.2.0 -> v0.1.0"),
        "{}",
        stdout(&out)
    );

    assert!(node
        .host(&["upgrade", "counter", v2.to_str().unwrap()])
        .status
        .success());
    let out = node.host(&["promote", "counter"]);
    assert!(
        stdout(&out).contains("v0.1.0 retired (promoted)"),
        "{}",
        stdout(&out)
    );
    let out = node.host(&["rollback", "counter"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no previous version kept warm"),
        "{}",
        stderr(&out)
    );

    let out = node.host(&[
        "upgrade",
        "counter",
        plugin("counter_broken").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("aborted"), "{}", stderr(&out));
    let out = node.host(&["send", "agent.to.counter.cmd", "get", "--wait", "5"]);
    assert_eq!(stdout(&out), "10\n", "v0.2.0 still serves the same state");
    let log = node.log_text();
    assert!(
        log.contains("upgraded v0.1.0 → v0.2.0") && log.contains("rolled back v0.2.0 → v0.1.0"),
        "{log}"
    );
    assert!(node.stop().success());
}

#[test]
fn an_operator_runs_a_canary_and_waves_from_the_command_line() {
    let node = NodeProcess::start("");
    let (v1, v2) = (plugin("counter"), plugin("counter_v2"));
    assert!(node.host(&["load", v1.to_str().unwrap()]).status.success());
    node.host(&["send", "agent.to.counter.cmd", "add 10", "--wait", "5"]);

    let out = node.host(&[
        "upgrade",
        "counter",
        v2.to_str().unwrap(),
        "--strategy",
        "canary",
        "--steps",
        "25,100",
        "--interval",
        "1h",
        "--gate",
        "error_rate<5%",
        "--gate",
        "p95<2x",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out)
            .contains("canary of 'counter' started: v0.1.0 -> v0.2.0 on 25% of conversations"),
        "{}",
        stdout(&out)
    );
    for c in 0..8 {
        let out = node.host(&[
            "send",
            "agent.to.counter.cmd",
            "add 1",
            "--header",
            &format!("Conversation-Id=c-{c}"),
            "--wait",
            "5",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let status = stdout(&node.host(&["status", "counter"]));
    assert!(
        status.contains("strategy   canary v0.1.0 -> v0.2.0: 25% of conversations on v0.2.0")
            && status.contains("messages on v0.1.0")
            && status.contains("event      canary v0.1.0 → v0.2.0 started"),
        "{status}"
    );
    let out = node.host(&["promote", "counter"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = node.host(&["send", "agent.to.counter.cmd", "stats", "--wait", "5"]);
    assert_eq!(stdout(&out), "count=18 adds=0 version=0.2.0\n");

    // A bad flag is named with the form it should have had; nothing reaches the node.
    let out = node.host(&[
        "upgrade",
        "counter",
        v1.to_str().unwrap(),
        "--strategy",
        "canary",
        "--steps",
        "10,50",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .contains("--steps 10,50: the last step must be 100; expected rising percentages"),
        "{}",
        stderr(&out)
    );

    let out = node.host(&[
        "upgrade",
        "--component",
        "counter",
        v1.to_str().unwrap(),
        "--waves",
        "100",
        "--interval",
        "200ms",
    ]);
    assert!(!out.status.success(), "counter now runs counter_v2.wasm");
    assert!(
        stderr(&out).contains("no agent runs that component")
            && stderr(&out).contains("counter_v2 ("),
        "{}",
        stderr(&out)
    );
    let out = node.host(&[
        "upgrade",
        "--component",
        "counter_v2",
        v1.to_str().unwrap(),
        "--waves",
        "100",
        "--interval",
        "200ms",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("wave 100%: counter upgraded, gates passed")
            && stdout(&out).contains("component 'counter_v2' upgraded on 1 agent(s) in 1 wave(s)"),
        "{}",
        stdout(&out)
    );
    assert!(node.stop().success());
}
