//! The `KvBackend` contract, checked against the embedded store.

use std::sync::Arc;

use tempfile::TempDir;

use super::{CasOutcome, EmbeddedKv, KvBackend, KvError, Quota, SyncPolicy, Usage};

const NS: &str = "agent-1";

fn store() -> (TempDir, EmbeddedKv) {
    let dir = tempfile::tempdir().unwrap();
    let kv = EmbeddedKv::open(&dir.path().join("data/kv.redb")).unwrap();
    (dir, kv)
}

fn quota(max_bytes: u64, max_keys: u64) -> Quota {
    Quota {
        max_bytes,
        max_keys,
    }
}

fn quota_message<T: std::fmt::Debug>(result: Result<T, KvError>) -> String {
    match result {
        Err(KvError::QuotaExceeded(text)) => text,
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
}

#[tokio::test]
async fn set_then_get_returns_the_value_and_its_revision_and_delete_removes_it() {
    let (_dir, kv) = store();
    assert_eq!(kv.get(NS, "greeting").await.unwrap(), None);

    let revision = kv
        .set(NS, "greeting", b"hello", &Quota::UNLIMITED)
        .await
        .unwrap();
    let entry = kv.get(NS, "greeting").await.unwrap().unwrap();
    assert_eq!(entry.value, b"hello");
    assert_eq!(entry.revision, revision);

    let newer = kv
        .set(NS, "greeting", b"hi", &Quota::UNLIMITED)
        .await
        .unwrap();
    assert!(newer > revision, "every write gets a higher revision");
    assert_eq!(kv.get(NS, "greeting").await.unwrap().unwrap().value, b"hi");

    kv.delete(NS, "greeting").await.unwrap();
    assert_eq!(kv.get(NS, "greeting").await.unwrap(), None);
    kv.delete(NS, "greeting")
        .await
        .expect("deleting an absent key is fine");
}

#[tokio::test]
async fn namespaces_never_see_each_others_keys() {
    let (_dir, kv) = store();
    let any = &Quota::UNLIMITED;
    kv.set("x", "a", b"x's", any).await.unwrap();
    kv.set("xa", "a", b"xa's", any).await.unwrap();
    kv.set("x", "a.b", b"x's a.b", any).await.unwrap();

    assert_eq!(kv.get("x", "a").await.unwrap().unwrap().value, b"x's");
    assert_eq!(kv.get("xa", "a").await.unwrap().unwrap().value, b"xa's");
    assert_eq!(kv.get("y", "a").await.unwrap(), None);
    assert_eq!(kv.list_keys("x", "", 100).await.unwrap(), ["a", "a.b"]);
    assert_eq!(kv.list_keys("xa", "", 100).await.unwrap(), ["a"]);

    kv.delete("x", "a").await.unwrap();
    assert!(kv.get("xa", "a").await.unwrap().is_some());
    assert_eq!(kv.usage("xa").await.unwrap(), Usage { bytes: 5, keys: 1 });
}

#[tokio::test]
async fn list_keys_returns_matching_keys_sorted_up_to_the_limit() {
    let (_dir, kv) = store();
    for key in ["user.3", "user.1", "order.1", "user.2", "users", "u"] {
        kv.set(NS, key, b"", &Quota::UNLIMITED).await.unwrap();
    }
    kv.set("other", "user.0", b"", &Quota::UNLIMITED)
        .await
        .unwrap();

    assert_eq!(
        kv.list_keys(NS, "user.", 100).await.unwrap(),
        ["user.1", "user.2", "user.3"]
    );
    assert_eq!(
        kv.list_keys(NS, "user", 100).await.unwrap(),
        ["user.1", "user.2", "user.3", "users"]
    );
    assert_eq!(
        kv.list_keys(NS, "", 3).await.unwrap(),
        ["order.1", "u", "user.1"]
    );
    assert!(kv.list_keys(NS, "", 0).await.unwrap().is_empty());
    assert!(kv.list_keys(NS, "zzz", 10).await.unwrap().is_empty());
    assert!(kv.list_keys("nobody", "", 10).await.unwrap().is_empty());
    assert!(matches!(
        kv.list_keys(NS, "a b", 10).await,
        Err(KvError::Invalid(_))
    ));
}

#[tokio::test]
async fn compare_and_swap_with_none_creates_only_if_absent() {
    let (_dir, kv) = store();
    let any = &Quota::UNLIMITED;
    let created = kv
        .compare_and_swap(NS, "lock", None, b"me", any)
        .await
        .unwrap();
    let CasOutcome::Swapped(revision) = created else {
        panic!("absent key must be created, got {created:?}");
    };
    assert_eq!(
        kv.compare_and_swap(NS, "lock", None, b"you", any)
            .await
            .unwrap(),
        CasOutcome::Conflict(Some(revision))
    );
    assert_eq!(kv.get(NS, "lock").await.unwrap().unwrap().value, b"me");
}

#[tokio::test]
async fn compare_and_swap_on_the_current_revision_writes_and_on_a_stale_one_reports_current() {
    let (_dir, kv) = store();
    let any = &Quota::UNLIMITED;
    let first = kv.set(NS, "n", b"1", any).await.unwrap();

    let outcome = kv
        .compare_and_swap(NS, "n", Some(first), b"2", any)
        .await
        .unwrap();
    let CasOutcome::Swapped(second) = outcome else {
        panic!("current revision must swap, got {outcome:?}");
    };
    assert!(second > first);
    assert_eq!(kv.get(NS, "n").await.unwrap().unwrap().revision, second);

    assert_eq!(
        kv.compare_and_swap(NS, "n", Some(first), b"3", any)
            .await
            .unwrap(),
        CasOutcome::Conflict(Some(second))
    );
    assert_eq!(kv.get(NS, "n").await.unwrap().unwrap().value, b"2");
    assert_eq!(
        kv.compare_and_swap(NS, "absent", Some(first), b"x", any)
            .await
            .unwrap(),
        CasOutcome::Conflict(None)
    );
}

#[tokio::test]
async fn compare_and_swap_conflicts_after_delete_even_when_the_key_is_recreated() {
    let (_dir, kv) = store();
    let any = &Quota::UNLIMITED;
    let old = kv.set(NS, "k", b"v1", any).await.unwrap();
    kv.delete(NS, "k").await.unwrap();
    assert_eq!(
        kv.compare_and_swap(NS, "k", Some(old), b"v2", any)
            .await
            .unwrap(),
        CasOutcome::Conflict(None)
    );

    let recreated = kv.set(NS, "k", b"v1", any).await.unwrap();
    assert_ne!(recreated, old, "revisions are never reused");
    assert_eq!(
        kv.compare_and_swap(NS, "k", Some(old), b"v2", any)
            .await
            .unwrap(),
        CasOutcome::Conflict(Some(recreated))
    );
}

#[tokio::test]
async fn writes_over_max_bytes_are_refused_and_leave_nothing_behind() {
    let (_dir, kv) = store();
    let small = quota(20, 100);
    kv.set(NS, "a", b"123456789", &small).await.unwrap(); // 10 bytes
    assert_eq!(kv.usage(NS).await.unwrap(), Usage { bytes: 10, keys: 1 });

    let text = quota_message(kv.set(NS, "b", b"1234567890", &small).await); // 11 more
    assert_eq!(
        text,
        "namespace uses 10 of 20 bytes; writing key \"b\" (11 bytes) would exceed \
         [kv] max_bytes = 20; raise it in the manifest or delete keys"
    );
    assert_eq!(kv.get(NS, "b").await.unwrap(), None);
    quota_message(
        kv.compare_and_swap(NS, "b", None, b"1234567890", &small)
            .await,
    );
    assert_eq!(kv.usage(NS).await.unwrap(), Usage { bytes: 10, keys: 1 });

    let text = quota_message(kv.set(NS, "c", &[0; 21], &small).await);
    assert!(text.contains("is 21 bytes"), "{text}");
    assert!(text.contains("max_bytes = 20 = 20 bytes"), "{text}");
}

#[tokio::test]
async fn overwrites_count_only_the_difference_and_deletes_free_quota() {
    let (_dir, kv) = store();
    let small = quota(20, 100);
    kv.set(NS, "a", b"123456789", &small).await.unwrap(); // 10
    kv.set(NS, "b", b"123456789", &small).await.unwrap(); // 20: full

    kv.set(NS, "a", b"987654321", &small)
        .await
        .expect("same size overwrite fits a full namespace");
    kv.set(NS, "a", b"1", &small).await.unwrap(); // 2 + 10
    assert_eq!(kv.usage(NS).await.unwrap(), Usage { bytes: 12, keys: 2 });
    kv.set(NS, "a", b"123456789", &small).await.unwrap(); // back to 20
    quota_message(kv.set(NS, "a", b"1234567890", &small).await);

    kv.delete(NS, "b").await.unwrap();
    assert_eq!(kv.usage(NS).await.unwrap(), Usage { bytes: 10, keys: 1 });
    kv.set(NS, "c", b"123456789", &small)
        .await
        .expect("the deleted key's bytes are free again");
}

#[tokio::test]
async fn new_keys_over_max_keys_are_refused_and_deletes_free_key_slots() {
    let (_dir, kv) = store();
    let two = quota(1 << 20, 2);
    kv.set(NS, "a", b"", &two).await.unwrap();
    kv.set(NS, "b", b"", &two).await.unwrap();

    let text = quota_message(kv.set(NS, "c", b"", &two).await);
    assert!(
        text.starts_with("namespace has 2 of 2 keys; adding key \"c\""),
        "{text}"
    );
    kv.set(NS, "a", b"overwrite", &two)
        .await
        .expect("overwriting adds no key");

    kv.delete(NS, "a").await.unwrap();
    kv.set(NS, "c", b"", &two).await.unwrap();
    assert_eq!(kv.usage(NS).await.unwrap().keys, 2);
}

#[tokio::test]
async fn invalid_keys_are_refused_by_every_operation_with_the_broken_rule() {
    let (_dir, kv) = store();
    let any = &Quota::UNLIMITED;
    let cases = [
        ("", "key is empty"),
        ("a b", "' ' (U+0020) at byte 1"),
        ("a*", "'*' (U+002A) at byte 1"),
        (".a", "starts with '.'"),
        ("a.", "ends with '.'"),
        ("a..b", "empty token"),
    ];
    for (key, expected) in cases {
        let results = [
            kv.get(NS, key).await.map(|_| ()),
            kv.set(NS, key, b"v", any).await.map(|_| ()),
            kv.delete(NS, key).await,
            kv.compare_and_swap(NS, key, None, b"v", any)
                .await
                .map(|_| ()),
        ];
        for result in results {
            match result {
                Err(KvError::Invalid(text)) => assert!(text.contains(expected), "{key:?}: {text}"),
                other => panic!("{key:?}: expected Invalid, got {other:?}"),
            }
        }
    }
    let long = "k".repeat(1025);
    match kv.set(NS, &long, b"v", any).await {
        Err(KvError::Invalid(text)) => assert!(text.contains("at most 1024 bytes"), "{text}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(kv.usage(NS).await.unwrap(), Usage::default());
}

#[tokio::test]
async fn reopening_the_file_gives_back_keys_revisions_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dirs/kv.redb");
    let any = &Quota::UNLIMITED;
    let (revision, deleted_revision) = {
        let kv = EmbeddedKv::open(&path).unwrap();
        let revision = kv.set(NS, "kept", b"value", any).await.unwrap();
        let deleted_revision = kv.set(NS, "gone", b"x", any).await.unwrap();
        kv.delete(NS, "gone").await.unwrap();
        (revision, deleted_revision)
    };

    let kv = EmbeddedKv::open(&path).unwrap();
    let entry = kv.get(NS, "kept").await.unwrap().unwrap();
    assert_eq!(
        (entry.value.as_slice(), entry.revision),
        (&b"value"[..], revision)
    );
    assert_eq!(kv.get(NS, "gone").await.unwrap(), None);
    assert_eq!(kv.usage(NS).await.unwrap(), Usage { bytes: 9, keys: 1 });
    let next = kv.set(NS, "new", b"", any).await.unwrap();
    assert!(
        next > deleted_revision,
        "the revision counter survives a reopen"
    );
}

#[tokio::test]
async fn open_names_the_path_when_it_cannot_create_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"file").unwrap();
    let path = blocker.join("kv.redb");
    let error = EmbeddedKv::open(&path).err().expect("parent is a file");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_cas_increments_end_at_exactly_fifty() {
    let (_dir, kv) = store();
    let kv = Arc::new(kv);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let kv = Arc::clone(&kv);
            tokio::spawn(async move {
                loop {
                    let current = kv.get(NS, "counter").await.unwrap();
                    let (n, expected) = match &current {
                        Some(entry) => {
                            let bytes: [u8; 8] = entry.value.as_slice().try_into().unwrap();
                            (u64::from_le_bytes(bytes), Some(entry.revision))
                        }
                        None => (0, None),
                    };
                    let next = (n + 1).to_le_bytes();
                    let outcome = kv
                        .compare_and_swap(NS, "counter", expected, &next, &Quota::UNLIMITED)
                        .await
                        .unwrap();
                    if let CasOutcome::Swapped(_) = outcome {
                        break;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let value = kv.get(NS, "counter").await.unwrap().unwrap().value;
    assert_eq!(u64::from_le_bytes(value.try_into().unwrap()), 50);
}

#[tokio::test]
async fn with_a_sync_interval_writes_are_durable_after_the_store_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    {
        let kv = EmbeddedKv::open_with(
            &path,
            SyncPolicy::Interval(std::time::Duration::from_millis(50)),
        )
        .unwrap();
        for i in 0..100u64 {
            kv.set("ns", "k", i.to_string().as_bytes(), &Quota::UNLIMITED)
                .await
                .unwrap();
        }
    }
    let kv = EmbeddedKv::open(&path).unwrap();
    assert_eq!(kv.get("ns", "k").await.unwrap().unwrap().value, b"99");
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn the_store_file_and_its_new_folder_are_for_the_owner_only() {
    let (dir, kv) = store();
    assert_eq!(mode_of(kv.path()), 0o600);
    assert_eq!(mode_of(&dir.path().join("data")), 0o700);
}

#[test]
fn a_store_file_others_could_read_is_tightened_when_it_is_opened() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    drop(EmbeddedKv::open(&path).unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let kv = EmbeddedKv::open(&path).unwrap();
    assert_eq!(mode_of(&path), 0o600);
    drop(kv);
}
