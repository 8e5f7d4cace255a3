//! Reads typed fields out of a parsed TOML document while keeping track of where they are.
//!
//! Both the node config and agent manifests are read through this instead of a serde derive
//! so that every error names the exact field path (`messaging.publish[1]`,
//! `agents[0].manifest`), what was found and what is expected. Unknown keys are refused in
//! every section: a misspelt grant must not silently become "no grant".

use toml::{Table, Value};

use crate::units::parse_bytes;

/// A problem with one field; the caller adds the file name.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldError {
    /// Dotted path to the field, or `None` for problems with the whole document.
    pub field: Option<String>,
    pub problem: String,
}

impl FieldError {
    pub(crate) fn at(field: impl Into<String>, problem: impl Into<String>) -> Self {
        FieldError {
            field: Some(field.into()),
            problem: problem.into(),
        }
    }
}

/// Parses TOML text into a table; syntax errors carry the line and column.
pub(crate) fn parse_document(text: &str) -> Result<Table, FieldError> {
    text.parse::<Table>().map_err(|e| {
        let at = match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {column}")
            }
            None => String::new(),
        };
        FieldError {
            field: None,
            problem: format!("invalid TOML{at}: {}", e.message().trim()),
        }
    })
}

/// Describes a TOML value the way a person would, for "found ..." in error messages.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {s:?}"),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Float(f) => format!("the number {f}"),
        Value::Boolean(b) => format!("{b}"),
        Value::Datetime(d) => format!("the date-time {d}"),
        Value::Array(_) => "a list".to_string(),
        Value::Table(_) => "a table".to_string(),
    }
}

/// One table of the document (possibly absent, which reads as empty) with its path.
pub(crate) struct Section<'a> {
    path: String,
    table: Option<&'a Table>,
}

impl<'a> Section<'a> {
    /// The document root; `allowed` are the section names it may contain.
    pub(crate) fn root(table: &'a Table, allowed: &[&str]) -> Result<Self, FieldError> {
        let section = Section {
            path: String::new(),
            table: Some(table),
        };
        section.check_keys(allowed)?;
        Ok(section)
    }

    /// The dotted path of a key in this section.
    pub(crate) fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Builds an error about `key` in this section.
    pub(crate) fn error(&self, key: &str, problem: impl Into<String>) -> FieldError {
        FieldError::at(self.path_of(key), problem)
    }

    fn check_keys(&self, allowed: &[&str]) -> Result<(), FieldError> {
        let Some(table) = self.table else {
            return Ok(());
        };
        for key in table.keys() {
            if allowed.contains(&key.as_str()) {
                continue;
            }
            let problem = if self.path.is_empty() {
                let sections: Vec<String> = allowed.iter().map(|s| format!("[{s}]")).collect();
                format!(
                    "unknown top-level field {key:?}; expected only the sections {}",
                    sections.join(", ")
                )
            } else {
                format!(
                    "unknown field {key:?} in [{}]; expected one of {}",
                    self.path,
                    allowed.join(", ")
                )
            };
            return Err(self.error(key, problem));
        }
        Ok(())
    }

    fn value(&self, key: &str) -> Option<&'a Value> {
        self.table.and_then(|t| t.get(key))
    }

    fn mismatch(&self, key: &str, value: &Value, expected: &str) -> FieldError {
        self.error(
            key,
            format!("expected {expected}, found {}", describe(value)),
        )
    }

    /// A sub-table such as `[agent]`; missing reads as empty, unknown keys are errors.
    pub(crate) fn section(&self, key: &str, allowed: &[&str]) -> Result<Section<'a>, FieldError> {
        let table = match self.value(key) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(other) => {
                return Err(self.mismatch(key, other, &format!("a table [{}]", self.path_of(key))))
            }
        };
        let section = Section {
            path: self.path_of(key),
            table,
        };
        section.check_keys(allowed)?;
        Ok(section)
    }

    /// A sub-table whose keys are free-form, such as `[config]`.
    pub(crate) fn section_any(&self, key: &str) -> Result<Section<'a>, FieldError> {
        match self.value(key) {
            None | Some(Value::Table(_)) => {}
            Some(other) => {
                return Err(self.mismatch(key, other, &format!("a table [{}]", self.path_of(key))))
            }
        }
        Ok(Section {
            path: self.path_of(key),
            table: self.value(key).and_then(Value::as_table),
        })
    }

    /// All key/value pairs, for free-form sections like `[config]`.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&'a String, &'a Value)> {
        self.table.into_iter().flat_map(|t| t.iter())
    }

    pub(crate) fn string(&self, key: &str, example: &str) -> Result<Option<String>, FieldError> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.mismatch(key, other, &format!("a string like {example}"))),
        }
    }

    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>, FieldError> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(other) => Err(self.mismatch(key, other, "true or false (without quotes)")),
        }
    }

    /// A non-negative integer that fits `T`; `example` completes "a whole number like ...".
    pub(crate) fn uint<T>(&self, key: &str, example: &str) -> Result<Option<T>, FieldError>
    where
        T: TryFrom<i64> + Bounded,
    {
        let expected = format!("a whole number like {example}");
        match self.value(key) {
            None => Ok(None),
            Some(Value::Integer(i)) if *i < 0 => Err(self.error(
                key,
                format!("{i} is negative; expected {expected} (0 or more)"),
            )),
            Some(Value::Integer(i)) => T::try_from(*i)
                .map(Some)
                .map_err(|_| self.error(key, format!("{i} is too large; at most {}", T::MAX_TEXT))),
            Some(other) => Err(self.mismatch(key, other, &expected)),
        }
    }

    /// Like [`Section::uint`] but zero is refused with `why_not_zero` as the explanation.
    pub(crate) fn positive<T>(
        &self,
        key: &str,
        example: &str,
        why_not_zero: &str,
    ) -> Result<Option<T>, FieldError>
    where
        T: TryFrom<i64> + Bounded + PartialEq + Default,
    {
        let value = self.uint::<T>(key, example)?;
        if value == Some(T::default()) {
            return Err(self.error(
                key,
                format!(
                    "0 is not allowed ({why_not_zero}); expected a whole number like {example}"
                ),
            ));
        }
        Ok(value)
    }

    /// A byte size written as an integer or a string like `"64MiB"`.
    pub(crate) fn bytes(&self, key: &str) -> Result<Option<u64>, FieldError> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Integer(i)) => u64::try_from(*i).map(Some).map_err(|_| {
                self.error(
                    key,
                    format!(r#"{i} is negative; expected a size like "64MiB", "512KiB" or a number of bytes"#),
                )
            }),
            Some(Value::String(s)) => parse_bytes(s).map(Some).map_err(|e| self.error(key, e)),
            Some(other) => Err(self.mismatch(
                key,
                other,
                r#"a size like "64MiB", "512KiB" or a number of bytes"#,
            )),
        }
    }

    /// A byte size that must not be zero.
    pub(crate) fn positive_bytes(
        &self,
        key: &str,
        why_not_zero: &str,
    ) -> Result<Option<u64>, FieldError> {
        let value = self.bytes(key)?;
        if value == Some(0) {
            return Err(self.error(
                key,
                format!(r#"0 bytes is not allowed ({why_not_zero}); expected a size like "64MiB""#),
            ));
        }
        Ok(value)
    }

    /// A list of strings; items that are not strings are named by index.
    pub(crate) fn string_list(
        &self,
        key: &str,
        example: &str,
    ) -> Result<Option<Vec<String>>, FieldError> {
        let items = match self.value(key) {
            None => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(self.mismatch(key, other, &format!("a list of strings like {example}")))
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) => out.push(s.clone()),
                other => {
                    return Err(self.error(
                        &format!("{key}[{i}]"),
                        format!("expected a string, found {}", describe(other)),
                    ))
                }
            }
        }
        Ok(Some(out))
    }

    /// An array of tables such as `[[agents]]`; each element's path is `key[i]`.
    pub(crate) fn table_array(
        &self,
        key: &str,
        allowed: &[&str],
    ) -> Result<Vec<Section<'a>>, FieldError> {
        let items = match self.value(key) {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(self.mismatch(key, other, &format!("a list of [[{key}]] tables")))
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", self.path_of(key));
            let Value::Table(table) = item else {
                return Err(FieldError::at(
                    path,
                    format!("expected a [[{key}]] table, found {}", describe(item)),
                ));
            };
            let section = Section {
                path,
                table: Some(table),
            };
            section.check_keys(allowed)?;
            out.push(section);
        }
        Ok(out)
    }
}

/// The largest value of an integer type, as text for "too large" errors.
pub(crate) trait Bounded {
    const MAX_TEXT: &'static str;
}

impl Bounded for u32 {
    const MAX_TEXT: &'static str = "4294967295";
}

impl Bounded for u64 {
    const MAX_TEXT: &'static str = "9223372036854775807";
}

impl Bounded for usize {
    const MAX_TEXT: &'static str = "the platform's usize maximum";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Table {
        parse_document(text).unwrap()
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let err = parse_document("a = 1\nb = = 2\n").unwrap_err();
        assert_eq!(err.field, None);
        assert!(
            err.problem.starts_with("invalid TOML at line 2, column"),
            "{}",
            err.problem
        );
    }

    #[test]
    fn unknown_keys_name_the_section_and_the_allowed_keys() {
        let table = doc("[s]\nx = 1\ny = 2\n");
        let root = Section::root(&table, &["s"]).unwrap();
        let err = root.section("s", &["x"]).err().unwrap();
        assert_eq!(err.field.as_deref(), Some("s.y"));
        assert!(err
            .problem
            .contains("unknown field \"y\" in [s]; expected one of x"));
    }

    #[test]
    fn unknown_top_level_keys_list_the_sections() {
        let table = doc("name = \"x\"\n");
        let err = Section::root(&table, &["agent", "kv"]).err().unwrap();
        assert_eq!(err.field.as_deref(), Some("name"));
        assert!(err.problem.contains("[agent], [kv]"), "{}", err.problem);
    }

    #[test]
    fn integers_out_of_range_for_the_type_are_too_large() {
        let table = doc("[s]\nn = 5000000000\n");
        let s = Section::root(&table, &["s"])
            .unwrap()
            .section("s", &["n"])
            .unwrap();
        let err = s.uint::<u32>("n", "5").unwrap_err();
        assert!(err.problem.contains("too large; at most 4294967295"));
        assert_eq!(s.uint::<u64>("n", "5").unwrap(), Some(5_000_000_000));
    }

    #[test]
    fn list_items_of_the_wrong_type_are_named_by_index() {
        let table = doc("[s]\nl = [\"a\", 2]\n");
        let s = Section::root(&table, &["s"])
            .unwrap()
            .section("s", &["l"])
            .unwrap();
        let err = s.string_list("l", "[\"a\"]").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("s.l[1]"));
        assert!(err
            .problem
            .contains("expected a string, found the integer 2"));
    }
}
