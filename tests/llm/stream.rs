//! `[llm] stream = true`: the host reads Ollama's NDJSON answer as it is generated. Lines
//! split across chunks are reassembled, an error line in the middle is the failure it is, a
//! stream that ends without `"done": true` is an error, and a runner that goes silent hits
//! the idle timeout long before the call's timeout.

use std::time::{Duration, Instant};

use agent_host::llm::{Request, Response};

use super::ollama::{self, FakeOllama};
use super::{chat, load_probe, node, options, service_agent, MODEL};
use crate::support::TestNode;

async fn streaming_node(fake: &FakeOllama) -> TestNode {
    node(&fake.url, |l| {
        l.stream = true;
        l.idle_timeout_ms = 300;
        l.retries = 0;
    })
    .await
}

#[tokio::test]
async fn a_streamed_answer_split_into_tiny_chunks_arrives_whole_with_its_counts() {
    let fake = FakeOllama::start().await;
    fake.set(|s| s.split_chunks = true);
    let t = streaming_node(&fake).await;
    load_probe(&t, "probe", "").await;
    let question = "a streamed question whose lines span many chunks";
    assert_eq!(chat(&t, "probe", MODEL, question).await, question);
    assert_eq!(fake.bodies("/api/chat")[0]["stream"], true);
    let agent = service_agent(&t, "svc");
    let r = t
        .node
        .llm
        .call(
            &agent,
            MODEL,
            Request::Generate {
                prompt: "three word prompt".into(),
                options: options(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        r,
        Response::Text {
            text: "three word prompt".into(),
            model: MODEL.into(),
            prompt_tokens: 3,
            completion_tokens: 3
        }
    );
    assert_eq!(fake.bodies("/api/generate")[0]["stream"], true);
    t.stop().await;
}

#[tokio::test]
async fn an_error_line_in_the_middle_of_a_stream_reaches_the_agent_as_unavailable() {
    let fake = FakeOllama::start().await;
    fake.set(|s| s.mid_stream_error = true);
    let t = streaming_node(&fake).await;
    load_probe(&t, "probe", "").await;
    let r = chat(&t, "probe", MODEL, "never finished").await;
    assert!(
        r.starts_with("error: unavailable:") && r.contains(ollama::RUNNER_DIED),
        "{r}"
    );
    t.stop().await;
}

#[tokio::test]
async fn a_stream_that_ends_without_done_is_an_error_not_a_short_answer() {
    let fake = FakeOllama::start().await;
    fake.set(|s| s.cut_off = true);
    let t = streaming_node(&fake).await;
    load_probe(&t, "probe", "").await;
    let r = chat(&t, "probe", MODEL, "cut short here").await;
    assert!(
        r.starts_with("error: unavailable:")
            && r.contains("ended without its final \"done\": true line"),
        "{r}"
    );
    t.stop().await;
}

#[tokio::test]
async fn a_runner_that_goes_silent_mid_answer_hits_the_idle_timeout() {
    let fake = FakeOllama::start().await;
    fake.set(|s| s.stall = Duration::from_secs(5));
    let t = streaming_node(&fake).await;
    load_probe(&t, "probe", "").await;
    let started = Instant::now();
    assert_eq!(
        chat(&t, "probe", MODEL, "hello silence").await,
        "error: timed out"
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "idle timeout of 300 ms, not the 30 s call timeout: {took:?}"
    );
    t.stop().await;
}
