//! A test agent that does what each message tells it and replies with the outcome, so
//! tests can exercise every host capability and its manifest checks from outside.
//!
//! Commands (payload text): `publish SUBJECT TEXT`, `send AGENT COMMAND TEXT`,
//! `request SUBJECT TEXT`, `ask AGENT COMMAND TEXT`, `fanout AGENT,AGENT,... TEXT`,
//! `kv-set KEY VALUE`, `kv-get KEY`, `kv-list PREFIX`, `kv-cas KEY EXPECTED|none VALUE`,
//! `config KEY`, `self`, `chat MODEL TEXT`, `seen`, `print TEXT` (stdout and stderr),
//! `spin` (loops forever), `fill N` (N bytes of state), `panic`, `fail`, `flaky` (fails
//! without a reply the first time, answers `steady` after).
use std::time::Duration;

use agent_sdk::prelude::*;

#[derive(Default, Serialize, Deserialize)]
struct Probe {
    seen: u64,
    /// Ballast to give the state a size (`fill N`), for upgrade benchmarks.
    #[serde(default)]
    blob: String,
    /// Whether a `flaky` message has failed once already.
    #[serde(default)]
    flaked: bool,
}

impl Agent for Probe {
    fn handle(&mut self, msg: Message) -> Result<()> {
        self.seen += 1;
        let text = msg.text()?.to_string();
        let mut words = text.splitn(2, ' ');
        let verb = words.next().unwrap_or_default();
        let rest = words.next().unwrap_or_default();
        let arg = |n: usize| rest.splitn(n + 1, ' ').collect::<Vec<_>>();
        let second = Duration::from_secs(2);
        if verb == "flaky" && !self.flaked {
            self.flaked = true;
            return Err(AgentError::new(
                "probe fails its first flaky message, without a reply",
            ));
        }
        let outcome: Result<String> = match verb {
            "publish" => {
                let a = arg(1);
                messaging::publish(a[0], a.get(1).copied().unwrap_or_default()).map(|_| "ok".into())
            }
            "send" => {
                let a = arg(2);
                messaging::send(
                    a[0],
                    a.get(1).copied().unwrap_or_default(),
                    a.get(2).copied().unwrap_or_default(),
                )
                .map(|_| "ok".into())
            }
            "request" => {
                let a = arg(1);
                messaging::request(a[0], a.get(1).copied().unwrap_or_default(), second)
                    .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            }
            "ask" => {
                let a = arg(2);
                messaging::ask(
                    a[0],
                    a.get(1).copied().unwrap_or_default(),
                    a.get(2).copied().unwrap_or_default(),
                    second,
                )
                .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            }
            "fanout" => {
                let a = arg(1);
                let body = a.get(1).copied().unwrap_or_default();
                let requests: Vec<_> = a[0]
                    .split(',')
                    .map(|to| messaging::to_agent(to, "fanout", body))
                    .collect();
                let answers: Vec<String> = messaging::request_many(&requests, second)
                    .into_iter()
                    .map(|r| match r {
                        Ok(m) => String::from_utf8_lossy(&m.payload).into_owned(),
                        Err(e) => format!("error: {}", e.message()),
                    })
                    .collect();
                Ok(answers.join("|"))
            }
            "kv-set" => {
                let a = arg(1);
                kv::set(a[0], a.get(1).copied().unwrap_or_default()).map(|rev| rev.to_string())
            }
            "kv-get" => kv::get(rest).map(|v| match v {
                Some(v) => String::from_utf8_lossy(&v).into_owned(),
                None => "none".into(),
            }),
            "kv-list" => kv::list_keys(rest).map(|keys| keys.join(",")),
            "kv-cas" => {
                let a = arg(2);
                let expected = a.get(1).and_then(|e| e.parse::<u64>().ok());
                kv::compare_and_swap(a[0], expected, a.get(2).copied().unwrap_or_default()).map(
                    |o| match o {
                        kv::CasOutcome::Swapped(rev) => format!("swapped {rev}"),
                        kv::CasOutcome::Conflict(cur) => format!("conflict {cur:?}"),
                    },
                )
            }
            "config" => Ok(runtime::config(rest).unwrap_or_else(|| "none".into())),
            "self" => {
                let me = runtime::me();
                Ok(format!("{}.{}.{}", me.cluster, me.name, me.id))
            }
            "chat" => {
                let a = arg(1);
                let messages = [llm::message(
                    llm::Role::User,
                    a.get(1).copied().unwrap_or_default(),
                )];
                llm::chat(a[0], &messages, &Default::default()).map(|c| c.text)
            }
            "seen" => Ok(self.seen.to_string()),
            "flaky" => Ok("steady".into()),
            "fill" => {
                let n: usize = rest
                    .trim()
                    .parse()
                    .map_err(|e| AgentError::new(format!("fill {rest}: {e}")))?;
                self.blob = "x".repeat(n);
                Ok(n.to_string())
            }
            "print" => {
                println!("{rest}");
                eprintln!("to stderr: {rest}");
                Ok("printed".into())
            }
            "spin" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "panic" => panic!("probe was told to panic"),
            "fail" => Err(AgentError::new("probe was told to fail")),
            other => Err(AgentError::new(format!("unknown probe command '{other}'"))),
        };
        match outcome {
            Ok(answer) => msg.reply(answer),
            Err(e) => {
                msg.reply(format!("error: {}", e.message()))?;
                Err(e)
            }
        }
    }
}

export_agent!(Probe);
