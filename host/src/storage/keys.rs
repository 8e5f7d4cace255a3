//! Which keys, prefixes and namespaces the store accepts.
//!
//! Keys follow the NATS JetStream KV key rules on every backend, so an agent written against
//! the embedded store moves to a JetStream bucket unchanged: a key the embedded store accepts
//! is a key JetStream accepts.

use super::KvError;

/// Longest key accepted, in bytes (NATS KV keys end up inside a subject; keep them short).
pub const MAX_KEY_BYTES: usize = 1024;

/// The allowed characters, as shown to agent authors in error messages.
const ALLOWED: &str = "A-Z a-z 0-9 - _ = . /";

fn allowed_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | '.' | '/')
}

/// Checks a key against the NATS KV key rules: 1 to 1024 bytes of `A-Z a-z 0-9 - _ = . /`,
/// not starting or ending with `.`, and no empty `.`-separated token (`a..b`), because each
/// `.` becomes a subject token separator in JetStream and NATS subjects have no empty tokens.
///
/// The error names the broken rule and what is allowed, because the agent author reads it.
pub fn validate_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::Invalid(format!(
            "key is empty; keys are 1 to {MAX_KEY_BYTES} bytes of {ALLOWED}"
        )));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::Invalid(format!(
            "key {} is {} bytes; keys may be at most {MAX_KEY_BYTES} bytes",
            shown(key),
            key.len()
        )));
    }
    check_chars("key", key)?;
    if key.starts_with('.') {
        return Err(KvError::Invalid(format!(
            "key {} starts with '.'; keys may not start or end with '.'",
            shown(key)
        )));
    }
    if key.ends_with('.') {
        return Err(KvError::Invalid(format!(
            "key {} ends with '.'; keys may not start or end with '.'",
            shown(key)
        )));
    }
    if let Some(at) = key.find("..") {
        return Err(KvError::Invalid(format!(
            "key {} has an empty token (\"..\") at byte {at}; \
             '.' separates tokens, which may not be empty",
            shown(key)
        )));
    }
    Ok(())
}

/// Checks a `list-keys` prefix: only key characters, at most a key's length. Dots anywhere
/// are fine (`"user."` is the natural prefix of `"user.42"`); the empty prefix lists all keys.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), KvError> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(KvError::Invalid(format!(
            "prefix {} is {} bytes; keys, and so prefixes, may be at most {MAX_KEY_BYTES} bytes",
            shown(prefix),
            prefix.len()
        )));
    }
    check_chars("prefix", prefix)
}

/// Namespaces come from the host, not the agent, so a bad one is a host bug; it still must
/// not be able to make two namespaces' keys collide, hence no NUL (the embedded store's
/// separator between namespace and key).
pub(crate) fn validate_namespace(ns: &str) -> Result<(), KvError> {
    if ns.is_empty() || ns.contains('\0') {
        return Err(KvError::Internal(format!(
            "kv namespace {ns:?} is empty or contains a NUL byte (host bug)"
        )));
    }
    Ok(())
}

fn check_chars(what: &str, text: &str) -> Result<(), KvError> {
    match text.char_indices().find(|&(_, c)| !allowed_char(c)) {
        None => Ok(()),
        Some((at, c)) => Err(KvError::Invalid(format!(
            "{what} {} has {c:?} (U+{:04X}) at byte {at}; keys may contain only {ALLOWED}",
            shown(text),
            c as u32
        ))),
    }
}

/// The text quoted for messages, cut short so a 1 MiB garbage key does not flood the log.
fn shown(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(result: Result<(), KvError>) -> String {
        match result {
            Err(KvError::Invalid(text)) => text,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn accepts_every_allowed_character() {
        validate_key("Az09-_=./x").unwrap();
        validate_key("user.42.profile").unwrap();
        validate_key("a").unwrap();
        validate_key(&"k".repeat(MAX_KEY_BYTES)).unwrap();
    }

    #[test]
    fn empty_key_is_rejected_with_the_allowed_characters() {
        let text = message(validate_key(""));
        assert!(text.contains("key is empty"), "{text}");
        assert!(text.contains("A-Z a-z 0-9 - _ = . /"), "{text}");
    }

    #[test]
    fn too_long_key_names_its_length_and_the_limit() {
        let text = message(validate_key(&"k".repeat(MAX_KEY_BYTES + 1)));
        assert!(text.contains("is 1025 bytes"), "{text}");
        assert!(text.contains("at most 1024 bytes"), "{text}");
        assert!(
            text.len() < 200,
            "long keys are cut short in messages: {text}"
        );
    }

    #[test]
    fn forbidden_character_is_named_with_its_position() {
        let text = message(validate_key("a b"));
        assert!(text.contains("' ' (U+0020) at byte 1"), "{text}");
        assert!(
            text.contains("may contain only A-Z a-z 0-9 - _ = . /"),
            "{text}"
        );

        for bad in ["a*b", "a>b", "a\0b", "ключ", "a:b", "a\\b"] {
            message(validate_key(bad));
        }
        assert!(message(validate_key("ключ")).contains("U+043A"));
    }

    #[test]
    fn dots_may_not_start_or_end_a_key_or_leave_an_empty_token() {
        assert!(message(validate_key(".a")).contains("starts with '.'"));
        assert!(message(validate_key("a.")).contains("ends with '.'"));
        assert!(message(validate_key("a..b")).contains("empty token"));
    }

    #[test]
    fn prefixes_allow_dots_anywhere_and_the_empty_prefix() {
        validate_prefix("").unwrap();
        validate_prefix("user.").unwrap();
        validate_prefix(".").unwrap();
        assert!(message(validate_prefix("a b")).starts_with("prefix \"a b\" has ' '"));
    }

    #[test]
    fn namespaces_must_be_non_empty_and_nul_free() {
        validate_namespace("sys.snapshots").unwrap();
        assert!(matches!(validate_namespace(""), Err(KvError::Internal(_))));
        assert!(matches!(
            validate_namespace("a\0b"),
            Err(KvError::Internal(_))
        ));
    }
}
