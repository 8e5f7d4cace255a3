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
