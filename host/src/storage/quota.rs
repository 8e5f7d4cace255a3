//! Deciding whether a write fits a namespace's quota, and saying clearly why not.
//!
//! Backend-independent so every backend refuses the same writes with the same words.

use super::{KvError, Quota, Usage};

/// Refuses a value that could never fit, before any storage work: even an empty namespace
/// cannot hold more than `max_bytes`.
pub(crate) fn check_value_size(key: &str, value_len: usize, quota: &Quota) -> Result<(), KvError> {
    let len = value_len as u64;
    if len > quota.max_bytes {
        return Err(KvError::QuotaExceeded(format!(
            "value for key {key:?} is {len} bytes, more than the whole namespace may hold \
             ([kv] max_bytes = {} = {} bytes); raise it in the manifest or store smaller values",
            human_bytes(quota.max_bytes),
            quota.max_bytes
        )));
    }
    Ok(())
}

/// The namespace's usage after writing `key` with a value of `value_len` bytes, replacing an
/// entry of `old_size` key+value bytes if the key exists; or QuotaExceeded.
///
/// An overwrite counts only the difference. A write that does not grow the namespace is
/// always allowed, so an agent over a quota that was lowered after the fact can still shrink.
pub(crate) fn admit(
    used: Usage,
    key: &str,
    old_size: Option<u64>,
    value_len: usize,
    quota: &Quota,
) -> Result<Usage, KvError> {
    let new_size = (key.len() + value_len) as u64;
    let bytes = (used.bytes.saturating_sub(old_size.unwrap_or(0))).saturating_add(new_size);
    let keys = used.keys.saturating_add(u64::from(old_size.is_none()));

    if bytes > quota.max_bytes && bytes > used.bytes {
        let replacing = match old_size {
            Some(old) => format!(", replacing {old}"),
            None => String::new(),
        };
        return Err(KvError::QuotaExceeded(format!(
            "namespace uses {} of {} bytes; writing key {key:?} ({new_size} bytes{replacing}) \
             would exceed [kv] max_bytes = {}; raise it in the manifest or delete keys",
            used.bytes,
            quota.max_bytes,
            human_bytes(quota.max_bytes)
        )));
    }
    if keys > quota.max_keys && keys > used.keys {
        return Err(KvError::QuotaExceeded(format!(
            "namespace has {} of {} keys; adding key {key:?} would exceed [kv] max_keys = {}; \
             raise it in the manifest or delete keys",
            used.keys, quota.max_keys, quota.max_keys
        )));
    }
    Ok(Usage { bytes, keys })
}

/// Sizes as a manifest would write them (`8MiB`), so the message matches the file to edit.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EIGHT_MIB: Quota = Quota {
        max_bytes: 8 << 20,
        max_keys: 100,
    };

    fn message(result: Result<impl std::fmt::Debug, KvError>) -> String {
        match result {
            Err(KvError::QuotaExceeded(text)) => text,
            other => panic!("expected QuotaExceeded, got {other:?}"),
        }
    }

    #[test]
    fn a_write_over_max_bytes_says_usage_size_limit_and_remedy() {
        let used = Usage {
            bytes: 8_388_500,
            keys: 3,
        };
        let text = message(admit(used, "x", None, 119, &EIGHT_MIB));
        assert_eq!(
            text,
            "namespace uses 8388500 of 8388608 bytes; writing key \"x\" (120 bytes) would \
             exceed [kv] max_bytes = 8MiB; raise it in the manifest or delete keys"
        );
    }

    #[test]
    fn an_overwrite_counts_only_the_difference() {
        let used = Usage {
            bytes: 8_388_600,
            keys: 1,
        };
        let after = admit(used, "k", Some(100), 107, &EIGHT_MIB).unwrap();
        assert_eq!(
            after,
            Usage {
                bytes: 8_388_608,
                keys: 1
            }
        );
        let text = message(admit(used, "k", Some(100), 108, &EIGHT_MIB));
        assert!(text.contains("(109 bytes, replacing 100)"), "{text}");
    }

    #[test]
    fn a_write_that_does_not_grow_the_namespace_passes_even_over_quota() {
        let used = Usage {
            bytes: 1000,
            keys: 5,
        };
        let lowered = Quota {
            max_bytes: 500,
            max_keys: 2,
        };
        let after = admit(used, "k", Some(200), 9, &lowered).unwrap();
        assert_eq!(
            after,
            Usage {
                bytes: 810,
                keys: 5
            }
        );
    }

    #[test]
    fn a_new_key_over_max_keys_says_count_and_limit() {
        let used = Usage {
            bytes: 10,
            keys: 100,
        };
        let text = message(admit(used, "k", None, 1, &EIGHT_MIB));
        assert_eq!(
            text,
            "namespace has 100 of 100 keys; adding key \"k\" would exceed [kv] max_keys = 100; \
             raise it in the manifest or delete keys"
        );
        admit(used, "k", Some(5), 1, &EIGHT_MIB).expect("overwriting adds no key");
    }

    #[test]
    fn a_value_larger_than_the_whole_quota_names_both_sizes() {
        let text = message(check_value_size("big", (8 << 20) + 1, &EIGHT_MIB));
        assert!(text.contains("is 8388609 bytes"), "{text}");
        assert!(text.contains("max_bytes = 8MiB = 8388608 bytes"), "{text}");
        check_value_size("fits", 8 << 20, &EIGHT_MIB).unwrap();
    }

    #[test]
    fn unlimited_quota_admits_anything() {
        let used = Usage {
            bytes: u64::MAX - 1,
            keys: u64::MAX - 1,
        };
        admit(used, "k", None, 1 << 20, &Quota::UNLIMITED).unwrap();
        check_value_size("k", usize::MAX, &Quota::UNLIMITED).unwrap();
    }

    #[test]
    fn sizes_read_like_the_manifest() {
        assert_eq!(human_bytes(8 << 20), "8MiB");
        assert_eq!(human_bytes(2 << 30), "2GiB");
        assert_eq!(human_bytes(1536), "1536");
        assert_eq!(human_bytes(4096), "4KiB");
        assert_eq!(human_bytes(100), "100");
    }
}
