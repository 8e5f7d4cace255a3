//! Manifest fields of the sandbox's limits: each is read as documented, and each bad value
//! is refused naming the file, the field and what is expected.

use std::path::Path;

use super::*;

fn parse(extra: &str) -> Result<Manifest, ManifestError> {
    let text = format!("[agent]\nname = \"a\"\n{extra}");
    Manifest::parse(&text, Some(Path::new("agents/a.toml")))
}

/// The error `extra` gives, as shown; asserts it names the file and `field`.
fn refused(extra: &str, field: &str) -> String {
    let err = parse(extra).unwrap_err();
    assert_eq!(err.field.as_deref(), Some(field), "{extra:?}: {err}");
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("manifest agents/a.toml: field {field}: ")),
        "{shown}"
    );
    shown
}

#[test]
fn a_read_write_files_grant_may_set_its_size_quota() {
    let m = parse("[files]\naccess = \"read-write\"\nmax_bytes = \"10MiB\"\n").unwrap();
    assert_eq!(m.files_max_bytes, Some(10 << 20));
    let m = parse("[files]\naccess = \"read-write\"\n").unwrap();
    assert_eq!(m.files_max_bytes, None, "absent: the node default");
}

#[test]
fn a_files_quota_must_be_a_positive_size_on_a_read_write_grant() {
    let shown = refused(
        "[files]\naccess = \"read-only\"\nmax_bytes = \"1MiB\"\n",
        "files.max_bytes",
    );
    assert!(
        shown.contains("applies only to access = \"read-write\""),
        "{shown}"
    );
    let shown = refused(
        "[files]\naccess = \"read-write\"\nmax_bytes = 0\n",
        "files.max_bytes",
    );
    assert!(shown.contains("0 bytes is not allowed"), "{shown}");
    let shown = refused(
        "[files]\naccess = \"read-write\"\nmax_bytes = \"lots\"\n",
        "files.max_bytes",
    );
    assert!(shown.contains("expected a size like"), "{shown}");
}

#[test]
fn the_publish_rate_is_a_positive_number_of_messages_per_second() {
    let m = parse("[limits]\npublish_per_second = 50\n").unwrap();
    assert_eq!(m.limits.publish_per_second, Some(50));
    assert_eq!(parse("").unwrap().limits.publish_per_second, None);
    assert!(m
        .describe()
        .contains("messages sent per second (replies excepted): 50"));
    let shown = refused(
        "[limits]\npublish_per_second = 0\n",
        "limits.publish_per_second",
    );
    assert!(shown.contains("0 is not allowed"), "{shown}");
    assert!(
        shown.contains("expected a whole number like 100"),
        "{shown}"
    );
    let shown = refused(
        "[limits]\npublish_per_second = \"fast\"\n",
        "limits.publish_per_second",
    );
    assert!(
        shown.contains("expected a whole number like 100"),
        "{shown}"
    );
    let shown = refused(
        "[limits]\npublish_per_second = 5000000000\n",
        "limits.publish_per_second",
    );
    assert!(shown.contains("5000000000"), "{shown}");
}

#[test]
fn the_log_rate_is_a_positive_number_of_lines_per_second() {
    let m = parse("[limits]\nlog_lines_per_second = 20\n").unwrap();
    assert_eq!(m.limits.log_lines_per_second, Some(20));
    assert_eq!(parse("").unwrap().limits.log_lines_per_second, None);
    assert!(m
        .describe()
        .contains("log lines per second (runtime.log, stdout, stderr): 20"));
    let shown = refused(
        "[limits]\nlog_lines_per_second = 0\n",
        "limits.log_lines_per_second",
    );
    assert!(shown.contains("0 is not allowed"), "{shown}");
    assert!(
        shown.contains("every line the agent logs would be dropped"),
        "{shown}"
    );
    let shown = refused(
        "[limits]\nlog_lines_per_second = -1\n",
        "limits.log_lines_per_second",
    );
    assert!(
        shown.contains("expected a whole number like 100"),
        "{shown}"
    );
}

#[test]
fn instance_and_table_counts_are_positive_whole_numbers() {
    let m = parse("[limits]\ntable_elements = 5000\ninstances = 10\ntables = 2\nmemories = 1\n")
        .unwrap();
    let l = m.limits;
    assert_eq!(
        (l.table_elements, l.instances, l.tables, l.memories),
        (Some(5000), Some(10), Some(2), Some(1))
    );
    for field in ["table_elements", "instances", "tables", "memories"] {
        let shown = refused(
            &format!("[limits]\n{field} = 0\n"),
            &format!("limits.{field}"),
        );
        assert!(shown.contains("0 is not allowed"), "{shown}");
        let shown = refused(
            &format!("[limits]\n{field} = \"many\"\n"),
            &format!("limits.{field}"),
        );
        assert!(shown.contains("expected a whole number like"), "{shown}");
    }
}

#[test]
fn the_snapshot_limit_defaults_to_the_kv_quota_and_must_be_a_positive_size() {
    let m = parse("[kv]\nmax_bytes = \"64KiB\"\n").unwrap();
    assert_eq!(m.limits.max_snapshot_bytes, None);
    assert_eq!(
        m.max_snapshot_bytes(),
        64 << 10,
        "absent: the [kv] max_bytes"
    );
    let m =
        parse("[kv]\nmax_bytes = \"64KiB\"\n[limits]\nmax_snapshot_bytes = \"4MiB\"\n").unwrap();
    assert_eq!(m.max_snapshot_bytes(), 4 << 20);
    assert!(m
        .describe()
        .contains("largest snapshot of its state: 4MiB\n"));
    let shown = refused(
        "[limits]\nmax_snapshot_bytes = 0\n",
        "limits.max_snapshot_bytes",
    );
    assert!(
        shown.contains("0 bytes is not allowed (no state could be saved"),
        "{shown}"
    );
    let shown = refused(
        "[limits]\nmax_snapshot_bytes = \"big\"\n",
        "limits.max_snapshot_bytes",
    );
    assert!(shown.contains("expected a size like"), "{shown}");
}
