//! A test agent that attacks the host it runs in. The text of each message picks the
//! attack; when the agent survives it, it replies with what happened, so the tests can
//! show that the host contained it (tests/hostile.rs).
//!
//! Commands (payload text):
//! - `ping`: replies `pong` (tests use it to know the earlier messages were handled).
//! - `spin`: loops forever; the CPU budget per message must stop it.
//! - `work N`: N rounds of honest CPU work (a hash chain), then replies; not an attack — it
//!   shows a healthy agent is charged its CPU, not the time it waits for its turn.
//! - `alloc`: grows its memory 1 MiB at a time with fallible allocation until growth is
//!   refused, then replies how far it got. `alloc abort`: the same with infallible
//!   allocation, so the refusal aborts the instance (a trap).
//! - `overflow`: unbounded recursion; the stack limit must trap it.
//! - `trap`: panics.
//! - `flood N SUBJECT`: publishes N messages to SUBJECT as fast as it can.
//! - `big N SUBJECT`: publishes one message of N bytes.
//! - `big-header N SUBJECT`: publishes a short message with one header of N bytes.
//! - `hoard`: writes 64 KiB values to its KV namespace until the host refuses.
//! - `forbidden SUBJECT`: publishes where its manifest grants nothing.
//! - `spoof SUBJECT AGENT-REF`: publishes with a forged `Agent-Ref` sender header.
//! - `other-kv ID KEY`: tries every way it can think of to name key KEY of agent ID.
//! - `fs`, `fs read PATH`, `fs write PATH TEXT`, `fs list PATH`: WASI file access via std.
//!   `fs fill PATH N` writes a file of N bytes, `fs append PATH N` appends N bytes,
//!   `fs truncate PATH N` sets a file's length to N (to test the `[files]` quota).
//! - `env`: reads the environment, arguments and working directory via std.
//! - `net [ADDR]`: opens TCP and UDP sockets and resolves a name via std.
//! - `sleep MS`: blocks in a WASI clock call (a host call) for MS milliseconds.
//! - `send-ref CLUSTER NAME ID COMMAND`: `send` to an agent by a reference it made up
//!   (any text in each field), with no SDK helper in between. `ask-ref ...` the same as a
//!   request, replying with the answer.
//! - `publish-id SUBJECT ID TEXT`: publishes TEXT with its own `Nats-Msg-Id: ID`.
//! - `headers N KEY SUBJECT`: publishes one message with N headers named KEY (`-`: empty)
//!   with empty values.
//! - `log TEXT`: logs TEXT (raw: newlines, ESC and all) with `runtime.log`; replies
//!   `logged TEXT`.
//! - `print TEXT`: writes TEXT and a newline to stdout (raw), which the host logs by line.
//! - `say N`: N `runtime.log` lines, as fast as it can; replies how many it wrote.
//! - `deny-flood N`: N publishes its manifest does not grant; replies how many were denied.
//! - `fail TEXT`: `handle` returns an error with TEXT (raw), the agent's last error.
//! - `bloat N`: adds N bytes to its state (what `snapshot` hands the host) and replies how
//!   many it holds (`bloat 0` only tells); `slim` drops them again.
//!
//! Manifest `[config] init = "panic"` makes `init` panic always (the load is refused);
//! `init = "panic-on-restart"` makes it panic on every start after the first (it leaves a
//! mark in its KV namespace), so one trap turns into a crash loop; `init = "fail TEXT"`
//! makes `init` return an error with TEXT (the load is refused with it). `init = "sleepy"`
//! and `restore = "sleepy"` make `init` / `restore` loop on short host calls: 120 sleeps of
//! 500 ms, each well within any per-call bound.
use std::fmt::Write as _;
use std::time::Duration;

use agent_sdk::prelude::*;

#[derive(Default, Serialize, Deserialize)]
struct Hostile {
    attacks: u64,
    /// Ballast `bloat` grows the state with, to make the host store a huge snapshot.
    #[serde(default)]
    ballast: String,
}

impl Agent for Hostile {
    fn init(&mut self, _me: &AgentRef) -> Result<()> {
        match runtime::config("init").as_deref() {
            Some("panic") => panic!("hostile init was told to panic"),
            Some("panic-on-restart") => {
                if kv::get("booted")?.is_some() {
                    panic!("hostile init panics on every restart");
                }
                kv::set("booted", "yes")?;
            }
            Some("sleepy") => sleepy(),
            Some(init) if init.starts_with("fail ") => {
                return Err(AgentError::new(&init["fail ".len()..]));
            }
            _ => {}
        }
        Ok(())
    }

    fn restore(&mut self, _from_version: &str, state: &[u8]) -> Result<()> {
        if runtime::config("restore").as_deref() == Some("sleepy") {
            sleepy();
        }
        *self = state::read_or_convert::<Hostile, Hostile>(state)?;
        Ok(())
    }

    fn handle(&mut self, msg: Message) -> Result<()> {
        self.attacks += 1;
        let text = msg.text()?.to_string();
        let (verb, rest) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        let args: Vec<&str> = rest.split_whitespace().collect();
        let outcome = match verb {
            "ping" => "pong".to_string(),
            "spin" => spin(),
            "work" => work(rest.trim().parse().unwrap_or(1_000_000)),
            "alloc" if rest.trim() == "abort" => alloc_abort(),
            "alloc" => alloc(),
            "overflow" => format!("overflow: returned {}", recurse(0, &mut [0; 64])),
            "trap" => panic!("hostile was told to trap"),
            "flood" => flood(&args),
            "big" => big(&args),
            "big-header" => big_header(&args),
            "hoard" => hoard(),
            "forbidden" => forbidden(args.first().copied().unwrap_or("agent.secret.stuff")),
            "spoof" => spoof(&args),
            "other-kv" => other_kv(&args),
            "fs" => fs(&args, rest),
            "env" => env(),
            "net" => net(args.first().copied().unwrap_or("127.0.0.1:9")),
            "sleep" => {
                let ms: u64 = rest.trim().parse().unwrap_or(60_000);
                std::thread::sleep(Duration::from_millis(ms));
                format!("slept {ms} ms")
            }
            "send-ref" => by_reference(&args, false),
            "ask-ref" => by_reference(&args, true),
            "publish-id" => publish_id(&args),
            "headers" => many_headers(&args),
            // The node's log and the operator's terminal (tests/hostile/logs.rs).
            "log" => {
                runtime::info(rest);
                format!("logged {rest}")
            }
            "print" => {
                println!("{rest}");
                "printed".to_string()
            }
            "say" => say(rest.trim().parse().unwrap_or(1_000)),
            "deny-flood" => deny_flood(rest.trim().parse().unwrap_or(1_000_000)),
            "fail" => return Err(AgentError::new(rest)),
            "bloat" | "slim" => {
                match verb {
                    "bloat" => self
                        .ballast
                        .push_str(&"b".repeat(rest.trim().parse().unwrap_or(0))),
                    _ => self.ballast = String::new(),
                }
                format!("{verb}: {} bytes of ballast", self.ballast.len())
            }
            other => return Err(AgentError::new(format!("unknown attack '{other}'"))),
        };
        msg.reply(outcome)
    }
}

/// 120 host calls of 500 ms each: every one short, a minute in all.
fn sleepy() {
    for _ in 0..120 {
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `send` (or a request) to a reference whose every field the attacker chose.
fn by_reference(args: &[&str], ask: bool) -> String {
    use agent_sdk::bindings::agent::host::messaging as raw;
    // `''` stands for an empty field (the command is split at spaces).
    let field = |i: usize| match args.get(i).copied().unwrap_or_default() {
        "''" => String::new(),
        text => text.to_string(),
    };
    let to = AgentTarget::Agent(AgentRef {
        cluster: field(0),
        name: field(1),
        id: field(2),
    });
    let command = field(3);
    let outcome = if ask {
        let dest = agent_sdk::Destination::Agent(agent_sdk::AgentCommand { to, command });
        raw::request(&dest, &[], b"by reference", 1_000)
            .map(|m| format!("answered {}", String::from_utf8_lossy(&m.payload)))
    } else {
        raw::send(&to, &command, &[], b"by reference").map(|()| "sent".to_string())
    };
    let verb = if ask { "ask-ref" } else { "send-ref" };
    match outcome {
        Ok(done) => format!("{verb}: {done}"),
        Err(e) => format!("{verb}: refused: {}", agent_sdk::describe_host_error(&e)),
    }
}

fn publish_id(args: &[&str]) -> String {
    let subject = args.first().copied().unwrap_or("hostile.id");
    let id = args.get(1).copied().unwrap_or("1");
    let text = args.get(2).copied().unwrap_or("from hostile");
    let headers = [Header {
        key: "Nats-Msg-Id".to_string(),
        value: id.to_string(),
    }];
    match messaging::publish_with_headers(subject, &headers, text) {
        Ok(()) => format!("publish-id: published {id}"),
        Err(e) => format!("publish-id: refused: {}", e.message()),
    }
}

fn many_headers(args: &[&str]) -> String {
    let n: usize = args.first().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let key = match args.get(1).copied().unwrap_or("-") {
        "-" => String::new(),
        key => key.to_string(),
    };
    let subject = args.get(2).copied().unwrap_or("hostile.headers");
    let mut headers = Vec::new();
    if headers.try_reserve_exact(n).is_err() {
        return format!("headers: cannot hold {n} headers");
    }
    headers.extend((0..n).map(|_| Header {
        key: key.clone(),
        value: String::new(),
    }));
    match messaging::publish_with_headers(subject, &headers, "many headers") {
        Ok(()) => format!("headers: published {n}"),
        Err(e) => format!("headers: refused: {}", e.message()),
    }
}

fn spin() -> String {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

/// Honest work: `rounds` steps of a hash chain, the same CPU wherever and whenever it runs
/// (wall time is not: a busy node makes it wait between its turns).
fn work(rounds: u64) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..rounds {
        x = std::hint::black_box((x ^ i).wrapping_mul(0xbf58_476d_1ce4_e5b9).rotate_left(31));
    }
    format!("work: {x:x}")
}

/// Grows memory until the host refuses; the refusal must come back as a failed allocation.
fn alloc() -> String {
    const CHUNK: usize = 1 << 20;
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = Vec::new();
        if chunk.try_reserve_exact(CHUNK).is_err() {
            break;
        }
        held.push(std::hint::black_box(chunk));
    }
    format!("alloc: growth refused after {} MiB", held.len())
}

/// Grows memory with infallible allocation: the refusal aborts the instance.
fn alloc_abort() -> String {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        held.push(std::hint::black_box(Vec::with_capacity(1 << 20)));
        std::hint::black_box(&held);
    }
}

/// Recurses without end (the depth check never holds), using wasm and shadow stack.
#[inline(never)]
fn recurse(depth: u64, pad: &mut [u8; 64]) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    pad[(depth % 64) as usize] = depth as u8;
    let mut next = [0u8; 64];
    let below = recurse(
        std::hint::black_box(depth + 1),
        std::hint::black_box(&mut next),
    );
    below + u64::from(pad[0]) + u64::from(next[1])
}

fn flood(args: &[&str]) -> String {
    let n: u64 = args.first().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let subject = args.get(1).copied().unwrap_or("hostile.flood");
    let mut sent = 0u64;
    let mut first_error = None;
    for i in 0..n {
        match messaging::publish(subject, i.to_string()) {
            Ok(()) => sent += 1,
            Err(e) => {
                first_error.get_or_insert_with(|| e.message().to_string());
            }
        }
    }
    match first_error {
        None => format!("flood: published {sent} of {n}"),
        Some(e) => format!("flood: published {sent} of {n}; first error: {e}"),
    }
}

fn say(lines: u64) -> String {
    for i in 0..lines {
        runtime::info(&format!("say {i}"));
    }
    format!("say: wrote {lines} lines")
}

/// `n` publishes to a subject no manifest of the tests grants: each is a denied host call.
fn deny_flood(n: u64) -> String {
    let mut denied = 0u64;
    for _ in 0..n {
        if let Err(e) = messaging::publish("agent.secret.flood", "") {
            if e.message().starts_with("denied:") {
                denied += 1;
            }
        }
    }
    format!("deny-flood: {denied} of {n} denied")
}

fn big(args: &[&str]) -> String {
    let n: usize = args.first().and_then(|n| n.parse().ok()).unwrap_or(1 << 20);
    let subject = args.get(1).copied().unwrap_or("hostile.big");
    match messaging::publish(subject, vec![b'x'; n]) {
        Ok(()) => format!("big: published {n} bytes"),
        Err(e) => format!("big: refused: {}", e.message()),
    }
}

fn big_header(args: &[&str]) -> String {
    let n: usize = args.first().and_then(|n| n.parse().ok()).unwrap_or(1 << 20);
    let subject = args.get(1).copied().unwrap_or("hostile.big");
    let headers = [Header {
        key: "X-Big".to_string(),
        value: "h".repeat(n),
    }];
    match messaging::publish_with_headers(subject, &headers, "small") {
        Ok(()) => format!("big-header: published a {n}-byte header"),
        Err(e) => format!("big-header: refused: {}", e.message()),
    }
}

fn hoard() -> String {
    let value = vec![b'x'; 64 << 10];
    for i in 0u32.. {
        if let Err(e) = kv::set(&format!("hoard.{i}"), &value) {
            return format!("hoard: stored {} KiB, then: {}", i * 64, e.message());
        }
    }
    unreachable!("the loop only ends by returning")
}

fn forbidden(subject: &str) -> String {
    match messaging::publish(subject, "stolen") {
        Ok(()) => format!("forbidden: published to {subject}"),
        Err(e) => format!("forbidden: refused: {}", e.message()),
    }
}

fn spoof(args: &[&str]) -> String {
    let subject = args.first().copied().unwrap_or("hostile.spoof");
    let forged = args.get(1).copied().unwrap_or("default.echo.0");
    let headers = [Header {
        key: "Agent-Ref".to_string(),
        value: forged.to_string(),
    }];
    match messaging::publish_with_headers(subject, &headers, "from someone else") {
        Ok(()) => format!("spoof: published as {forged}"),
        Err(e) => format!("spoof: refused: {}", e.message()),
    }
}

/// Every spelling of "agent ID's key KEY" it can think of; each answer is reported.
fn other_kv(args: &[&str]) -> String {
    let id = args.first().copied().unwrap_or("unknown");
    let key = args.get(1).copied().unwrap_or("secret");
    let tries = [
        format!("{id}/{key}"),
        format!("../{id}/{key}"),
        format!("{id}\0{key}"),
        format!("/{id}/{key}"),
        format!("{id}.{key}"),
        format!("sys.snapshots/{id}"),
        key.to_string(),
    ];
    let mut out = String::from("other-kv:");
    for k in &tries {
        let answer = match kv::get(k) {
            Ok(Some(v)) => format!("FOUND {}", String::from_utf8_lossy(&v)),
            Ok(None) => "none".to_string(),
            Err(e) => format!("error {}", e.message()),
        };
        let _ = write!(out, "\n{k:?} -> {answer}");
    }
    match kv::list_keys("") {
        Ok(keys) => {
            let _ = write!(out, "\nlist-keys -> {keys:?}");
        }
        Err(e) => {
            let _ = write!(out, "\nlist-keys -> error {}", e.message());
        }
    }
    out
}

fn fs(args: &[&str], rest: &str) -> String {
    let show = |r: std::io::Result<String>| match r {
        Ok(text) => format!("OK {text}"),
        Err(e) => format!("error {e}"),
    };
    let read = |p: &str| show(std::fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned()));
    let list = |p: &str| {
        show(std::fs::read_dir(p).map(|entries| {
            let names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.join(",")
        }))
    };
    match args.first().copied() {
        Some("read") => format!("fs read: {}", read(args.get(1).copied().unwrap_or("."))),
        Some("list") => format!("fs list: {}", list(args.get(1).copied().unwrap_or("."))),
        Some(verb @ ("fill" | "append" | "truncate")) => {
            let path = args.get(1).copied().unwrap_or("hostile-was-here");
            let n: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(1 << 20);
            let done = match verb {
                "fill" => std::fs::write(path, vec![b'x'; n]),
                "append" => std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, &vec![b'y'; n])),
                _ => std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .and_then(|f| f.set_len(n as u64)),
            };
            format!("fs {verb}: {}", show(done.map(|_| format!("{n} bytes"))))
        }
        Some("write") => {
            let path = args.get(1).copied().unwrap_or("hostile-was-here");
            let text = rest.splitn(3, ' ').nth(2).unwrap_or("hostile was here");
            format!(
                "fs write: {}",
                show(std::fs::write(path, text).map(|_| "written".into()))
            )
        }
        _ => {
            let mut out = String::from("fs:");
            for p in ["/etc/passwd", "/proc/self/environ", "kv.redb", "../kv.redb"] {
                let _ = write!(out, "\nread {p} -> {}", read(p));
            }
            for p in ["/", ".", ".."] {
                let _ = write!(out, "\nlist {p} -> {}", list(p));
            }
            let written = std::fs::write("hostile-was-here", "x").map(|_| "written".into());
            let _ = write!(out, "\nwrite hostile-was-here -> {}", show(written));
            out
        }
    }
}

fn env() -> String {
    let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    let args: Vec<String> = std::env::args().collect();
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|e| format!("error {e}"));
    let home = std::env::var("HOME").unwrap_or_else(|e| format!("error {e}"));
    format!("env: vars {vars:?}; args {args:?}; cwd {cwd}; HOME {home}")
}

fn net(addr: &str) -> String {
    use std::net::{TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
    let show = |r: std::io::Result<String>| match r {
        Ok(text) => format!("OK {text}"),
        Err(e) => format!("error {e}"),
    };
    let connect = match addr.parse() {
        Ok(a) => show(
            TcpStream::connect_timeout(&a, Duration::from_secs(1)).map(|_| "connected".to_string()),
        ),
        Err(e) => format!("error {e}"),
    };
    let listen = show(TcpListener::bind("127.0.0.1:0").map(|_| "listening".to_string()));
    let udp = show(UdpSocket::bind("127.0.0.1:0").map(|_| "bound".to_string()));
    let resolve = show(
        ("localhost", 80)
            .to_socket_addrs()
            .map(|a| format!("{:?}", a.collect::<Vec<_>>())),
    );
    format!("net: connect {addr} -> {connect}\nlisten -> {listen}\nudp -> {udp}\nresolve localhost -> {resolve}")
}

export_agent!(Hostile);
