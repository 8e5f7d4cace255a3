//! The `[files]` grant: one private directory per agent under the node's data dir
//! (`files/{agent id}`), seen by the agent as `/data` through WASI. `..`, absolute paths and
//! symlinks cannot leave it; read-only means read-only; without the grant there are no files.

mod support;

use std::os::unix::fs::symlink;

use support::TestNode;

fn manifest(name: &str, files: &str) -> String {
    format!("[agent]\nname = \"{name}\"\n{files}")
}

/// Asks agent `name` (plugins/hostile) to run `command` and returns its reply.
async fn fs(t: &TestNode, name: &str, command: &str) -> String {
    t.ask(&format!("agent.to.{name}.fs"), command).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_files_grant_gives_each_agent_a_private_directory_that_cannot_be_escaped() {
    let t = TestNode::start().await;
    let rw = "[files]\naccess = \"read-write\"\n";
    let keeper = t.load("hostile", "keeper", &manifest("keeper", rw)).await;
    let ro = "[files]\naccess = \"read-only\"\n";
    let reader = t.load("hostile", "reader", &manifest("reader", ro)).await;
    t.load("hostile", "nosy", &manifest("nosy", "")).await;
    assert_eq!(
        t.node.engine.compiled_count(),
        1,
        "three agents, one compile"
    );
    let data = t.dir.path();
    let keeper_dir = data.join("files").join(&keeper.id);

    // Read-write: the agent keeps files in /data; on the node they are in its directory.
    let written = fs(&t, "keeper", "fs write /data/notes.txt hello").await;
    assert_eq!(written, "fs write: OK written");
    assert_eq!(
        fs(&t, "keeper", "fs read /data/notes.txt").await,
        "fs read: OK hello"
    );
    let on_node = std::fs::read_to_string(keeper_dir.join("notes.txt")).unwrap();
    assert_eq!(on_node, "hello");
    assert_eq!(
        fs(&t, "keeper", "fs list /data").await,
        "fs list: OK notes.txt"
    );

    // Escapes: `..`, absolute paths, and symlinks someone planted in its directory.
    std::fs::write(data.join("secret.txt"), "node secret").unwrap();
    symlink("../../secret.txt", keeper_dir.join("up")).unwrap();
    symlink(data.join("secret.txt"), keeper_dir.join("abs")).unwrap();
    symlink(data, keeper_dir.join("root")).unwrap();
    for attempt in [
        "fs read /data/../secret.txt",
        "fs read /data/../../secret.txt",
        "fs read /secret.txt",
        "fs read /etc/passwd",
        "fs read /data/up",
        "fs read /data/abs",
        "fs read /data/root/secret.txt",
        "fs list /data/..",
        "fs list /data/root",
        "fs write /data/../escaped.txt out",
        "fs write /data/up overwritten",
        "fs write /data/root/escaped.txt out",
    ] {
        let reply = fs(&t, "keeper", attempt).await;
        assert!(reply.contains(": error "), "{attempt}: {reply}");
        assert!(!reply.contains("node secret"), "{attempt}: {reply}");
    }
    assert!(!data.join("escaped.txt").exists());
    assert!(!data.join("files").join("escaped.txt").exists());
    let secret = std::fs::read_to_string(data.join("secret.txt")).unwrap();
    assert_eq!(secret, "node secret", "not overwritten through the link");

    // Read-only: reads what the operator put there, writes nothing.
    let reader_dir = data.join("files").join(&reader.id);
    std::fs::write(reader_dir.join("config.txt"), "from the operator").unwrap();
    let read = fs(&t, "reader", "fs read /data/config.txt").await;
    assert_eq!(read, "fs read: OK from the operator");
    for attempt in [
        "fs write /data/config.txt overwritten",
        "fs write /data/new.txt x",
    ] {
        let reply = fs(&t, "reader", attempt).await;
        assert!(reply.contains(": error "), "{attempt}: {reply}");
    }
    let config = std::fs::read_to_string(reader_dir.join("config.txt")).unwrap();
    assert_eq!(config, "from the operator");
    assert!(!reader_dir.join("new.txt").exists());

    // Each agent sees only its own directory; without the grant there is no /data at all.
    let other = fs(&t, "reader", "fs read /data/notes.txt").await;
    assert!(other.contains(": error "), "{other}");
    for attempt in ["fs read /data/notes.txt", "fs list /data", "fs list /"] {
        let reply = fs(&t, "nosy", attempt).await;
        assert!(reply.contains(": error "), "{attempt}: {reply}");
    }
    assert!(!data
        .join("files")
        .join(t.node.status("nosy").await.unwrap().id)
        .exists());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_write_directory_holds_at_most_its_quota_and_writes_beyond_fail_inside_the_agent() {
    // Node default 8 KiB; `keeper` sets its own 4 KiB in its manifest.
    let t = TestNode::start_with(|c| c.defaults.files_max_bytes = 8 << 10).await;
    let quota = "[files]\naccess = \"read-write\"\nmax_bytes = \"4KiB\"\n";
    let keeper = t
        .load("hostile", "keeper", &manifest("keeper", quota))
        .await;
    let dir = t.dir.path().join("files").join(&keeper.id);
    // The agent sees a failed write. Calls that return a filesystem error code say
    // "no space" (ENOSPC); a failed stream write is EIO to the guest, because wasi-libc
    // reports every failed stream write as EIO (the host log says which quota it was).
    let refused = [": error No space left on device", ": error I/O error"];
    let was_refused = |reply: &str| refused.iter().any(|r| reply.contains(r));

    assert_eq!(
        fs(&t, "keeper", "fs fill /data/a 3000").await,
        "fs fill: OK 3000 bytes"
    );
    // 3000 + 2000 > 4096, through each call that can grow a file: an append stream, a
    // write stream, and setting the length.
    for attempt in [
        "fs append /data/a 2000",
        "fs fill /data/b 2000",
        "fs truncate /data/c 2000",
    ] {
        let reply = fs(&t, "keeper", attempt).await;
        assert!(was_refused(&reply), "{attempt}: {reply}");
    }
    let reply = fs(&t, "keeper", "fs truncate /data/c 2000").await;
    assert!(reply.contains(refused[0]), "set-size says why: {reply}");
    assert_eq!(std::fs::metadata(dir.join("a")).unwrap().len(), 3000);
    assert_eq!(
        std::fs::metadata(dir.join("b")).unwrap().len(),
        0,
        "created, nothing written"
    );
    // What fits still fits, and rewriting a file gives its old bytes back first.
    assert_eq!(
        fs(&t, "keeper", "fs append /data/a 1000").await,
        "fs append: OK 1000 bytes"
    );
    assert_eq!(
        fs(&t, "keeper", "fs fill /data/a 4000").await,
        "fs fill: OK 4000 bytes"
    );
    assert_eq!(
        fs(&t, "keeper", "fs truncate /data/a 100").await,
        "fs truncate: OK 100 bytes"
    );
    assert_eq!(
        fs(&t, "keeper", "fs fill /data/b 3900").await,
        "fs fill: OK 3900 bytes"
    );

    let s = t.node.status("keeper").await.unwrap();
    assert_eq!(s.limit_hits.files, 4, "each refused write is counted");
    assert_eq!(
        s.traps, 0,
        "a refused write is an error the agent handles, not a trap"
    );
    let metric =
        "agent_host_limit_hits_total{agent=\"keeper\",cluster=\"default\",limit=\"files\"} 4";
    assert!(t.node.metrics.encode().contains(metric));

    // Without max_bytes the node default applies.
    let rw = "[files]\naccess = \"read-write\"\n";
    t.load("hostile", "roomy", &manifest("roomy", rw)).await;
    let big = fs(&t, "roomy", "fs fill /data/a 9000").await;
    assert!(was_refused(&big), "{big}");
    assert_eq!(
        fs(&t, "roomy", "fs fill /data/a 8000").await,
        "fs fill: OK 8000 bytes"
    );
    t.stop().await;
}
