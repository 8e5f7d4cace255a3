//! The node-wide limits around LLM calls, end to end: at most `num_parallel` in flight,
//! fairness between agents, a bounded queue, per-agent budgets, the circuit breaker and the
//! wall-clock timeout.

use std::time::{Duration, Instant};

use agent_host::bindings::WitError;
use agent_host::llm::breaker::BreakerState;
use agent_host::llm::Request;

use super::ollama::FakeOllama;
use super::{ask, chat, load_probe, node, options, service_agent, user, MODEL};

#[tokio::test]
async fn a_slow_backend_times_out_and_waiting_is_not_charged_to_the_cpu_budget() {
    let fake = FakeOllama::start().await;
    fake.set(|s| s.delay = Duration::from_millis(400));
    let t = node(&fake.url, |l| l.timeout_ms = Some(1_000)).await;
    // 400 ms of waiting against a CPU budget of 50 ms per message: host time, no trap.
    load_probe(&t, "probe", "[limits]\ncpu_ms_per_message = 50").await;
    assert_eq!(chat(&t, "probe", MODEL, "slow").await, "slow");
    fake.set(|s| s.delay = Duration::from_millis(3_000));
    let started = Instant::now();
    assert_eq!(chat(&t, "probe", MODEL, "slower").await, "error: timed out");
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "the wall-clock limit holds"
    );
    assert_eq!(t.node.status("probe").await.unwrap().traps, 0);
    t.stop().await;
}

#[tokio::test]
async fn the_node_never_has_more_than_num_parallel_calls_in_flight() {
    let fake = FakeOllama::start().await;
    fake.set(|s| s.delay = Duration::from_millis(40));
    let t = node(&fake.url, |l| l.num_parallel = 2).await;
    let names: Vec<String> = (0..6).map(|i| format!("agent-{i}")).collect();
    for name in &names {
        load_probe(&t, name, "").await;
    }
    let mut calls = Vec::new();
    for name in &names {
        for i in 0..4 {
            let (node, name) = (t.node.clone(), name.clone());
            calls.push(tokio::spawn(async move {
                ask(&node, &name, &format!("chat {MODEL} q{i}")).await
            }));
        }
    }
    for call in calls {
        let r = call.await.unwrap();
        assert!(r.starts_with('q'), "{r}");
    }
    assert_eq!(fake.requests(), 24);
    assert_eq!(
        fake.max_in_flight(),
        2,
        "the limit was reached and never exceeded"
    );
    assert_eq!(t.node.llm.route(MODEL).limiter.in_flight(), 0);
    t.stop().await;
}

#[tokio::test]
async fn a_flooding_agent_does_not_starve_a_light_one() {
    let fake = FakeOllama::start().await;
    fake.set(|s| s.delay = Duration::from_millis(25));
    let t = node(&fake.url, |l| l.num_parallel = 1).await;
    load_probe(&t, "flood", "").await;
    load_probe(&t, "light", "").await;
    // The flooding agent gets 40 questions at once; its mailbox holds them.
    let mut flood = Vec::new();
    for i in 0..40 {
        let node = t.node.clone();
        flood.push(tokio::spawn(async move {
            ask(&node, "flood", &format!("chat {MODEL} f{i}")).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    // The light agent asks 5 questions, one after the other, meanwhile.
    for i in 0..5 {
        assert_eq!(
            chat(&t, "light", MODEL, &format!("l{i}")).await,
            format!("l{i}")
        );
    }
    let flood_done = flood.iter().filter(|f| f.is_finished()).count();
    assert!(flood_done > 0, "the flooding agent made progress too");
    assert!(
        flood_done < 30,
        "the light agent's 5 calls did not wait for the flood ({flood_done} of 40 done)"
    );
    for f in flood {
        assert!(f.await.unwrap().starts_with('f'));
    }
    assert_eq!(fake.max_in_flight(), 1);
    t.stop().await;
}

#[tokio::test]
async fn a_full_queue_answers_unavailable_at_once_and_says_which_limit() {
    let fake = FakeOllama::start().await;
    // Long enough that all four calls, 20 ms apart, reach the limiter while the first is
    // in flight, even on a machine that stalls for a second.
    fake.set(|s| s.delay = Duration::from_millis(1_500));
    let t = node(&fake.url, |l| {
        l.num_parallel = 1;
        l.queue_capacity = 1;
    })
    .await;
    let names: Vec<String> = (0..4).map(|i| format!("agent-{i}")).collect();
    for name in &names {
        load_probe(&t, name, "").await;
    }
    let mut calls = Vec::new();
    for name in &names {
        let (node, name) = (t.node.clone(), name.clone());
        calls.push(tokio::spawn(async move {
            ask(&node, &name, &format!("chat {MODEL} q")).await
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answered = 0;
    let mut refused = 0;
    for call in calls {
        let r = call.await.unwrap();
        if r == "q" {
            answered += 1;
        } else {
            assert!(
                r.starts_with("error: unavailable:") && r.contains("queue_capacity = 1"),
                "{r}"
            );
            refused += 1;
        }
    }
    assert_eq!(
        (answered, refused),
        (2, 2),
        "one in flight, one waiting, two refused"
    );
    t.stop().await;
}

#[tokio::test]
async fn budgets_from_the_manifest_run_out_with_quota_exceeded_naming_the_field() {
    let fake = FakeOllama::start().await;
    let t = node(&fake.url, |_| {}).await;
    load_probe(&t, "rpm", "max_requests_per_minute = 2").await;
    assert_eq!(chat(&t, "rpm", MODEL, "one").await, "one");
    assert_eq!(chat(&t, "rpm", MODEL, "two").await, "two");
    let r = chat(&t, "rpm", MODEL, "three").await;
    assert!(
        r.starts_with("error: quota exceeded:") && r.contains("[llm] max_requests_per_minute of 2"),
        "{r}"
    );

    load_probe(&t, "tpm", "max_tokens_per_minute = 10").await;
    assert_eq!(
        chat(&t, "tpm", MODEL, "six words of prompt and answer").await,
        "six words of prompt and answer"
    );
    let r = chat(&t, "tpm", MODEL, "again").await;
    assert!(
        r.starts_with("error: quota exceeded:") && r.contains("[llm] max_tokens_per_minute of 10"),
        "{r}"
    );

    let manifest = format!(
        "[agent]\nname = \"greedy\"\n[llm]\nmodels = [\"{MODEL}\"]\nmax_tokens_per_call = 100\n[config]\nmodel = \"{MODEL}\"\nmax_tokens = \"500\"\n"
    );
    t.load("expert", "greedy", &manifest).await;
    let r = t.ask("agent.to.greedy.ask", "tell me everything").await;
    assert!(
        r.starts_with("error: quota exceeded:") && r.contains("[llm] max_tokens_per_call of 100"),
        "{r}"
    );
    // Without max-tokens, the per-call cap is sent as the completion limit.
    load_probe(&t, "capped", "max_tokens_per_call = 2").await;
    assert_eq!(chat(&t, "capped", MODEL, "a b c d").await, "a b");
    let requests = fake.requests();
    assert_eq!(requests, 4, "refused calls never reach the backend");
    let metrics = t.node.metrics.encode();
    assert!(metrics.contains("agent_host_llm_errors_total{agent=\"rpm\",cluster=\"default\",backend=\"ollama\",error=\"quota_exceeded\"} 1"), "{metrics}");
    t.stop().await;
}

#[tokio::test]
async fn the_breaker_opens_refuses_in_microseconds_probes_after_the_cool_down_and_closes() {
    let fake = FakeOllama::start().await;
    let t = node(&fake.url, |l| {
        l.retries = 0;
        l.breaker_failures = 3;
        // Long enough that a stalled machine does not end it while the open breaker is
        // being tested.
        l.breaker_cooldown_ms = 2_000;
    })
    .await;
    load_probe(&t, "probe", "").await;
    let breaker = &t.node.llm.route(MODEL).breaker;
    fake.set(|s| s.busy = u32::MAX);
    for _ in 0..3 {
        assert!(chat(&t, "probe", MODEL, "hi").await.contains("is busy"));
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    let sent = fake.requests();

    // Open: refused at once, without touching the backend.
    let r = chat(&t, "probe", MODEL, "hi").await;
    assert!(
        r.starts_with("error: unavailable: LLM backend 'ollama' is failing (circuit breaker open"),
        "{r}"
    );
    let agent = service_agent(&t, "svc");
    let mut took = Vec::new();
    for _ in 0..101 {
        let started = Instant::now();
        let err = t
            .node
            .llm
            .call(
                &agent,
                MODEL,
                Request::Chat {
                    messages: vec![user("x")],
                    options: options(),
                },
            )
            .await
            .unwrap_err();
        took.push(started.elapsed());
        assert!(matches!(err, WitError::Unavailable(_)), "{err:?}");
    }
    took.sort();
    assert!(
        took[50] < Duration::from_millis(1),
        "median refusal took {:?}",
        took[50]
    );
    assert_eq!(fake.requests(), sent);

    // After the cool-down one probe goes through; it fails, the breaker opens again.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert!(chat(&t, "probe", MODEL, "hi").await.contains("is busy"));
    assert_eq!(fake.requests(), sent + 1);
    assert_eq!(breaker.state(), BreakerState::Open);

    // The backend recovers: the next probe succeeds and closes the breaker.
    fake.set(|s| s.busy = 0);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(chat(&t, "probe", MODEL, "back").await, "back");
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert_eq!(chat(&t, "probe", MODEL, "again").await, "again");
    let metrics = t.node.metrics.encode();
    for line in [
        "agent_host_llm_breaker_state{backend=\"ollama\"} 0",
        "agent_host_llm_breaker_transitions_total{backend=\"ollama\",to=\"open\"} 2",
        "agent_host_llm_breaker_transitions_total{backend=\"ollama\",to=\"half_open\"} 2",
        "agent_host_llm_breaker_transitions_total{backend=\"ollama\",to=\"closed\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    t.stop().await;
}
