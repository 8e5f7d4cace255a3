//! Node defaults of the sandbox's limits: documented defaults, values read, bad values
//! refused naming the file, the field and what is expected.

use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
    NodeConfig::parse(text, Some(Path::new("configs/node.toml")), &|_| None)
}

fn refused(text: &str, field: &str) -> String {
    let err = parse(text).unwrap_err();
    assert_eq!(err.field.as_deref(), Some(field), "{text:?}: {err}");
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("config configs/node.toml: field {field}: ")),
        "{shown}"
    );
    shown
}

#[test]
fn files_directories_hold_64_mib_unless_the_node_says_otherwise() {
    assert_eq!(parse("").unwrap().defaults.files_max_bytes, 64 << 20);
    let c = parse("[defaults]\nfiles_max_bytes = \"1GiB\"\n").unwrap();
    assert_eq!(c.defaults.files_max_bytes, 1 << 30);
    let shown = refused(
        "[defaults]\nfiles_max_bytes = 0\n",
        "defaults.files_max_bytes",
    );
    assert!(shown.contains("0 bytes is not allowed"), "{shown}");
}

#[test]
fn agents_send_at_most_1000_messages_a_second_unless_the_node_says_otherwise() {
    assert_eq!(parse("").unwrap().defaults.publish_per_second, 1000);
    let c = parse("[defaults]\npublish_per_second = 20\n").unwrap();
    assert_eq!(c.defaults.publish_per_second, 20);
    let shown = refused(
        "[defaults]\npublish_per_second = 0\n",
        "defaults.publish_per_second",
    );
    assert!(shown.contains("0 is not allowed"), "{shown}");
    let shown = refused(
        "[defaults]\npublish_per_second = -3\n",
        "defaults.publish_per_second",
    );
    assert!(shown.contains("negative"), "{shown}");
}

#[test]
fn agents_log_at_most_100_lines_a_second_unless_the_node_says_otherwise() {
    assert_eq!(parse("").unwrap().defaults.log_lines_per_second, 100);
    let c = parse("[defaults]\nlog_lines_per_second = 5000\n").unwrap();
    assert_eq!(c.defaults.log_lines_per_second, 5000);
    let shown = refused(
        "[defaults]\nlog_lines_per_second = 0\n",
        "defaults.log_lines_per_second",
    );
    assert!(shown.contains("0 is not allowed"), "{shown}");
    assert!(shown.contains("would be dropped"), "{shown}");
    let shown = refused(
        "[defaults]\nlog_lines_per_second = \"lots\"\n",
        "defaults.log_lines_per_second",
    );
    assert!(
        shown.contains("expected a whole number like 100"),
        "{shown}"
    );
}

#[test]
fn instance_and_table_counts_default_to_the_pool_and_may_not_exceed_it() {
    use crate::agent::limits::InstanceCounts;
    assert_eq!(
        parse("").unwrap().defaults.counts,
        InstanceCounts::default()
    );
    let c = parse("[defaults]\ninstances = 12\ntable_elements = 1000\n").unwrap();
    assert_eq!(
        (
            c.defaults.counts.instances,
            c.defaults.counts.table_elements
        ),
        (12, 1000)
    );
    let shown = refused("[defaults]\ntables = 99\n", "defaults.tables");
    assert!(
        shown.contains(
            "99 is more than the engine's pool allows per component (4); expected at most 4"
        ),
        "{shown}"
    );
    let shown = refused("[defaults]\nmemories = 0\n", "defaults.memories");
    assert!(shown.contains("0 is not allowed"), "{shown}");
}
