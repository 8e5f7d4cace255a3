//! `cargo bench -p host --features bench --bench llm`: what the host adds to an LLM call. An agent's `chat`
//! through the node (plugins/probe's `chat` command: request in over the bus, the Wasm
//! agent, the llm import with its manifest check, budgets, breaker, limiter, the HTTP call,
//! the reply back) against a direct ollama-rs call to the same fake Ollama server in the same
//! run. Also how fast an open breaker refuses. Prints one JSON object per metric.

mod common;

use common::{build_plugins, emit, percentile};

#[path = "../../tests/support/ollama.rs"]
mod ollama;

use std::time::{Duration, Instant};

use agent_host::bindings::agent::host::llm::{ChatMessage, Options, Role};
use agent_host::bus::BusMessage;
use agent_host::config::NodeConfig;
use agent_host::llm::Request;
use agent_host::manifest::LlmGrants;
use agent_host::node::{LoadRequest, Node};
use agent_host::telemetry::metrics::AgentLabels;
use ollama_rs::generation::chat::request::ChatMessageRequest;
use ollama_rs::generation::chat::ChatMessage as OllamaMessage;
use ollama_rs::Ollama;

const MODEL: &str = "llama3.2:1b";
/// Calls per timed batch, batches per variant (alternating host and direct).
const CALLS: usize = 200;
const BATCHES: usize = 7;

async fn start_node(
    dir: &std::path::Path,
    url: &str,
    tweak: impl FnOnce(&mut NodeConfig),
) -> std::sync::Arc<Node> {
    let mut cfg = NodeConfig::default();
    cfg.node.data_dir = dir.to_path_buf();
    cfg.http.listen = None;
    cfg.llm.ollama_url = url.to_string();
    tweak(&mut cfg);
    Node::start(cfg).await.expect("node starts")
}

async fn load_probe(node: &Node, dir: &std::path::Path, plugins: &std::path::Path) {
    let manifest = dir.join("probe.toml");
    std::fs::write(
        &manifest,
        format!("[agent]\nname = \"probe\"\n[llm]\nmodels = [\"{MODEL}\"]\n"),
    )
    .unwrap();
    node.load(LoadRequest {
        component: Some(plugins.join("probe.wasm")),
        manifest: Some(manifest),
        name: None,
    })
    .await
    .expect("probe loads");
}

/// One chat through the node, as an agent makes it; returns the reply text.
async fn through_host(node: &Node) -> String {
    let msg = BusMessage::new(
        "agent.to.probe.cmd",
        format!("chat {MODEL} hello there").into_bytes(),
    );
    let reply = node
        .send(msg, Some(Duration::from_secs(10)))
        .await
        .expect("reply")
        .expect("reply");
    String::from_utf8(reply.payload.to_vec()).unwrap()
}

async fn direct(client: &Ollama) -> String {
    let req = ChatMessageRequest::new(
        MODEL.into(),
        vec![OllamaMessage::user("hello there".into())],
    );
    client
        .send_chat_messages(req)
        .await
        .expect("direct call")
        .message
        .content
}

fn main() {
    let plugins = build_plugins();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let fake = ollama::FakeOllama::start().await;
        let dir = tempfile::tempdir().unwrap();
        let node = start_node(dir.path(), &fake.url, |_| {}).await;
        load_probe(&node, dir.path(), &plugins).await;
        // The same kind of client the host builds: connect timeout, request timeout.
        let http =
            agent_host::llm::backend::http_client(Duration::from_secs(2), Duration::from_secs(30))
                .unwrap();
        let url = reqwest::Url::parse(&format!("{}/", fake.url)).unwrap();
        let client = Ollama::builder().url(url).reqwest_client(http).build();

        for _ in 0..50 {
            assert_eq!(through_host(&node).await, "hello there");
            assert_eq!(direct(&client).await, "hello there");
        }
        let (mut host_ms, mut direct_ms) = (Vec::new(), Vec::new());
        for _ in 0..BATCHES {
            for _ in 0..CALLS {
                let t = Instant::now();
                through_host(&node).await;
                host_ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            for _ in 0..CALLS {
                let t = Instant::now();
                direct(&client).await;
                direct_ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let host_p50 = percentile(&mut host_ms, 0.5);
        let direct_p50 = percentile(&mut direct_ms, 0.5);
        emit("llm_host_chat_ms_p50", host_p50, "ms");
        emit("llm_host_chat_ms_p99", percentile(&mut host_ms, 0.99), "ms");
        emit("llm_direct_chat_ms_p50", direct_p50, "ms");
        emit(
            "llm_direct_chat_ms_p99",
            percentile(&mut direct_ms, 0.99),
            "ms",
        );
        emit("llm_overhead_ms_p50", host_p50 - direct_p50, "ms");
        node.shutdown().await;

        // An open breaker: how fast an agent hears `unavailable` while the backend is down.
        let dead = ollama::refused_url();
        let dir = tempfile::tempdir().unwrap();
        let node = start_node(dir.path(), &dead, |c| {
            c.llm.retries = 0;
            c.llm.breaker_failures = 1;
            c.llm.breaker_cooldown_ms = 600_000;
        })
        .await;
        load_probe(&node, dir.path(), &plugins).await;
        assert!(through_host(&node).await.contains("cannot connect"));
        let grants = LlmGrants {
            models: vec!["*".into()],
            ..Default::default()
        };
        let labels = AgentLabels {
            agent: "bench".into(),
            cluster: "default".into(),
        };
        let agent = node.llm.agent("default.bench.x", "bench", &grants, &labels);
        let request = Request::Chat {
            messages: vec![ChatMessage {
                role: Role::User,
                content: "hi".into(),
            }],
            options: Options {
                temperature: None,
                max_tokens: None,
                top_p: None,
                stop: Vec::new(),
                json: false,
            },
        };
        let mut refuse_us = Vec::new();
        for _ in 0..2000 {
            let t = Instant::now();
            let r = node.llm.call(&agent, MODEL, request.clone()).await;
            refuse_us.push(t.elapsed().as_secs_f64() * 1e6);
            assert!(r.is_err());
        }
        emit(
            "llm_breaker_refusal_us_p50",
            percentile(&mut refuse_us, 0.5),
            "us",
        );
        let mut agent_ms = Vec::new();
        for _ in 0..500 {
            let t = Instant::now();
            let r = through_host(&node).await;
            agent_ms.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(r.contains("circuit breaker open"), "{r}");
        }
        emit(
            "llm_breaker_refusal_through_agent_ms_p50",
            percentile(&mut agent_ms, 0.5),
            "ms",
        );
        node.shutdown().await;
    });
}
