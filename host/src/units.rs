//! Human-readable byte sizes for manifests and the node config.
//!
//! Operators write memory limits and quotas as `"64MiB"` rather than `67108864`, so every
//! size field accepts either form. Binary units (`KiB`, `MiB`, `GiB`, `TiB`) are powers of
//! 1024, decimal units (`KB`, `MB`, `GB`, `TB`) powers of 1000. Units are case-sensitive:
//! `mb` could mean megabits or mebibytes, so we refuse to guess.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a size should look like; ends every parse error so the fix is obvious.
const EXPECTED: &str = r#"expected a size like "64MiB", "512KiB" or a number of bytes"#;

/// Unit suffixes with their multipliers; the order is the one `format_bytes` prefers.
const UNITS: [(&str, u64); 9] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

/// Parses `"64MiB"`, `"8 MiB"`, `"100KB"`, `"4096B"` or `"4096"` into a number of bytes.
///
/// Errors say what was wrong and what is expected, because they end up in front of the
/// person editing a manifest.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("the size is empty; {EXPECTED}"));
    }
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, rest) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "{text:?} does not start with a whole number; {EXPECTED}"
        ));
    }
    let unit = rest.trim_start();
    if unit.starts_with(['.', ',', '_']) {
        return Err(format!(
            "{text:?} is not a whole number; write a smaller unit instead of a fraction (\"1536KiB\", not \"1.5MiB\"); {EXPECTED}"
        ));
    }
    let multiplier = if unit.is_empty() {
        1
    } else {
        match UNITS.iter().find(|(name, _)| *name == unit) {
            Some((_, m)) => *m,
            None => return Err(unknown_unit(text, unit)),
        }
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is too large; at most {} bytes", u64::MAX))?;
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large; at most {} bytes", u64::MAX))
}

fn unknown_unit(text: &str, unit: &str) -> String {
    let known = "B, KB, MB, GB, TB, KiB, MiB, GiB or TiB";
    match UNITS.iter().find(|(name, _)| name.eq_ignore_ascii_case(unit)) {
        Some((name, _)) => format!(
            "{text:?} has the unit {unit:?}; units are case-sensitive, did you mean {name:?}? {EXPECTED}"
        ),
        None => format!("{text:?} has the unknown unit {unit:?}; units are {known}; {EXPECTED}"),
    }
}

/// Formats a byte count in the largest unit that divides it exactly, so the text parses
/// back to the same number (`67108864` -> `"64MiB"`, `1000` -> `"1KB"`, `1023` -> `"1023B"`).
pub fn format_bytes(n: u64) -> String {
    if n == 0 {
        return "0B".to_string();
    }
    let (name, m) = UNITS
        .iter()
        .find(|(_, m)| n.is_multiple_of(*m))
        .expect("every number is a multiple of 1");
    format!("{}{name}", n / m)
}

/// A byte count that deserializes from either an integer or a size string such as
/// `"8MiB"`, and serializes back as the string, so config files round-trip readably.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl From<u64> for ByteSize {
    fn from(n: u64) -> Self {
        ByteSize(n)
    }
}

impl From<ByteSize> for u64 {
    fn from(size: ByteSize) -> Self {
        size.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_bytes(self.0))
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_bytes(s).map(ByteSize)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_bytes(self.0))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

struct ByteSizeVisitor;

impl Visitor<'_> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a size like "64MiB", "512KiB" or a number of bytes"#)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
        u64::try_from(v)
            .map(ByteSize)
            .map_err(|_| E::custom(format!("{v} is negative; {EXPECTED}")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
        parse_bytes(v).map(ByteSize).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_units_are_powers_of_1024() {
        assert_eq!(parse_bytes("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_bytes("64MiB"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("2TiB"), Ok(2 << 40));
    }

    #[test]
    fn decimal_units_are_powers_of_1000() {
        assert_eq!(parse_bytes("100KB"), Ok(100_000));
        assert_eq!(parse_bytes("3MB"), Ok(3_000_000));
        assert_eq!(parse_bytes("1GB"), Ok(1_000_000_000));
    }

    #[test]
    fn plain_numbers_and_b_suffix_are_bytes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("4096B"), Ok(4096));
        assert_eq!(parse_bytes("0"), Ok(0));
    }

    #[test]
    fn spaces_between_number_and_unit_and_around_are_allowed() {
        assert_eq!(parse_bytes("8 MiB"), Ok(8 << 20));
        assert_eq!(parse_bytes("  1KiB "), Ok(1024));
    }

    #[test]
    fn units_are_case_sensitive_and_the_error_suggests_the_right_case() {
        let err = parse_bytes("64mib").unwrap_err();
        assert!(err.contains("case-sensitive"), "{err}");
        assert!(err.contains("\"MiB\""), "{err}");
        assert!(err.contains("expected a size like \"64MiB\""), "{err}");
    }

    #[test]
    fn unknown_units_list_the_known_ones() {
        let err = parse_bytes("5 parsecs").unwrap_err();
        assert!(err.contains("\"parsecs\""), "{err}");
        assert!(err.contains("KiB, MiB, GiB"), "{err}");
    }

    #[test]
    fn fractions_are_refused_with_a_hint() {
        let err = parse_bytes("1.5MiB").unwrap_err();
        assert!(err.contains("1536KiB"), "{err}");
    }

    #[test]
    fn empty_negative_and_wordy_inputs_say_what_is_expected() {
        for bad in ["", "  ", "-1", "MiB", "lots"] {
            let err = parse_bytes(bad).unwrap_err();
            assert!(err.contains("expected a size like"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert!(parse_bytes("99999999999999999999")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_bytes("20000000TiB")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn format_uses_the_largest_exact_unit() {
        assert_eq!(format_bytes(67_108_864), "64MiB");
        assert_eq!(format_bytes(1536 * 1024), "1536KiB");
        assert_eq!(format_bytes(1 << 30), "1GiB");
        assert_eq!(format_bytes(100_000), "100KB");
        assert_eq!(format_bytes(1023), "1023B");
        assert_eq!(format_bytes(0), "0B");
    }

    #[test]
    fn format_round_trips_through_parse() {
        for n in [0, 1, 999, 1000, 1024, 4097, 8 << 20, 3_000_000, u64::MAX] {
            assert_eq!(parse_bytes(&format_bytes(n)), Ok(n), "{n}");
        }
    }

    #[derive(Deserialize, Serialize, Debug, PartialEq)]
    struct Holder {
        size: ByteSize,
    }

    #[test]
    fn byte_size_deserializes_from_integer_or_string() {
        let a: Holder = toml::from_str("size = 4096").unwrap();
        assert_eq!(a.size, ByteSize(4096));
        let b: Holder = toml::from_str(r#"size = "8MiB""#).unwrap();
        assert_eq!(b.size, ByteSize(8 << 20));
    }

    #[test]
    fn byte_size_errors_carry_the_parse_message() {
        let err = toml::from_str::<Holder>(r#"size = "8 furlongs""#).unwrap_err();
        assert!(err.message().contains("expected a size like"), "{err}");
        let err = toml::from_str::<Holder>("size = -5").unwrap_err();
        assert!(err.message().contains("negative"), "{err}");
        let err = toml::from_str::<Holder>("size = true").unwrap_err();
        assert!(err.message().contains("a size like"), "{err}");
    }

    #[test]
    fn byte_size_serializes_as_the_formatted_string() {
        let text = toml::to_string(&Holder {
            size: ByteSize(64 << 20),
        })
        .unwrap();
        assert_eq!(text.trim(), r#"size = "64MiB""#);
        assert_eq!(ByteSize(1024).to_string(), "1KiB");
        assert_eq!("2GiB".parse::<ByteSize>(), Ok(ByteSize(2 << 30)));
    }
}
