//! Node config rules: defaults, path resolution, bad input (env overrides: env_tests.rs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
    NodeConfig::parse(text, Some(Path::new("configs/node.toml")), &no_env)
}

fn error_of(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn no_file_means_the_documented_defaults() {
    let c = NodeConfig::load_with_env(None, &no_env).unwrap();
    assert_eq!(c, NodeConfig::default());
    assert_eq!(c.source, None);
    assert_eq!(c.node.name, "node");
    assert_eq!(c.node.data_dir, PathBuf::from("./data"));
    assert!(!c.node.unified_subjects);
    assert_eq!(c.node.snapshot_every, 100);
    assert_eq!(c.node.max_traps_per_message, 3);
    assert_eq!(c.node.dedup_window, 1024);
    assert_eq!(c.node.mailbox_capacity, 4096);
    assert_eq!(c.control.socket, None);
    assert_eq!(c.control_socket(), PathBuf::from("./data/host.sock"));
    assert_eq!(
        c.http.listen,
        Some("127.0.0.1:9464".parse::<SocketAddr>().unwrap())
    );
    assert_eq!(
        c.engine,
        EngineSection {
            max_agents: 1000,
            max_memory: 64 << 20,
            epoch_tick_ms: 10,
            max_component_bytes: 128 << 20
        }
    );
    assert_eq!(
        c.defaults,
        DefaultLimits {
            memory: 64 << 20,
            cpu_ms_per_message: 200,
            max_message_bytes: 1 << 20,
            host_call_timeout_ms: 30_000,
            files_max_bytes: 64 << 20,
            publish_per_second: 1000,
            log_lines_per_second: 100,
            counts: crate::agent::limits::InstanceCounts::default(),
            init_timeout_ms: 10_000,
            handoff_timeout_ms: 1_000,
        }
    );
    assert_eq!(c.llm, LlmSection::default());
    assert_eq!(c.llm.ollama_url, "http://127.0.0.1:11434");
    assert_eq!(c.llm.num_parallel, 2);
    assert_eq!(c.llm.queue_capacity, 64);
    assert_eq!(
        c.llm.timeout_ms, None,
        "falls back to defaults.host_call_timeout_ms"
    );
    assert!(c.llm.backends.is_empty());
    assert_eq!(
        c.nats,
        NatsSection {
            url: None,
            stream_name: "AGENT_MESSAGES".into(),
            kv_bucket: "AGENT_KV".into(),
            kv_replicas: 1,
            stream_replicas: 1,
            credentials_file: None,
            connect_timeout_ms: 5000,
            ack_wait_ms: 30_000,
            max_deliver: 5,
            retry_backoff_ms: 1000,
            duplicate_window_secs: 120,
            max_ack_pending: 64,
            stream_max_age_secs: 604_800,
            subscription_capacity: 65_536,
            request_pairing_wait_ms: 500,
        }
    );
    assert!(c.agents.is_empty());
}

#[test]
fn an_empty_file_is_all_defaults_with_data_next_to_the_file() {
    let c = parse("").unwrap();
    assert_eq!(c.source, Some(PathBuf::from("configs/node.toml")));
    assert_eq!(c.node.data_dir, PathBuf::from("configs/data"));
    assert_eq!(c.control_socket(), PathBuf::from("configs/data/host.sock"));
    assert_eq!(c.engine, EngineSection::default());
}

#[test]
fn a_full_file_reads_every_section() {
    let c = parse(
        r#"
[node]
name = "node-1"
data_dir = "/var/lib/agents"
unified_subjects = true
snapshot_every = 0
max_traps_per_message = 5
dedup_window = 64
mailbox_capacity = 16
[control]
socket = "run/ctl.sock"
[http]
listen = "0.0.0.0:9000"
[engine]
max_agents = 10
max_memory = "128MiB"
epoch_tick_ms = 5
max_component_bytes = "32MiB"
[defaults]
memory = "32MiB"
cpu_ms_per_message = 50
max_message_bytes = "256KiB"
host_call_timeout_ms = 1000
[llm]
ollama_url = "http://gpu:11434"
num_parallel = 4
[nats]
url = "nats://bus:4222"
stream_name = "MSGS"
kv_bucket = "FLEET_KV"
kv_replicas = 3
stream_replicas = 3
credentials_file = "/etc/agent-host/node.creds"
connect_timeout_ms = 1500
ack_wait_ms = 10000
max_deliver = 7
retry_backoff_ms = 250
duplicate_window_secs = 300
max_ack_pending = 8
stream_max_age_secs = 3600
request_pairing_wait_ms = 20
[[agents]]
manifest = "agents/echo.toml"
[[agents]]
manifest = "/etc/agents/sage.toml"
"#,
    )
    .unwrap();
    assert_eq!(c.node.name, "node-1");
    assert_eq!(c.node.data_dir, PathBuf::from("/var/lib/agents"));
    assert!(c.node.unified_subjects);
    assert_eq!(
        (c.node.snapshot_every, c.node.max_traps_per_message),
        (0, 5)
    );
    assert_eq!((c.node.dedup_window, c.node.mailbox_capacity), (64, 16));
    assert_eq!(c.control_socket(), PathBuf::from("configs/run/ctl.sock"));
    assert_eq!(c.http.listen, Some("0.0.0.0:9000".parse().unwrap()));
    assert_eq!(
        c.engine,
        EngineSection {
            max_agents: 10,
            max_memory: 128 << 20,
            epoch_tick_ms: 5,
            max_component_bytes: 32 << 20
        }
    );
    assert_eq!(c.defaults.memory, 32 << 20);
    assert_eq!(c.defaults.max_message_bytes, 256 << 10);
    assert_eq!(c.defaults.host_call_timeout_ms, 1000);
    assert_eq!(c.llm.ollama_url, "http://gpu:11434");
    assert_eq!(c.llm.num_parallel, 4);
    assert_eq!(c.nats.url.as_deref(), Some("nats://bus:4222"));
    assert_eq!(c.nats.stream_name, "MSGS");
    assert_eq!(
        (c.nats.kv_bucket.as_str(), c.nats.kv_replicas),
        ("FLEET_KV", 3)
    );
    assert_eq!(c.nats.stream_replicas, 3);
    assert_eq!(
        c.nats.credentials_file.as_deref(),
        Some(std::path::Path::new("/etc/agent-host/node.creds"))
    );
    assert_eq!(c.nats.connect_timeout_ms, 1500);
    assert_eq!(
        (
            c.nats.ack_wait_ms,
            c.nats.max_deliver,
            c.nats.retry_backoff_ms
        ),
        (10_000, 7, 250)
    );
    assert_eq!(
        (
            c.nats.duplicate_window_secs,
            c.nats.max_ack_pending,
            c.nats.stream_max_age_secs
        ),
        (300, 8, 3600)
    );
    assert_eq!(c.nats.request_pairing_wait_ms, 20);
    let manifests: Vec<_> = c.agents.iter().map(|a| a.manifest.clone()).collect();
    assert_eq!(
        manifests,
        [
            PathBuf::from("configs/agents/echo.toml"),
            PathBuf::from("/etc/agents/sage.toml")
        ]
    );
}

#[test]
fn the_default_pairing_wait_stays_well_inside_a_short_ack_wait() {
    let c = parse("[nats]\nack_wait_ms = 400").unwrap();
    assert_eq!(c.nats.request_pairing_wait_ms, 100);
    let c = parse("[nats]\nack_wait_ms = 400\nrequest_pairing_wait_ms = 300").unwrap();
    assert_eq!(c.nats.request_pairing_wait_ms, 300, "a chosen wait is kept");
    let c = parse("[nats]\nrequest_pairing_wait_ms = 0").unwrap();
    assert_eq!(c.nats.request_pairing_wait_ms, 0);
}

#[test]
fn relative_paths_without_a_file_stay_relative_to_the_cwd() {
    let c = NodeConfig::parse(
        "[node]\ndata_dir = \"state\"\n[[agents]]\nmanifest = \"a.toml\"",
        None,
        &no_env,
    )
    .unwrap();
    assert_eq!(c.node.data_dir, PathBuf::from("state"));
    assert_eq!(c.agents[0].manifest, PathBuf::from("a.toml"));
}

#[test]
fn http_can_be_turned_off() {
    assert_eq!(parse("[http]\nlisten = \"off\"").unwrap().http.listen, None);
    assert_eq!(parse("[http]\nlisten = \"\"").unwrap().http.listen, None);
    let err = error_of("[http]\nlisten = \"localhost:9464\"");
    assert!(
        err.contains("field http.listen: \"localhost:9464\" is not a socket address"),
        "{err}"
    );
    assert!(
        err.contains("expected an IP and port like \"127.0.0.1:9464\", or \"off\""),
        "{err}"
    );
}

#[test]
fn default_memory_may_not_exceed_the_engine_slot() {
    let err = error_of("[engine]\nmax_memory = \"32MiB\"\n[defaults]\nmemory = \"64MiB\"");
    assert_eq!(
        err,
        "config configs/node.toml: field defaults.memory: 64MiB is larger than engine.max_memory (32MiB); expected at most engine.max_memory, or raise engine.max_memory"
    );
}

#[test]
fn ollama_url_accepts_host_port_and_refuses_other_schemes() {
    let c = parse("[llm]\nollama_url = \"gpu:11434/\"").unwrap();
    assert_eq!(c.llm.ollama_url, "http://gpu:11434");
    let err = error_of("[llm]\nollama_url = \"ftp://gpu\"");
    assert!(
        err.contains("field llm.ollama_url: \"ftp://gpu\" has the scheme \"ftp\""),
        "{err}"
    );
}

#[test]
fn bad_values_name_the_field_and_what_is_expected() {
    let cases = [
        ("[node]\nname = \"Node 1\"", "field node.name: 'Node 1' contains"),
        ("[node]\ndata_dir = \"\"", "field node.data_dir: is empty; expected a path"),
        ("[node]\nunified_subjects = \"yes\"", "field node.unified_subjects: expected true or false"),
        ("[node]\nsnapshot_every = -1", "field node.snapshot_every: -1 is negative; expected a whole number like 100"),
        ("[node]\nmax_traps_per_message = 0", "field node.max_traps_per_message: 0 is not allowed"),
        ("[node]\ndedup_window = 0", "field node.dedup_window: 0 is not allowed (a message published on two subjects"),
        ("[node]\nmailbox_capacity = \"big\"", "field node.mailbox_capacity: expected a whole number like 4096, found the string \"big\""),
        ("[control]\nsocket = 5", "field control.socket: expected a string like \"data/host.sock\", found the integer 5"),
        ("[engine]\nmax_agents = 0", "field engine.max_agents: 0 is not allowed"),
        ("[engine]\nmax_memory = \"lots\"", "field engine.max_memory: \"lots\" does not start with a whole number; expected a size like"),
        ("[engine]\nepoch_tick_ms = 0", "field engine.epoch_tick_ms: 0 is not allowed"),
        ("[engine]\nmax_component_bytes = 0", "field engine.max_component_bytes: 0 bytes is not allowed (no component could be loaded)"),
        ("[engine]\nmax_component_bytes = \"huge\"", "field engine.max_component_bytes: \"huge\" does not start with a whole number; expected a size like"),
        ("[nats]\nack_wait_ms = 1000\nrequest_pairing_wait_ms = 1000", "field nats.request_pairing_wait_ms: 1000 ms is not shorter than ack_wait_ms (1000 ms)"),
        ("[defaults]\ncpu_ms_per_message = 0", "field defaults.cpu_ms_per_message: 0 is not allowed"),
        ("[defaults]\nmax_message_bytes = 0", "field defaults.max_message_bytes: 0 bytes is not allowed"),
        ("[defaults]\nhost_call_timeout_ms = 1.5", "field defaults.host_call_timeout_ms: expected a whole number like 30000"),
        ("[llm]\nnum_parallel = 0", "field llm.num_parallel: 0 is not allowed"),
        ("[nats]\nurl = \"\"", "field nats.url: is empty; expected a URL like \"nats://127.0.0.1:4222\""),
        ("[nats]\nstream_name = \"agent.messages\"", "field nats.stream_name: \"agent.messages\" contains '.'; expected a name like \"AGENT_MESSAGES\""),
        ("[nats]\nkv_bucket = \"agent.kv\"", "field nats.kv_bucket: \"agent.kv\" contains '.'; expected a name like \"AGENT_KV\" (only A-Z a-z 0-9 _ -)"),
        ("[nats]\nkv_replicas = 7", "field nats.kv_replicas: 7 is more than JetStream allows; expected 1 to 5"),
        ("[nats]\nstream_replicas = 6", "field nats.stream_replicas: 6 is more than JetStream allows; expected 1 to 5"),
        ("[nats]\nstream_replicas = 0", "field nats.stream_replicas: 0 is not allowed"),
        ("[nats]\nconnect_timeout_ms = 0", "field nats.connect_timeout_ms: 0 is not allowed"),
        ("[nats]\nmax_deliver = 0", "field nats.max_deliver: 0 is not allowed"),
        ("[nats]\nack_wait_ms = 0", "field nats.ack_wait_ms: 0 is not allowed"),
        ("[[agents]]\nfile = \"a.toml\"", "field agents[0].file: unknown field \"file\" in [agents[0]]; expected one of manifest"),
        ("[[agents]]\nmanifest = \"a.toml\"\n[[agents]]\n", "field agents[1].manifest: missing; add manifest = \"agents/echo.toml\""),
        ("agents = \"a.toml\"", "field agents: expected a list of [[agents]] tables, found the string \"a.toml\""),
        ("[node]\nname = \"n\"\nport = 1", "field node.port: unknown field \"port\" in [node]; expected one of name, data_dir"),
        ("[metrics]\nlisten = \"x\"", "field metrics: unknown top-level field \"metrics\"; expected only the sections [node], [control]"),
    ];
    for (text, expected) in cases {
        let err = error_of(text);
        assert!(
            err.starts_with("config configs/node.toml: "),
            "{text:?}: {err}"
        );
        assert!(
            err.contains(expected),
            "{text:?}:\n  got      {err}\n  expected {expected}"
        );
    }
}

#[test]
fn toml_syntax_errors_name_the_file_and_position() {
    let err = error_of("[node\n");
    assert!(
        err.starts_with("config configs/node.toml: invalid TOML at line 1"),
        "{err}"
    );
}

#[test]
fn unreadable_files_report_the_os_error() {
    let err = NodeConfig::load_with_env(Some(Path::new("/nonexistent/node.toml")), &no_env)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("config /nonexistent/node.toml: cannot read the file"),
        "{err}"
    );
    assert!(err.contains("os error"), "{err}");
}

#[test]
fn a_device_or_an_oversized_file_is_refused_as_a_node_config_before_it_is_read() {
    let err = NodeConfig::load_with_env(Some(Path::new("/dev/zero")), &no_env)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "config /dev/zero: cannot read the file: it is not a regular file (it is a character device); expected a readable TOML node config of at most 1MiB (a config is a few KiB)");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let err = NodeConfig::load_with_env(Some(&path), &no_env)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("it is 2MiB (2097152 bytes), more than the limit of 1MiB"),
        "{err}"
    );
}

#[test]
fn load_reads_the_file_and_resolves_against_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, "[[agents]]\nmanifest = \"agents/echo.toml\"\n").unwrap();
    let c = NodeConfig::load_with_env(Some(&path), &no_env).unwrap();
    assert_eq!(c.source.as_deref(), Some(path.as_path()));
    assert_eq!(c.node.data_dir, dir.path().join("data"));
    assert_eq!(c.agents[0].manifest, dir.path().join("agents/echo.toml"));
}

#[test]
fn llm_backends_route_models_to_openai_compatible_servers() {
    let c = parse(
        r#"
[llm]
num_parallel = 3
queue_capacity = 8
timeout_ms = 60000
connect_timeout_ms = 500
retries = 1
backoff_ms = 50
breaker_failures = 4
breaker_cooldown_ms = 2000
stream = true
idle_timeout_ms = 5000
[[llm.backends]]
name = "vllm"
kind = "openai"
url = "127.0.0.1:8000/"
models = ["qwen2.5:7b", "mistral"]
num_parallel = 8
api_key_env = "VLLM_API_KEY"
"#,
    )
    .unwrap();
    let l = &c.llm;
    assert_eq!(l.ollama_url, DEFAULT_OLLAMA_URL);
    assert_eq!(
        (
            l.num_parallel,
            l.queue_capacity,
            l.timeout_ms,
            l.connect_timeout_ms
        ),
        (3, 8, Some(60_000), 500)
    );
    assert_eq!(
        (
            l.retries,
            l.backoff_ms,
            l.breaker_failures,
            l.breaker_cooldown_ms
        ),
        (1, 50, 4, 2000)
    );
    assert!(l.stream);
    assert_eq!(l.idle_timeout_ms, 5000);
    assert_eq!(
        l.backends,
        vec![BackendEntry {
            name: "vllm".into(),
            kind: BackendKind::OpenAi,
            url: "http://127.0.0.1:8000".into(),
            models: vec!["qwen2.5:7b".into(), "mistral".into()],
            num_parallel: Some(8),
            api_key_env: Some("VLLM_API_KEY".into()),
        }]
    );
}

#[test]
fn bad_llm_backends_name_the_field_and_what_is_expected() {
    let backend = |extra: &str| {
        format!("[[llm.backends]]\nname = \"vllm\"\nkind = \"openai\"\nurl = \"http://x:8000\"\nmodels = [\"m\"]\n{extra}")
    };
    let cases = [
        ("[[llm.backends]]\nkind = \"openai\"".to_string(), "field llm.backends[0].name: missing"),
        (backend("").replace("openai", "grpc"), "field llm.backends[0].kind: \"grpc\" is not a backend kind; expected \"openai\" or \"ollama\""),
        (backend("").replace("http://x:8000", "ftp://x"), "field llm.backends[0].url: \"ftp://x\" has the scheme \"ftp\""),
        (backend("").replace("[\"m\"]", "[]"), "field llm.backends[0].models: is empty or missing"),
        (backend("").replace("[\"m\"]", "[\"*\"]"), "field llm.backends[0].models[0]: \"*\" is not a model name"),
        (backend("port = 1"), "field llm.backends[0].port: unknown field \"port\""),
        (backend("num_parallel = 0"), "field llm.backends[0].num_parallel: 0 is not allowed"),
        (backend("api_key_env = \"$KEY\""), "field llm.backends[0].api_key_env: \"$KEY\" is not an environment variable name"),
        (backend("").replace("vllm", "ollama"), "field llm.backends[0].name: \"ollama\" is already taken"),
        (format!("{}{}", backend(""), backend("").replace("vllm", "other")), "field llm.backends[1].models[0]: model \"m\" is already served by backend \"vllm\""),
        ("[llm]\ntimeout_ms = 0".to_string(), "field llm.timeout_ms: 0 is not allowed"),
        ("[llm]\nbreaker_failures = 0".to_string(), "field llm.breaker_failures: 0 is not allowed"),
        ("[llm]\nretries = -1".to_string(), "field llm.retries: -1 is negative"),
        ("[llm]\nstream = \"yes\"".to_string(), "field llm.stream: expected true or false"),
        ("[llm]\nidle_timeout_ms = 0".to_string(), "field llm.idle_timeout_ms: 0 is not allowed"),
    ];
    for (text, expected) in cases {
        let err = error_of(&text);
        assert!(err.starts_with("config configs/node.toml: "), "{err}");
        assert!(
            err.contains(expected),
            "{text}\n=> {err}\nexpected: {expected}"
        );
    }
}

#[test]
fn the_rollback_window_and_kv_sync_interval_are_configurable() {
    let d = parse("").unwrap();
    assert_eq!((d.node.rollback_window_secs, d.node.kv_sync_ms), (600, 100));
    let c = parse("[node]\nrollback_window_secs = 30\nkv_sync_ms = 0\n").unwrap();
    assert_eq!((c.node.rollback_window_secs, c.node.kv_sync_ms), (30, 0));
    assert_eq!(d.node.conversation_header, "Conversation-Id");
    let c = parse("[node]\nconversation_header = \"X-Thread\"\n").unwrap();
    assert_eq!(c.node.conversation_header, "X-Thread");
    let err = parse("[node]\nconversation_header = \"a b\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("conversation_header") && err.contains("not a header name"),
        "{err}"
    );
    let e = error_of("[node]\nkv_sync_ms = -1\n");
    assert!(
        e.contains("node.kv_sync_ms") && e.contains("negative"),
        "{e}"
    );
}
