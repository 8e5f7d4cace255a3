//! The manifest rules (docs/design.md, Manifest), one test per rule.

use std::path::{Path, PathBuf};

use super::*;

pub(super) const FULL: &str = r#"
[agent]
name = "sage"
cluster = "orchestration"
id = "01936f11-4ea2-7000-8000-000000000001"
component = "sage.wasm"
sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

[subscriptions]
legacy = true
broadcast = false
agent_ref = true
durable = true

[messaging]
publish = ["agent.to.*.>", "agent.broadcast.status"]
send = ["ddd-expert"]

[llm]
models = ["llama3.2:1b"]
max_tokens_per_minute = 20000
max_requests_per_minute = 60
max_tokens_per_call = 4096

[kv]
max_bytes = "8MiB"
max_keys = 500

[limits]
memory = "64MiB"
cpu_ms_per_message = 200
max_message_bytes = 1048576

[config]
system_prompt = "You are a DDD expert"
"#;

fn sage_path() -> PathBuf {
    PathBuf::from("configs/agents/sage.toml")
}

/// Parses `text` as if read from configs/agents/sage.toml and returns the error text.
fn error_of(text: &str) -> (ManifestError, String) {
    let err = Manifest::parse(text, Some(&sage_path())).unwrap_err();
    let shown = err.to_string();
    (err, shown)
}

fn agent(extra: &str) -> String {
    format!("[agent]\nname = \"sage\"\n{extra}")
}

#[test]
fn a_full_manifest_reads_every_section() {
    let m = Manifest::parse(FULL, Some(&sage_path())).unwrap();
    assert_eq!(m.source, Some(sage_path()));
    assert_eq!(m.agent.name, "sage");
    assert_eq!(m.agent.cluster, "orchestration");
    assert_eq!(
        m.agent.id.to_string(),
        "01936f11-4ea2-7000-8000-000000000001"
    );
    assert_eq!(
        m.agent.component,
        Some(PathBuf::from("configs/agents/sage.wasm"))
    );
    assert_eq!(m.agent.sha256.as_deref().map(str::len), Some(64));
    assert!(!m.subscriptions.broadcast && m.subscriptions.durable);
    assert_eq!(m.messaging.send, ["ddd-expert"]);
    assert_eq!(m.llm.max_tokens_per_minute, Some(20000));
    assert_eq!(m.llm.max_requests_per_minute, Some(60));
    assert_eq!(m.llm.max_tokens_per_call, Some(4096));
    assert_eq!(
        m.kv,
        KvGrants {
            max_bytes: 8 << 20,
            max_keys: 500
        }
    );
    assert_eq!(m.limits.memory, Some(64 << 20));
    assert_eq!(m.limits.cpu_ms_per_message, Some(200));
    assert_eq!(m.limits.max_message_bytes, Some(1 << 20));
    assert_eq!(m.config["system_prompt"], "You are a DDD expert");
}

#[test]
fn a_minimal_manifest_grants_nothing_but_its_own_inboxes_and_kv() {
    let m = Manifest::parse(&agent(""), None).unwrap();
    assert_eq!(m.agent.cluster, "default");
    assert_eq!(m.agent.id.get_version_num(), 7);
    assert_eq!(m.agent.component, None);
    assert_eq!(m.subscriptions, Subscriptions::default());
    assert!(m.subscriptions.legacy && m.subscriptions.broadcast && m.subscriptions.agent_ref);
    assert!(!m.subscriptions.durable);
    assert!(!m.messaging.allows_publish("agent.to.x.y"));
    assert!(!m.messaging.allows_send_to("x"));
    assert!(!m.llm.allows_model("llama3.2:1b"));
    assert_eq!(
        m.kv,
        KvGrants {
            max_bytes: 1 << 20,
            max_keys: 10_000
        }
    );
    assert_eq!(m.limits, Limits::default());
    assert!(m.config.is_empty());
}

#[test]
fn deny_all_matches_an_empty_manifest_and_validates_the_name() {
    let m = Manifest::deny_all("echo").unwrap();
    let parsed = Manifest::parse("[agent]\nname = \"echo\"\n", None).unwrap();
    assert_eq!(m.agent.id.get_version_num(), 7);
    assert_eq!(
        Manifest {
            agent: AgentSection {
                id: parsed.agent.id,
                ..m.agent.clone()
            },
            ..m.clone()
        },
        parsed
    );
    let err = Manifest::deny_all("Echo").unwrap_err().to_string();
    assert!(err.contains("field agent.name"), "{err}");
    assert!(err.contains("lower-case"), "{err}");
}

#[test]
fn missing_name_asks_for_one_unless_the_loader_gives_it() {
    let (err, shown) = error_of("[agent]\ncluster = \"x\"\n");
    assert_eq!(err.field.as_deref(), Some("agent.name"));
    assert!(
        shown.contains("field agent.name: missing; add name = \"my-agent\""),
        "{shown}"
    );
    let (_, shown) = error_of("");
    assert!(shown.contains("field agent.name: missing"), "{shown}");

    let m = Manifest::parse_with_name("", None, Some("echo")).unwrap();
    assert_eq!(m.agent.name, "echo");
    let m = Manifest::parse_with_name(&agent(""), None, Some("echo")).unwrap();
    assert_eq!(m.agent.name, "sage", "the manifest's own name wins");
}

#[test]
fn names_must_be_one_lower_case_subject_token() {
    let (err, shown) = error_of("[agent]\nname = \"Sage.v2\"\n");
    assert_eq!(err.field.as_deref(), Some("agent.name"));
    assert!(shown.contains("expected lower-case letters"), "{shown}");
}

#[test]
fn reserved_clusters_are_refused_with_the_reason() {
    for reserved in ["to", "broadcast"] {
        let (_, shown) = error_of(&agent(&format!("cluster = \"{reserved}\"")));
        assert_eq!(
            shown,
            format!("manifest configs/agents/sage.toml: field agent.cluster: \"{reserved}\" is reserved (it would make subject patterns overlap); choose another cluster name")
        );
    }
    let (_, shown) = error_of(&agent("cluster = \"Ops Team\""));
    assert!(
        shown.contains("field agent.cluster: 'Ops Team' contains"),
        "{shown}"
    );
}

#[test]
fn ids_must_be_uuid_v7() {
    let (_, shown) = error_of(&agent("id = \"not-a-uuid\""));
    assert!(
        shown.contains("field agent.id: \"not-a-uuid\" is not a UUID"),
        "{shown}"
    );
    assert!(shown.contains("expected a UUID v7"), "{shown}");
    let (_, shown) = error_of(&agent("id = \"550e8400-e29b-41d4-a716-446655440000\""));
    assert!(
        shown.contains("is a version 4 UUID; expected a UUID v7"),
        "{shown}"
    );
}

#[test]
fn component_is_resolved_against_the_manifest_folder() {
    let m = Manifest::parse(
        &agent("component = \"../wasm/sage.wasm\""),
        Some(&sage_path()),
    )
    .unwrap();
    assert_eq!(
        m.agent.component,
        Some(PathBuf::from("configs/agents/../wasm/sage.wasm"))
    );
    let m = Manifest::parse(&agent("component = \"/opt/sage.wasm\""), Some(&sage_path())).unwrap();
    assert_eq!(m.agent.component, Some(PathBuf::from("/opt/sage.wasm")));
    let m = Manifest::parse(&agent("component = \"sage.wasm\""), None).unwrap();
    assert_eq!(m.agent.component, Some(PathBuf::from("sage.wasm")));
    let (_, shown) = error_of(&agent("component = \"\""));
    assert!(
        shown.contains("field agent.component: is empty; expected a path"),
        "{shown}"
    );
}

#[test]
fn sha256_must_be_64_lower_case_hex_characters() {
    let (_, shown) = error_of(&agent("sha256 = \"abc\""));
    assert!(
        shown.contains("field agent.sha256: has 3 characters; expected 64 lower-case hex"),
        "{shown}"
    );
    let upper = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
    let (_, shown) = error_of(&agent(&format!("sha256 = \"{upper}\"")));
    assert!(
        shown.contains("field agent.sha256: contains 'E'; expected 64 lower-case hex"),
        "{shown}"
    );
}

#[test]
fn subscriptions_must_be_booleans() {
    let (_, shown) = error_of(&agent("[subscriptions]\ndurable = \"yes\""));
    assert!(
        shown.contains("field subscriptions.durable: expected true or false (without quotes), found the string \"yes\""),
        "{shown}"
    );
}

#[test]
fn publish_grants_are_checked_patterns_named_by_index() {
    let (err, shown) = error_of(&agent(
        "[messaging]\npublish = [\"agent.to.*.>\", \"agent.>.x\"]",
    ));
    assert_eq!(err.field.as_deref(), Some("messaging.publish[1]"));
    assert!(
        shown.contains("field messaging.publish[1]: 'agent.>.x' has '>' before the end"),
        "{shown}"
    );
    assert!(shown.contains("expected a subject pattern like"), "{shown}");
    let (_, shown) = error_of(&agent("[messaging]\npublish = \"agent.>\""));
    assert!(
        shown.contains("field messaging.publish: expected a list of strings"),
        "{shown}"
    );
}

#[test]
fn publish_grants_match_any_granted_pattern() {
    let m = Manifest::parse(FULL, None).unwrap();
    assert!(m.messaging.allows_publish("agent.to.echo.hello"));
    assert!(m.messaging.allows_publish("agent.broadcast.status"));
    assert!(!m.messaging.allows_publish("agent.broadcast.shutdown"));
    assert!(!m.messaging.allows_publish("agent.to.echo"));
}

#[test]
fn send_grants_are_agent_names_or_star() {
    let m = Manifest::parse(FULL, None).unwrap();
    assert!(m.messaging.allows_send_to("ddd-expert"));
    assert!(!m.messaging.allows_send_to("other"));
    let any = Manifest::parse(&agent("[messaging]\nsend = [\"*\"]"), None).unwrap();
    assert!(any.messaging.allows_send_to("anyone"));
    let (_, shown) = error_of(&agent("[messaging]\nsend = [\"ok\", \"Bad Name\"]"));
    assert!(
        shown.contains("field messaging.send[1]: 'Bad Name' contains"),
        "{shown}"
    );
    assert!(shown.contains("or \"*\" for any agent"), "{shown}");
}

#[test]
fn models_are_listed_or_star_and_budgets_are_positive() {
    let m = Manifest::parse(FULL, None).unwrap();
    assert!(m.llm.allows_model("llama3.2:1b"));
    assert!(!m.llm.allows_model("llama3.1:70b"));
    let any = Manifest::parse(&agent("[llm]\nmodels = [\"*\"]"), None).unwrap();
    assert!(any.llm.allows_model("whatever"));
    let (_, shown) = error_of(&agent("[llm]\nmodels = [\"\"]"));
    assert!(
        shown.contains("field llm.models[0]: \"\" is not a model name"),
        "{shown}"
    );
    let (_, shown) = error_of(&agent("[llm]\nmax_tokens_per_minute = 0"));
    assert!(
        shown.contains("field llm.max_tokens_per_minute: 0 is not allowed"),
        "{shown}"
    );
    let (_, shown) = error_of(&agent("[llm]\nmax_requests_per_minute = -5"));
    assert!(
        shown.contains(
            "field llm.max_requests_per_minute: -5 is negative; expected a whole number like 60"
        ),
        "{shown}"
    );
    let (_, shown) = error_of(&agent("[llm]\nmax_tokens_per_call = 1.5"));
    assert!(shown.contains("field llm.max_tokens_per_call: expected a whole number like 4096, found the number 1.5"), "{shown}");
    let (_, shown) = error_of(&agent("[llm]\nmax_tokens_per_call = 5000000000"));
    assert!(
        shown
            .contains("field llm.max_tokens_per_call: 5000000000 is too large; at most 4294967295"),
        "{shown}"
    );
}

#[test]
fn kv_quota_takes_sizes_and_key_counts() {
    let m = Manifest::parse(&agent("[kv]\nmax_bytes = 2048"), None).unwrap();
    assert_eq!(
        m.kv,
        KvGrants {
            max_bytes: 2048,
            max_keys: 10_000
        }
    );
    let (_, shown) = error_of(&agent("[kv]\nmax_bytes = \"8 megs\""));
    assert!(
        shown.contains("field kv.max_bytes: \"8 megs\" has the unknown unit"),
        "{shown}"
    );
    assert!(shown.contains("expected a size like \"64MiB\""), "{shown}");
    let (_, shown) = error_of(&agent("[kv]\nmax_keys = \"many\""));
    assert!(
        shown.contains("field kv.max_keys: expected a whole number like 10000"),
        "{shown}"
    );
}

#[test]
fn limits_default_to_the_node_and_refuse_zero() {
    let m = Manifest::parse(&agent("[limits]\ncpu_ms_per_message = 50"), None).unwrap();
    assert_eq!(
        m.limits,
        Limits {
            cpu_ms_per_message: Some(50),
            ..Limits::default()
        }
    );
    let (_, shown) = error_of(&agent("[limits]\nmemory = \"0MiB\""));
    assert!(
        shown.contains("field limits.memory: 0 bytes is not allowed"),
        "{shown}"
    );
    let (_, shown) = error_of(&agent("[limits]\nmax_message_bytes = true"));
    assert!(
        shown.contains("field limits.max_message_bytes: expected a size like"),
        "{shown}"
    );
}

#[test]
fn config_values_must_be_strings_named_by_key() {
    let (err, shown) = error_of(&agent("[config]\ntemperature = 0.7"));
    assert_eq!(err.field.as_deref(), Some("config.temperature"));
    assert!(
        shown.contains("expected a string, found the number 0.7; quote it: temperature = \"0.7\""),
        "{shown}"
    );
    let (_, shown) = error_of(&agent("[config]\nlist = [1]"));
    assert!(
        shown.contains("field config.list: expected a string, found a list"),
        "{shown}"
    );
}

#[test]
fn unknown_fields_name_the_field_and_section() {
    let (err, shown) = error_of(&agent("nmae = \"x\""));
    assert_eq!(err.field.as_deref(), Some("agent.nmae"));
    assert!(
        shown.contains("unknown field \"nmae\" in [agent]; expected one of name, cluster"),
        "{shown}"
    );
    let (_, shown) = error_of(&agent("[messaging]\nsubscribe = []"));
    assert!(
        shown.contains("field messaging.subscribe: unknown field \"subscribe\" in [messaging]"),
        "{shown}"
    );
    let (_, shown) = error_of(&agent("[network]\nallow = true"));
    assert!(
        shown.contains("field network: unknown top-level field \"network\""),
        "{shown}"
    );
    assert!(shown.contains("[agent], [subscriptions]"), "{shown}");
}

#[test]
fn a_section_that_is_not_a_table_is_a_type_error() {
    let (_, shown) = error_of("agent = \"sage\"");
    assert!(
        shown.contains("field agent: expected a table [agent], found the string \"sage\""),
        "{shown}"
    );
}

#[test]
fn toml_syntax_errors_name_the_file_on_the_first_line() {
    let (err, shown) = error_of("[agent\nname = \"x\"");
    assert_eq!(err.field, None);
    let first = shown.lines().next().unwrap();
    assert!(
        first.starts_with("manifest configs/agents/sage.toml: invalid TOML at line 1"),
        "{shown}"
    );
}

#[test]
fn inline_manifests_say_so() {
    let err = Manifest::parse("[agent]\nname = 1", None)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("manifest <inline>: field agent.name: expected a string"),
        "{err}"
    );
}

#[test]
fn unreadable_files_report_the_os_error() {
    let err = Manifest::from_file(Path::new("/nonexistent/sage.toml")).unwrap_err();
    assert_eq!(err.file, Some(PathBuf::from("/nonexistent/sage.toml")));
    let shown = err.to_string();
    assert!(
        shown.contains("manifest /nonexistent/sage.toml: cannot read the file"),
        "{shown}"
    );
    assert!(shown.contains("os error"), "{shown}");
}

#[test]
fn a_device_or_an_oversized_file_is_refused_as_a_manifest_before_it_is_read() {
    let shown = Manifest::from_file(Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert_eq!(shown, "manifest /dev/zero: cannot read the file: it is not a regular file (it is a character device); expected a readable TOML manifest of at most 1MiB (a manifest is a few KiB)");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.toml");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let shown = Manifest::from_file(&path).unwrap_err().to_string();
    assert!(
        shown.contains("it is 1GiB (1073741824 bytes), more than the limit of 1MiB"),
        "{shown}"
    );
}

#[test]
fn from_file_reads_and_resolves_against_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sage.toml");
    std::fs::write(&path, FULL).unwrap();
    let m = Manifest::from_file(&path).unwrap();
    assert_eq!(m.source.as_deref(), Some(path.as_path()));
    assert_eq!(m.agent.component, Some(dir.path().join("sage.wasm")));
}

#[test]
fn agent_ref_is_cluster_name_id() {
    let m = Manifest::parse(FULL, None).unwrap();
    assert_eq!(
        m.agent_ref(),
        "orchestration.sage.01936f11-4ea2-7000-8000-000000000001"
    );
}

#[test]
fn files_are_granted_only_by_a_files_section_that_says_how() {
    let m = Manifest::parse(&agent(""), None).unwrap();
    assert_eq!(m.files, None, "no [files]: no file access at all");
    for (access, expected) in [
        ("read-only", FilesAccess::ReadOnly),
        ("read-write", FilesAccess::ReadWrite),
    ] {
        let text = agent(&format!("[files]\naccess = \"{access}\"\n"));
        assert_eq!(Manifest::parse(&text, None).unwrap().files, Some(expected));
    }

    let (err, shown) = error_of(&agent("[files]\n"));
    assert_eq!(err.field.as_deref(), Some("files.access"));
    assert!(
        shown.contains("missing; expected access = \"read-only\""),
        "{shown}"
    );
    let (err, shown) = error_of(&agent("[files]\naccess = \"rw\"\n"));
    assert_eq!(err.field.as_deref(), Some("files.access"));
    assert!(shown.contains("\"rw\" is not an access mode"), "{shown}");
    let (err, _) = error_of(&agent("[files]\npath = \"/etc\"\n"));
    assert_eq!(
        err.field.as_deref(),
        Some("files.path"),
        "no choosing the directory"
    );
}

#[test]
fn describe_says_where_the_files_grant_points_and_that_nothing_else_is_reachable() {
    let text = agent("[files]\naccess = \"read-write\"\n");
    let shown = Manifest::parse(&text, None).unwrap().describe();
    assert!(
        shown.contains("Files: read-write in its private directory, seen as /data"),
        "{shown}"
    );
    assert!(shown.contains("reach any file outside /data"), "{shown}");
    assert!(
        !shown.contains("read or write files (WASI grants no"),
        "{shown}"
    );
}
