//! Node config rules: the seed environment variables override the file, and a bad value
//! names the variable and what it expects.

use std::collections::HashMap;

use super::*;

fn with_env(vars: &[(&str, &str)]) -> Result<NodeConfig, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    NodeConfig::load_with_env(None, &move |k| map.get(k).cloned())
}

fn env_error(var: &str, value: &str) -> String {
    with_env(&[(var, value)]).unwrap_err().to_string()
}

#[test]
fn unified_subjects_env_accepts_true_false_1_0() {
    for (value, expected) in [
        ("true", true),
        ("1", true),
        ("TRUE", true),
        ("false", false),
        ("0", false),
    ] {
        assert_eq!(
            with_env(&[("ENABLE_UNIFIED_SUBJECTS", value)])
                .unwrap()
                .node
                .unified_subjects,
            expected
        );
    }
    assert_eq!(
        env_error("ENABLE_UNIFIED_SUBJECTS", "maybe"),
        "environment variable ENABLE_UNIFIED_SUBJECTS: \"maybe\" is not a boolean; expected true, false, 1 or 0"
    );
}

#[test]
fn env_overrides_win_over_the_file() {
    let env = |k: &str| (k == "ENABLE_UNIFIED_SUBJECTS").then(|| "false".to_string());
    let c = NodeConfig::parse("[node]\nunified_subjects = true", None, &env).unwrap();
    assert!(!c.node.unified_subjects);
}

#[test]
fn snapshot_frequency_env_is_a_whole_number() {
    assert_eq!(
        with_env(&[("SNAPSHOT_FREQUENCY", "25")])
            .unwrap()
            .node
            .snapshot_every,
        25
    );
    assert_eq!(
        env_error("SNAPSHOT_FREQUENCY", "abc"),
        "environment variable SNAPSHOT_FREQUENCY: \"abc\" is not a number; expected a whole number like 100"
    );
    assert!(env_error("SNAPSHOT_FREQUENCY", "99999999999").contains("too large"));
}

#[test]
fn host_control_env_overrides_the_socket_path() {
    let c = with_env(&[("HOST_CONTROL", "/run/host.sock")]).unwrap();
    assert_eq!(c.control_socket(), PathBuf::from("/run/host.sock"));
    let env = |k: &str| (k == "HOST_CONTROL").then(|| "/tmp/x.sock".to_string());
    let c = NodeConfig::parse("[control]\nsocket = \"ctl.sock\"", None, &env).unwrap();
    assert_eq!(c.control_socket(), PathBuf::from("/tmp/x.sock"));
}

#[test]
fn ollama_host_env_gets_a_scheme_when_it_has_none() {
    let c = with_env(&[("OLLAMA_HOST", "127.0.0.1:11434")]).unwrap();
    assert_eq!(c.llm.ollama_url, "http://127.0.0.1:11434");
    let c = with_env(&[("OLLAMA_HOST", "https://llm.example.com")]).unwrap();
    assert_eq!(c.llm.ollama_url, "https://llm.example.com");
    let err = env_error("OLLAMA_HOST", "tcp://x:1");
    assert!(
        err.starts_with("environment variable OLLAMA_HOST: \"tcp://x:1\" has the scheme"),
        "{err}"
    );
}

#[test]
fn ollama_num_parallel_env_is_a_positive_number() {
    assert_eq!(
        with_env(&[("OLLAMA_NUM_PARALLEL", "8")])
            .unwrap()
            .llm
            .num_parallel,
        8
    );
    assert!(env_error("OLLAMA_NUM_PARALLEL", "0")
        .contains("environment variable OLLAMA_NUM_PARALLEL: 0 would let no LLM call run"));
    assert!(env_error("OLLAMA_NUM_PARALLEL", "two")
        .contains("\"two\" is not a number; expected a whole number like 2"));
}

#[test]
fn nats_env_sets_url_and_stream() {
    let c = with_env(&[("NATS_URL", "nats://bus:4222"), ("STREAM_NAME", "OTHER")]).unwrap();
    assert_eq!(c.nats.url.as_deref(), Some("nats://bus:4222"));
    assert_eq!(c.nats.stream_name, "OTHER");
    let c = with_env(&[("NATS_CREDS", "/run/secrets/node.creds")]).unwrap();
    assert_eq!(
        c.nats.credentials_file.as_deref(),
        Some(std::path::Path::new("/run/secrets/node.creds"))
    );
    let err = env_error("STREAM_NAME", "a b");
    assert!(
        err.starts_with("environment variable STREAM_NAME: \"a b\" contains ' '"),
        "{err}"
    );
}

/// A config listing `agents` agents, with `vars` as the environment.
fn with_agents_and_env(agents: usize, vars: &[(&str, &str)]) -> Result<NodeConfig, ConfigError> {
    let text = "[[agents]]\nmanifest = \"a.toml\"\n".repeat(agents);
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    NodeConfig::parse(&text, Some(Path::new("node.toml")), &move |k| {
        map.get(k).cloned()
    })
}

#[test]
fn agent_identity_env_overrides_the_one_configured_agent() {
    let c = with_agents_and_env(
        1,
        &[
            ("AGENT_NAME", "ddd-expert"),
            ("AGENT_ID", "01936f11-4ea2-7000-8000-000000000001"),
            ("CAPABILITY_CLUSTER", "domain-modeling"),
        ],
    )
    .unwrap();
    let o = &c.agent_override;
    assert_eq!(o.name.as_deref(), Some("ddd-expert"));
    assert_eq!(
        o.id.unwrap().to_string(),
        "01936f11-4ea2-7000-8000-000000000001"
    );
    assert_eq!(o.cluster.as_deref(), Some("domain-modeling"));
    assert!(with_agents_and_env(3, &[])
        .unwrap()
        .agent_override
        .is_empty());
}

#[test]
fn agent_identity_env_is_refused_when_it_cannot_say_which_agent_it_means() {
    let none = with_agents_and_env(0, &[("AGENT_NAME", "sage")])
        .unwrap_err()
        .to_string();
    assert!(
        none.starts_with("environment variable AGENT_NAME: AGENT_NAME name(s) the agent of a one-agent node, but the node config lists no [[agents]]"),
        "{none}"
    );
    let many = with_agents_and_env(2, &[("AGENT_ID", "01936f11-4ea2-7000-8000-000000000001")])
        .unwrap_err()
        .to_string();
    assert!(
        many.contains("AGENT_ID would give all 2 agents of the node config the same identity"),
        "{many}"
    );
}

#[test]
fn agent_identity_env_values_are_checked_like_the_manifest_fields() {
    for (var, value, expected) in [
        ("AGENT_NAME", "Sage", "expected lower-case letters"),
        ("AGENT_ID", "42", "is not a UUID"),
        (
            "AGENT_ID",
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
            "is a version 1 UUID; expected a UUID v7",
        ),
        ("CAPABILITY_CLUSTER", "to", "is reserved"),
        ("CAPABILITY_CLUSTER", "a.b", "contains '.'"),
    ] {
        let err = with_agents_and_env(1, &[(var, value)])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("environment variable {var}: ")) && err.contains(expected),
            "{var}={value}: {err}"
        );
    }
}

#[test]
fn empty_env_values_count_as_unset() {
    let vars: Vec<(&str, &str)> = ENV_VARS.iter().map(|v| (*v, "")).collect();
    assert_eq!(with_env(&vars).unwrap(), NodeConfig::default());
}
