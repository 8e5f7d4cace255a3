//! The client verbs: each sends one request to the running node and prints the answer.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::output::{print_json, print_line, print_payload, push_line};
use super::Command;
use crate::agent::canary::{CanaryStarted, CanaryStatus};
use crate::agent::upgrade::SwapReport;
use crate::agent::AgentSummary;
use crate::control::client::ControlClient;
use crate::control::protocol::{Reply, Request};
use crate::node::LoadRequest;
use crate::node::WaveReport;

/// `path` made absolute against the current directory (the node has its own).
pub fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    })
}

pub async fn client_verb(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Load {
            component,
            manifest,
            name,
            control,
        } => {
            for p in component.iter().chain(manifest.iter()) {
                if !p.is_file() {
                    anyhow::bail!("{} is not a file", p.display());
                }
            }
            let req = LoadRequest {
                component: component.as_deref().map(absolute).transpose()?,
                manifest: manifest.as_deref().map(absolute).transpose()?,
                name,
            };
            let value = ControlClient::connect(&control.path())
                .await?
                .call(&Request::Load(req))
                .await?;
            let agent: AgentSummary = summary(value)?;
            print_line(format_args!(
                "loaded '{}' v{} as {}.{}.{}",
                agent.name, agent.version, agent.cluster, agent.name, agent.id
            ));
            for s in &agent.subscriptions {
                print_line(format_args!("  subscribed to {s}"));
            }
        }
        Command::Unload { agent, control } => {
            ControlClient::connect(&control.path())
                .await?
                .call(&Request::Unload {
                    name: agent.clone(),
                })
                .await?;
            print_line(format_args!("unloaded '{agent}'"));
        }
        Command::Upgrade { args, control } => {
            let req = super::upgrade::request(&args).map_err(anyhow::Error::msg)?;
            let value = ControlClient::connect(&control.path())
                .await?
                .call(&req)
                .await?;
            print_upgrade(&req, value)?;
        }
        Command::Rollback {
            agent,
            force,
            control,
        } => {
            let value = ControlClient::connect(&control.path())
                .await?
                .call(&Request::Rollback { name: agent, force })
                .await?;
            let r: SwapReport = serde_json::from_value(value)?;
            let lost = if r.lost_messages > 0 {
                format!(
                    "; forced: the effects of {} message(s) handled by v{} were lost",
                    r.lost_messages, r.from_version
                )
            } else {
                String::new()
            };
            print_line(format_args!(
                "rolled back '{}' v{} -> v{} (paused {} us){lost}",
                r.agent, r.from_version, r.to_version, r.pause_us
            ));
        }
        Command::Promote { agent, control } => {
            let value = ControlClient::connect(&control.path())
                .await?
                .call(&Request::Promote { name: agent })
                .await?;
            print_line(format_args!(
                "{}",
                value["text"].as_str().unwrap_or_default()
            ));
        }
        Command::List { json, control } => {
            let value = ControlClient::connect(&control.path())
                .await?
                .call(&Request::List)
                .await?;
            if json {
                print_json(&value)?;
            } else {
                print!("{}", table(&value));
            }
        }
        Command::Health { json, control } => {
            let value = ControlClient::connect(&control.path())
                .await?
                .call(&Request::Health)
                .await?;
            let report: crate::telemetry::health::HealthReport = serde_json::from_value(value)?;
            if json {
                print_json(&report)?;
            } else {
                print!("{}", report.to_text());
            }
            if !report.is_ok() {
                anyhow::bail!("the node is degraded (see above)");
            }
        }
        Command::Status {
            agent,
            json,
            control,
        } => {
            let value = ControlClient::connect(&control.path())
                .await?
                .call(&Request::Status { name: agent })
                .await?;
            if json {
                print_json(&value)?;
            } else {
                print!("{}", status(&value));
            }
        }
        Command::Send {
            subject,
            payload,
            headers,
            wait,
            control,
        } => {
            let headers = headers
                .iter()
                .map(|h| parse_header(h))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let wait_ms = match wait {
                Some(secs) if !(secs > 0.0 && secs.is_finite()) => anyhow::bail!(
                    "--wait {secs}: expected a positive number of seconds, e.g. --wait 2"
                ),
                Some(secs) => Some((secs * 1000.0) as u64),
                None => None,
            };
            let req = Request::Send {
                subject,
                headers,
                payload: payload.into_bytes(),
                wait_ms,
            };
            let value = ControlClient::connect(&control.path())
                .await?
                .call(&req)
                .await?;
            if wait_ms.is_some() {
                let reply: Reply = serde_json::from_value(value)?;
                print_payload(&reply.payload)?;
            }
        }
        Command::Run { .. } | Command::Check { .. } => unreachable!("handled in cli::main"),
    }
    Ok(())
}

fn print_upgrade(req: &Request, value: Value) -> anyhow::Result<()> {
    match req {
        Request::Upgrade { canary: None, .. } => {
            let r: SwapReport = serde_json::from_value(value)?;
            print_line(format_args!(
                "upgraded '{}' v{} -> v{} ({} bytes of state, paused {} us); v{} kept warm for {} s: `host rollback {}` or `host promote {}`",
                r.agent, r.from_version, r.to_version, r.state_bytes, r.pause_us, r.from_version, r.rollback_window_secs, r.agent, r.agent
            ));
        }
        Request::Upgrade { .. } => {
            let s: CanaryStarted = serde_json::from_value(value)?;
            let gates: Vec<String> = s.plan.gates.iter().map(ToString::to_string).collect();
            print_line(format_args!(
                "canary of '{}' started: v{} -> v{} on {}% of conversations, then {:?} every {} ms while gates hold ({}); watch with `host status {}`, stop with `host rollback {}` or `host promote {}`",
                s.agent, s.from_version, s.to_version, s.plan.steps[0], s.plan.steps, s.plan.interval.as_millis(), gates.join(", "), s.agent, s.agent, s.agent
            ));
        }
        _ => {
            let r: WaveReport = serde_json::from_value(value)?;
            for w in &r.waves {
                print_line(format_args!("{}", w.text));
            }
            print_line(format_args!("{}", r.text));
            if !r.completed {
                anyhow::bail!("{}", r.text);
            }
        }
    }
    Ok(())
}

fn parse_header(text: &str) -> anyhow::Result<(String, String)> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => anyhow::bail!("--header {text:?}: expected KEY=VALUE, e.g. --header Nats-Msg-Id=42"),
    }
}

fn summary(value: Value) -> anyhow::Result<AgentSummary> {
    serde_json::from_value(value)
        .map_err(|e| anyhow::anyhow!("unexpected answer from the node: {e}"))
}

/// `host list` as a table, one line per agent, each escaped (an agent picks its version).
fn table(value: &Value) -> String {
    let mut out = String::new();
    let Some(agents) = value.as_array() else {
        return out;
    };
    if agents.is_empty() {
        push_line(
            &mut out,
            format_args!("no agents loaded (load one with `host load plugin.wasm`)"),
        );
        return out;
    }
    push_line(
        &mut out,
        format_args!(
            "{:<20} {:<18} {:<10} {:<11} {:>9} {:>7} {:>6} {:>7}",
            "NAME", "CLUSTER", "VERSION", "STATE", "HANDLED", "ERRORS", "TRAPS", "DENIED"
        ),
    );
    for a in agents {
        let s = |k: &str| a[k].as_str().unwrap_or("").to_string();
        let n = |k: &str| a[k].as_u64().unwrap_or(0);
        push_line(
            &mut out,
            format_args!(
                "{:<20} {:<18} {:<10} {:<11} {:>9} {:>7} {:>6} {:>7}",
                s("name"),
                s("cluster"),
                s("version"),
                s("state"),
                n("handled"),
                n("errors"),
                n("traps"),
                n("denied")
            ),
        );
    }
    out
}

/// `host status` as text: every line escaped, since the agent controls its version, its
/// errors and (through them) its events; the grants block keeps its line breaks.
fn status(value: &Value) -> String {
    let mut out = String::new();
    let o = &mut out;
    let a = &value["agent"];
    let s = |k: &str| a[k].as_str().unwrap_or("").to_string();
    let n = |k: &str| a[k].as_u64().unwrap_or(0);
    push_line(
        o,
        format_args!("agent      {}.{}.{}", s("cluster"), s("name"), s("id")),
    );
    push_line(
        o,
        format_args!("version    {}  (sha256 {})", s("version"), s("digest")),
    );
    push_line(o, format_args!("state      {}", s("state")));
    push_line(
        o,
        format_args!(
            "messages   {} handled, {} errors, {} traps, {} denied calls, {} restarts, {} dead-lettered, {} dropped (mailbox full), {} bytes waiting",
            n("handled"),
            n("errors"),
            n("traps"),
            n("denied"),
            n("restarts"),
            n("dead_lettered"),
            n("dropped"),
            n("queued_bytes")
        ),
    );
    let hits = |k: &str| a["limit_hits"][k].as_u64().unwrap_or(0);
    push_line(
        o,
        format_args!(
            "limits     {} over CPU budget, {} memory growths refused, {} stack overflows, {} blocked host calls, {} file writes refused, {} messages over the publish rate, {} table growths refused, {} log lines over the log rate, {} lifecycle calls over their time bound, {} snapshots refused",
            hits("cpu"),
            hits("memory"),
            hits("stack"),
            hits("host_call"),
            hits("files"),
            hits("publish_rate"),
            hits("table"),
            hits("log_rate"),
            hits("lifecycle"),
            hits("snapshot")
        ),
    );
    if let Some(subs) = a["subscriptions"].as_array() {
        for sub in subs {
            push_line(o, format_args!("listens    {}", sub.as_str().unwrap_or("")));
        }
    }
    if let Some(p) = a["previous_version"].as_str() {
        push_line(
            o,
            format_args!("warm       v{p} (kept for `host rollback`)"),
        );
    }
    if let Ok(Some(c)) = serde_json::from_value::<Option<CanaryStatus>>(a["canary"].clone()) {
        push_line(
            o,
            format_args!(
                "strategy   canary v{} -> v{}: {}% of conversations on v{} (steps {:?}, a check every {} ms); {} failed check(s) in a row",
                c.blue_version, c.green_version, c.percent, c.green_version, c.steps, c.interval_ms, c.failed_checks
            ),
        );
        push_line(
            o,
            format_args!(
                "canary     {} messages on v{}, {} on v{}; {} state hand-offs, {:.0} us each",
                c.blue_messages,
                c.blue_version,
                c.green_messages,
                c.green_version,
                c.switches,
                c.switch_us_mean
            ),
        );
        for r in &c.last_check {
            push_line(o, format_args!("gate       {r}"));
        }
    }
    if let Some(e) = a["last_error"].as_str() {
        push_line(o, format_args!("last error {e}"));
    }
    if let Some(events) = a["events"].as_array() {
        for e in events {
            push_line(
                o,
                format_args!("event      {}", e["text"].as_str().unwrap_or_default()),
            );
        }
    }
    if let Some(g) = value["grants"].as_str() {
        out.push('\n');
        out.push_str(&crate::escape::for_block(g));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const HOSTILE_TEXT: &str = "1.0\x1b]0;owned\x07\u{9b}2J\nfake line\r\u{202e}";

    /// Asserts `out` has `lines` lines and no control character but line breaks and the
    /// tabs of a block that may have them.
    fn assert_no_raw_controls(out: &str, lines: usize) {
        assert_eq!(out.lines().count(), lines, "{out}");
        assert!(
            !out.chars()
                .any(|c| crate::escape::is_hazard(c) && c != '\n' && c != '\t'),
            "{out:?}"
        );
    }

    #[test]
    fn a_version_an_agent_chose_is_shown_escaped_in_the_list() {
        let list = json!([{"name": "evil", "cluster": "default", "version": HOSTILE_TEXT, "state": "running"}]);
        let out = table(&list);
        assert_no_raw_controls(&out, 2);
        assert!(
            out.contains("1.0\\u{1b}]0;owned\\u{7}\\u{9b}2J\\nfake line\\r\\u{202e}"),
            "{out}"
        );
    }

    #[test]
    fn texts_an_agent_controls_are_shown_escaped_in_its_status() {
        let value = json!({
            "agent": {
                "name": "evil", "version": HOSTILE_TEXT, "last_error": HOSTILE_TEXT,
                "previous_version": HOSTILE_TEXT,
                "events": [{"at_ms": 1, "text": HOSTILE_TEXT}],
                "subscriptions": ["agent.to.evil.>"]
            },
            "grants": "may publish to:\n\tagent.x\x1b[2J"
        });
        let out = status(&value);
        // agent, version, state, messages, limits, listens, warm, last error, event, blank,
        // two lines of grants.
        assert_no_raw_controls(&out, 12);
        for prefix in ["version    ", "warm       v", "last error ", "event      "] {
            assert!(
                out.contains(&format!("{prefix}1.0\\u{{1b}}]0;owned")),
                "{prefix}: {out}"
            );
        }
        assert!(
            out.contains("may publish to:\n\tagent.x\\u{1b}[2J"),
            "{out}"
        );
        assert_eq!(
            out.matches('\t').count(),
            1,
            "only the grants' own tab: {out:?}"
        );
        assert!(
            out.contains(", 0 lifecycle calls over their time bound, 0 snapshots refused\n"),
            "{out}"
        );
    }
}
