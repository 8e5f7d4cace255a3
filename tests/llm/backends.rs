//! Backend details an operator relies on: budgets hold when Ollama leaves out token counts,
//! and OpenAI-compatible servers get their API key from the environment.

use agent_host::config::{BackendEntry, BackendKind};
use agent_host::node::Node;

use super::ollama::FakeOllama;
use super::{chat, load_probe, node, probe, MODEL};

#[tokio::test]
async fn a_cached_prompt_without_counts_is_still_charged_to_the_token_budget() {
    let fake = FakeOllama::start().await;
    fake.set(|s| s.cached_prompt = true);
    let t = node(&fake.url, |_| {}).await;
    load_probe(&t, "probe", "max_tokens_per_minute = 8").await;
    let long = "twelve characters each, many words in one long prompt";
    assert_eq!(chat(&t, "probe", MODEL, long).await, long);
    let r = chat(&t, "probe", MODEL, "again").await;
    assert!(
        r.starts_with("error: quota exceeded:"),
        "estimated tokens were charged: {r}"
    );
    t.stop().await;
}

#[tokio::test]
async fn an_openai_backend_with_api_key_env_sends_the_key_as_a_bearer_token() {
    // A variable name no other test or tool uses.
    std::env::set_var("AGENT_HOST_TEST_LLM_KEY", "sk-test-123");
    let fake = FakeOllama::start().await;
    let url = fake.url.clone();
    let t = node(&fake.url, move |l| {
        l.backends.push(BackendEntry {
            name: "vllm".into(),
            kind: BackendKind::OpenAi,
            url,
            models: vec!["qwen2.5:7b".into()],
            num_parallel: None,
            api_key_env: Some("AGENT_HOST_TEST_LLM_KEY".into()),
        })
    })
    .await;
    t.load("probe", "probe", &probe("probe", "\"qwen2.5:7b\"", ""))
        .await;
    assert_eq!(chat(&t, "probe", "qwen2.5:7b", "hi").await, "hi");
    assert_eq!(
        fake.authorizations(),
        vec![Some("Bearer sk-test-123".to_string())]
    );
    t.stop().await;
}

#[tokio::test]
async fn a_backend_whose_api_key_variable_is_unset_stops_the_node_start_saying_so() {
    let mut cfg = agent_host::config::NodeConfig::default();
    let dir = tempfile::tempdir().unwrap();
    cfg.node.data_dir = dir.path().to_path_buf();
    cfg.http.listen = None;
    cfg.llm.backends.push(BackendEntry {
        name: "vllm".into(),
        kind: BackendKind::OpenAi,
        url: "http://127.0.0.1:8000".into(),
        models: vec!["qwen2.5:7b".into()],
        num_parallel: None,
        api_key_env: Some("AGENT_HOST_TEST_UNSET_KEY".into()),
    });
    let err = Node::start(cfg).await.err().expect("refused");
    assert!(
        err.to_string()
            .contains("api_key_env names AGENT_HOST_TEST_UNSET_KEY, which is not set"),
        "{err}"
    );
}
