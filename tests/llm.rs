//! LLM inference through the host, end to end: real components (plugins/probe's `chat`
//! command, plugins/expert) on a real node, calling a fake Ollama / OpenAI-compatible
//! server over real HTTP on 127.0.0.1 (tests/support/ollama.rs).

/// The limits that keep agents and backends safe: concurrency, fairness, queue, budgets,
/// breaker, timeout.
/// Backend details: missing counts, credentials.
#[path = "llm/backends.rs"]
mod backends;
#[path = "llm/limits.rs"]
mod limits;
#[path = "support/ollama.rs"]
mod ollama;
/// `[llm] stream = true`: reading Ollama's NDJSON stream.
#[path = "llm/stream.rs"]
mod stream;
mod support;

use std::sync::Arc;
use std::time::Duration;

use agent_host::bindings::agent::host::llm::{ChatMessage, Options, Role};
use agent_host::bus::BusMessage;
use agent_host::config::{BackendEntry, BackendKind, LlmSection};
use agent_host::llm::{AgentLlm, Request, Response};
use agent_host::manifest::LlmGrants;
use agent_host::node::Node;
use agent_host::telemetry::metrics::AgentLabels;
use ollama::FakeOllama;
use support::TestNode;

const MODEL: &str = "llama3.2:1b";

/// A node whose default backend is `url`, with `tweak` applied to `[llm]`.
async fn node(url: &str, tweak: impl FnOnce(&mut LlmSection)) -> TestNode {
    let url = url.to_string();
    TestNode::start_with(move |cfg| {
        cfg.llm.ollama_url = url;
        cfg.llm.backoff_ms = 10;
        tweak(&mut cfg.llm);
    })
    .await
}

/// A probe manifest that may use `models`, plus `extra` lines under `[llm]`.
fn probe(name: &str, models: &str, extra: &str) -> String {
    format!("[agent]\nname = \"{name}\"\n[llm]\nmodels = [{models}]\n{extra}\n")
}

async fn load_probe(t: &TestNode, name: &str, extra: &str) {
    t.load("probe", name, &probe(name, &format!("\"{MODEL}\""), extra))
        .await;
}

/// The probe's reply to `chat MODEL TEXT`.
async fn chat(t: &TestNode, agent: &str, model: &str, text: &str) -> String {
    ask(&t.node, agent, &format!("chat {model} {text}")).await
}

async fn ask(node: &Arc<Node>, agent: &str, payload: &str) -> String {
    let msg = BusMessage::new(format!("agent.to.{agent}.cmd"), payload.as_bytes().to_vec());
    let reply = node
        .send(msg, Some(Duration::from_secs(20)))
        .await
        .expect("a reply")
        .expect("a reply when waiting");
    String::from_utf8_lossy(&reply.payload).into_owned()
}

/// Direct access to the node's LLM service as agent `name` (for options, generate, embed).
fn service_agent(t: &TestNode, name: &str) -> AgentLlm {
    let grants = LlmGrants {
        models: vec!["*".into()],
        ..Default::default()
    };
    let labels = AgentLabels {
        agent: name.into(),
        cluster: "default".into(),
    };
    t.node
        .llm
        .agent(&format!("default.{name}.x"), name, &grants, &labels)
}

fn user(text: &str) -> ChatMessage {
    ChatMessage {
        role: Role::User,
        content: text.into(),
    }
}

fn options() -> Options {
    Options {
        temperature: None,
        max_tokens: None,
        top_p: None,
        stop: Vec::new(),
        json: false,
    }
}

#[tokio::test]
async fn an_agent_chats_through_ollama_and_the_node_counts_calls_and_tokens() {
    let fake = FakeOllama::start().await;
    let t = node(&fake.url, |_| {}).await;
    load_probe(&t, "probe", "").await;
    assert_eq!(
        chat(&t, "probe", MODEL, "what is an aggregate").await,
        "what is an aggregate"
    );
    let metrics = t.node.metrics.encode();
    let labels = "agent=\"probe\",cluster=\"default\",backend=\"ollama\"";
    for line in [
        format!("agent_host_llm_calls_total{{{labels}}} 1"),
        format!("agent_host_llm_prompt_tokens_total{{{labels}}} 4"),
        format!("agent_host_llm_completion_tokens_total{{{labels}}} 4"),
        format!("agent_host_llm_queue_wait_seconds_count{{{labels}}} 1"),
        "agent_host_llm_breaker_state{backend=\"ollama\"} 0".to_string(),
    ] {
        assert!(metrics.contains(&line), "missing {line} in\n{metrics}");
    }
    t.stop().await;
}

#[tokio::test]
async fn the_expert_asks_with_its_system_prompt_first_and_the_question_last() {
    let fake = FakeOllama::start().await;
    let t = node(&fake.url, |_| {}).await;
    let system = "You are a DDD expert";
    let manifest = format!(
        "[agent]\nname = \"ddd-expert\"\n[llm]\nmodels = [\"{MODEL}\"]\n[config]\nmodel = \"{MODEL}\"\nsystem_prompt = \"{system}\"\ntemperature = \"0.2\"\nmax_tokens = \"64\"\n"
    );
    t.load("expert", "ddd-expert", &manifest).await;
    let answer = t
        .ask("agent.to.ddd-expert.ask", "What is an aggregate?")
        .await;
    assert_eq!(answer, ollama::reply(Some(system), "What is an aggregate?"));
    let body = &fake.bodies("/api/chat")[0];
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][0]["content"], system);
    assert_eq!(body["messages"][1]["role"], "user");
    assert_eq!(body["messages"][1]["content"], "What is an aggregate?");
    assert_eq!(body["options"]["num_predict"], 64);
    assert!((body["options"]["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    t.stop().await;
}

#[tokio::test]
async fn the_expert_replies_with_the_error_when_the_llm_fails() {
    let fake = FakeOllama::start().await;
    fake.set(|s| s.missing_models = vec![MODEL.into()]);
    let t = node(&fake.url, |_| {}).await;
    let manifest = format!(
        "[agent]\nname = \"nats-expert\"\n[llm]\nmodels = [\"{MODEL}\"]\n[config]\nmodel = \"{MODEL}\"\nsystem_prompt = \"NATS\"\n"
    );
    t.load("expert", "nats-expert", &manifest).await;
    let answer = t.ask("agent.to.nats-expert.ask", "What is a stream?").await;
    assert!(answer.starts_with("error: unavailable:"), "{answer}");
    assert!(answer.contains(&format!("ollama pull {MODEL}")), "{answer}");
    // The reply goes out during `handle`; the error it returns is counted when `handle`
    // returns, just after the requester may already hold the reply.
    let mut errors = 0;
    for _ in 0..200 {
        errors = t.node.status("nats-expert").await.unwrap().errors;
        if errors >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(errors >= 1, "the handler's error is counted");
    t.stop().await;
}

#[tokio::test]
async fn an_expert_without_a_model_in_its_config_refuses_to_load_saying_what_to_add() {
    let fake = FakeOllama::start().await;
    let t = node(&fake.url, |_| {}).await;
    let err = t
        .try_load("expert", "lost-expert", "[agent]\nname = \"lost-expert\"\n")
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("add model = \"llama3.2:1b\" to [config]"),
        "{err:#}"
    );
    t.stop().await;
}

#[tokio::test]
async fn options_map_onto_ollama_and_openai_request_fields() {
    let fake = FakeOllama::start().await;
    let url = fake.url.clone();
    let t = node(&fake.url, move |l| {
        l.backends.push(BackendEntry {
            name: "vllm".into(),
            kind: BackendKind::OpenAi,
            url,
            models: vec!["qwen2.5:7b".into()],
            num_parallel: None,
            api_key_env: None,
        })
    })
    .await;
    let agent = service_agent(&t, "svc");
    let opts = Options {
        temperature: Some(0.5),
        max_tokens: Some(3),
        top_p: Some(0.9),
        stop: vec!["\n\n".into()],
        json: true,
    };
    for model in [MODEL, "qwen2.5:7b"] {
        let r = t
            .node
            .llm
            .call(
                &agent,
                model,
                Request::Chat {
                    messages: vec![user("one two three four five")],
                    options: opts.clone(),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            r,
            Response::Text {
                text: "one two three".into(),
                model: model.into(),
                prompt_tokens: 5,
                completion_tokens: 3
            },
            "max-tokens limits the completion on {model}"
        );
    }
    let o = &fake.bodies("/api/chat")[0];
    assert_eq!(o["options"]["num_predict"], 3);
    assert_eq!(o["options"]["temperature"], 0.5);
    assert!((o["options"]["top_p"].as_f64().unwrap() - 0.9).abs() < 1e-6);
    assert_eq!(o["options"]["stop"][0], "\n\n");
    assert_eq!(o["format"], "json");
    assert_eq!(o["stream"], false);
    let v = &fake.bodies("/v1/chat/completions")[0];
    assert_eq!(v["model"], "qwen2.5:7b");
    assert_eq!(v["max_tokens"], 3);
    assert_eq!(v["temperature"], 0.5);
    assert_eq!(v["stop"][0], "\n\n");
    assert_eq!(v["response_format"]["type"], "json_object");
    t.stop().await;
}

#[tokio::test]
async fn generate_and_embed_work_on_ollama_and_on_an_openai_compatible_backend() {
    let fake = FakeOllama::start().await;
    let url = fake.url.clone();
    let t = node(&fake.url, move |l| {
        l.backends.push(BackendEntry {
            name: "lmstudio".into(),
            kind: BackendKind::OpenAi,
            url,
            models: vec!["nomic-embed".into(), "phi".into()],
            num_parallel: Some(1),
            api_key_env: None,
        })
    })
    .await;
    let agent = service_agent(&t, "svc");
    let llm = &t.node.llm;
    for model in [MODEL, "phi"] {
        let r = llm
            .call(
                &agent,
                model,
                Request::Generate {
                    prompt: "hello there".into(),
                    options: options(),
                },
            )
            .await
            .unwrap();
        assert!(
            matches!(r, Response::Text { ref text, .. } if text == "hello there"),
            "{r:?}"
        );
    }
    for model in ["all-minilm", "nomic-embed"] {
        let r = llm
            .call(
                &agent,
                model,
                Request::Embed {
                    inputs: vec!["a b".into(), "ccc".into()],
                },
            )
            .await
            .unwrap();
        let Response::Embeddings { vectors, .. } = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            vectors,
            vec![vec![3.0, 2.0, 1.0], vec![3.0, 1.0, 1.0]],
            "{model}: in input order"
        );
    }
    assert_eq!(fake.bodies("/api/generate").len(), 1);
    assert_eq!(fake.bodies("/api/embed").len(), 1);
    assert_eq!(fake.bodies("/v1/embeddings").len(), 1);
    assert_eq!(
        fake.bodies("/v1/chat/completions").len(),
        1,
        "generate is a chat there"
    );
    assert_eq!(llm.route("nomic-embed").name, "lmstudio");
    assert_eq!(llm.route("anything-else").name, "ollama");
    t.stop().await;
}

#[tokio::test]
async fn each_backend_failure_reaches_the_agent_as_the_right_error_case() {
    let fake = FakeOllama::start().await;
    let url = fake.url.clone();
    let t = node(&fake.url, move |l| {
        l.retries = 0;
        l.breaker_failures = 100;
        l.backends.push(BackendEntry {
            name: "vllm".into(),
            kind: BackendKind::OpenAi,
            url,
            models: vec!["qwen2.5:7b".into()],
            num_parallel: None,
            api_key_env: None,
        });
    })
    .await;
    t.load("probe", "probe", &probe("probe", "\"*\"", "")).await;

    fake.set(|s| s.missing_models = vec!["absent:1b".into(), "qwen2.5:7b".into()]);
    let r = chat(&t, "probe", "absent:1b", "hi").await;
    assert!(
        r.starts_with("error: unavailable: model 'absent:1b'"),
        "{r}"
    );
    assert!(r.contains("`ollama pull absent:1b`"), "{r}");
    let r = chat(&t, "probe", "qwen2.5:7b", "hi").await;
    assert!(
        r.starts_with("error: unavailable: model 'qwen2.5:7b' is not served by LLM backend 'vllm'"),
        "{r}"
    );

    fake.set(|s| s.busy = u32::MAX);
    let r = chat(&t, "probe", MODEL, "hi").await;
    assert!(
        r.starts_with("error: unavailable:") && r.contains("is busy") && r.contains(ollama::BUSY),
        "{r}"
    );
    fake.set(|s| s.busy = 0);

    fake.set(|s| s.mid_stream_error = true);
    let r = chat(&t, "probe", MODEL, "hi").await;
    assert!(
        r.starts_with("error: unavailable:") && r.contains(ollama::RUNNER_DIED),
        "{r}"
    );
    fake.set(|s| s.mid_stream_error = false);
    assert_eq!(chat(&t, "probe", MODEL, "fine again").await, "fine again");
    t.stop().await;
}

#[tokio::test]
async fn a_busy_ollama_is_retried_with_backoff_and_the_call_then_succeeds() {
    let fake = FakeOllama::start().await;
    fake.set(|s| s.busy = 2);
    let t = node(&fake.url, |l| l.retries = 2).await;
    load_probe(&t, "probe", "").await;
    assert_eq!(chat(&t, "probe", MODEL, "hello").await, "hello");
    assert_eq!(fake.requests(), 3, "two busy answers, then the answer");
    t.stop().await;
}

#[tokio::test]
async fn responses_split_into_tiny_chunks_arrive_whole() {
    let fake = FakeOllama::start().await;
    fake.set(|s| s.split_chunks = true);
    let t = node(&fake.url, |_| {}).await;
    load_probe(&t, "probe", "").await;
    let question = "a question long enough to span many five byte chunks";
    assert_eq!(chat(&t, "probe", MODEL, question).await, question);
    t.stop().await;
}

#[tokio::test]
async fn a_refused_connection_gives_unavailable_naming_the_setting_to_fix() {
    let dead = ollama::refused_url();
    let t = node(&dead, |l| l.retries = 1).await;
    load_probe(&t, "probe", "").await;
    let r = chat(&t, "probe", MODEL, "hi").await;
    assert!(
        r.starts_with("error: unavailable: cannot connect to Ollama"),
        "{r}"
    );
    assert!(
        r.contains(&dead) && r.contains("OLLAMA_HOST") && r.contains("ollama_url"),
        "{r}"
    );
    assert!(r.contains("tried 2 times"), "{r}");
    t.stop().await;
}

#[tokio::test]
async fn a_model_outside_the_grants_is_denied_naming_the_grant() {
    let fake = FakeOllama::start().await;
    let t = node(&fake.url, |_| {}).await;
    load_probe(&t, "probe", "").await;
    let r = chat(&t, "probe", "gpt-4", "hi").await;
    assert!(
        r.starts_with("error: denied:") && r.contains("add \"gpt-4\" to [llm] models"),
        "{r}"
    );
    assert_eq!(fake.requests(), 0);
    t.stop().await;
}

#[tokio::test]
async fn llm_series_appear_on_first_use_and_leave_with_the_agent() {
    let fake = FakeOllama::start().await;
    let t = node(&fake.url, |_| {}).await;
    load_probe(&t, "user", "").await;
    load_probe(&t, "idle", "").await;
    assert_eq!(chat(&t, "user", MODEL, "hi").await, "hi");
    let metrics = t.node.metrics.encode();
    assert!(metrics.contains("agent_host_llm_calls_total{agent=\"user\""));
    assert!(
        !metrics.contains("agent=\"idle\",cluster=\"default\",backend"),
        "{metrics}"
    );
    t.node.unload("user").await.unwrap();
    let metrics = t.node.metrics.encode();
    assert!(
        !metrics.contains("agent=\"user\",cluster=\"default\",backend"),
        "{metrics}"
    );
    t.stop().await;
}

#[tokio::test]
async fn the_shipped_experts_config_runs_both_experts_on_one_component() {
    support::plugin("expert"); // builds the component the manifests point at
    let fake = FakeOllama::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg =
        agent_host::config::NodeConfig::load(Some(&support::root().join("configs/experts.toml")))
            .expect("configs/experts.toml is a valid node config");
    cfg.node.data_dir = dir.path().to_path_buf();
    cfg.http.listen = None;
    cfg.llm.ollama_url = fake.url.clone();
    let node = Node::start(cfg).await.unwrap();
    node.load_configured_agents().await.unwrap();
    for (agent, topic) in [
        ("ddd-expert", "domain-driven design"),
        ("nats-expert", "NATS"),
    ] {
        let answer = ask(&node, agent, "What should I know?").await;
        assert!(
            answer.contains(topic),
            "{agent} answers with its own system prompt: {answer}"
        );
        assert!(answer.ends_with("What should I know?"), "{answer}");
    }
    node.shutdown().await;
}
