//! Files and control lines handed to the node are bounded before they are read: a
//! component by `[engine] max_component_bytes`, manifests and node configs by 1 MiB (and
//! regular files only), a control request line by 16 MiB.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_host::node::LoadRequest;

use super::super::{has, survived, ATTACK, MACHINE};
use super::{host_ok, host_refused, peak_rss, run_with_config, sparse_file};
use crate::support::{plugin, NodeProcess, TestNode};

/// A component file over `[engine] max_component_bytes` is refused from its size, before
/// it is read: quickly, without the node's memory growing. So are devices, as a component
/// or as a manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_over_the_size_limit_or_a_device_is_refused_before_it_is_read() {
    let _shared = MACHINE.read().await;
    let t = TestNode::start().await;
    t.load("hostile", "hostile", "").await;
    let big = t.dir.path().join("big.wasm");
    sparse_file(&big, 2 << 30);
    let peak = peak_rss("self");
    let started = Instant::now();
    let load = |component: PathBuf, manifest: Option<PathBuf>| LoadRequest {
        component: Some(component),
        manifest,
        name: Some("big".into()),
    };
    let refused = t.node.load(load(big.clone(), None)).await.unwrap_err();
    has(
        &refused.to_string(),
        &[
            &format!("component {} is 2GiB (2147483648 bytes)", big.display()),
            "more than this node's limit of 128MiB ([engine] max_component_bytes)",
            "raise [engine] max_component_bytes in the node config",
        ],
    );
    let upgrade = t.node.upgrade("hostile", &big).await.unwrap_err();
    has(
        &upgrade.to_string(),
        &[
            "upgrade of 'hostile' refused, the running version is untouched: component",
            "is 2GiB",
        ],
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused from its size"
    );
    let grew = peak_rss("self").saturating_sub(peak);
    assert!(
        grew < 256 << 20,
        "the node's peak memory grew by {grew} bytes"
    );

    let zero = t
        .node
        .load(load("/dev/zero".into(), None))
        .await
        .unwrap_err();
    has(
        &zero.to_string(),
        &["component /dev/zero is not a regular file (it is a character device)"],
    );
    let manifest = t
        .node
        .load(load(plugin("echo"), Some("/dev/zero".into())))
        .await
        .unwrap_err();
    has(
        &manifest.to_string(),
        &["manifest /dev/zero: cannot read the file: it is not a regular file (it is a character device)"],
    );
    assert_eq!(survived(&t, "ping").await, "pong");
    assert_eq!(t.node.list().await.len(), 1, "nothing else was loaded");
}

/// The same through the real CLI against a `host run` process with a 1 MiB component
/// limit: `host load`, `host upgrade` and `host check` refuse the file from its size, the
/// node's memory does not grow, and a device as node config is refused at start.
#[tokio::test]
async fn the_cli_refuses_oversized_components_and_devices_and_the_node_keeps_serving() {
    let _shared = MACHINE.read().await;
    let node = NodeProcess::start(
        "[http]\nlisten = \"127.0.0.1:0\"\n[engine]\nmax_component_bytes = \"1MiB\"\n",
    );
    let hostile = plugin("hostile");
    host_ok(&node, &["load", hostile.to_str().unwrap()]);
    let big = node.dir.path().join("big.wasm");
    sparse_file(&big, 1 << 30);
    let pid = node.child.id().to_string();
    let peak = peak_rss(&pid);
    let expected = format!(
        "component {} is 1GiB (1073741824 bytes), more than this node's limit of 1MiB ([engine] max_component_bytes)",
        big.display()
    );
    let big_path = big.to_str().unwrap();
    has(
        &host_refused(&node, &["load", big_path, "--name", "big"]),
        &[&expected],
    );
    has(
        &host_refused(&node, &["upgrade", "hostile", big_path]),
        &[&expected],
    );
    let grew = peak_rss(&pid).saturating_sub(peak);
    assert!(
        grew < 128 << 20,
        "the node's peak memory grew by {grew} bytes"
    );
    // `host load` itself refuses what is not a file; `host check` reads both itself.
    has(
        &host_refused(&node, &["load", "/dev/zero", "--name", "zero"]),
        &["/dev/zero is not a file"],
    );
    has(
        &host_refused(&node, &["check", "/dev/zero"]),
        &["manifest /dev/zero: cannot read the file: it is not a regular file (it is a character device)"],
    );
    let manifest = node.dir.path().join("m.toml");
    std::fs::write(&manifest, "[agent]\nname = \"big\"\n").unwrap();
    let manifest = manifest.to_str().unwrap();
    has(
        &host_refused(&node, &["check", manifest, big_path]),
        &[&format!("component {} is 1GiB", big.display())],
    );
    has(
        &host_refused(&node, &["check", manifest, "/dev/zero"]),
        &["component /dev/zero is not a regular file (it is a character device)"],
    );
    assert_eq!(
        host_ok(&node, &["send", ATTACK, "ping", "--wait", "5"]).trim(),
        "pong"
    );

    let dir = tempfile::tempdir().unwrap();
    let (status, log) = run_with_config(dir.path(), Path::new("/dev/zero"));
    assert!(
        status.is_some_and(|s| !s.success()),
        "refused at start: {log}"
    );
    has(
        &log,
        &["config /dev/zero: cannot read the file: it is not a regular file"],
    );
}

/// A control client sending an endless line gets an error once it passes the limit; the
/// node does not hold the line in memory and keeps serving other clients.
#[tokio::test]
async fn an_endless_control_line_is_refused_without_growing_the_node_and_it_keeps_serving() {
    let _shared = MACHINE.read().await;
    let node = NodeProcess::start("");
    let pid = node.child.id().to_string();
    let peak = peak_rss(&pid);
    let stream = std::os::unix::net::UnixStream::connect(&node.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 0u64;
        while sent < 128 << 20 && writer.write_all(&chunk).is_ok() {
            sent += chunk.len() as u64;
        }
        sent
    });
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut answer)
        .expect("an answer before the line ends");
    let sent = flood.join().unwrap();
    has(
        &answer,
        &[
            "\"ok\":false",
            "request line longer than the 16MiB a control request may be",
        ],
    );
    assert!(
        sent < 128 << 20,
        "the node stopped reading: {sent} bytes sent"
    );
    let grew = peak_rss(&pid).saturating_sub(peak);
    assert!(
        grew < 80 << 20,
        "the node's peak memory grew by {grew} bytes"
    );
    host_ok(&node, &["list"]);
}
