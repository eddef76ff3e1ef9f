//! `SpecError`: everything that can be wrong with a spec file, each variant carrying where
//! (file, line, column, field path) and what a person should change.
//!
//! This file holds the error type and its wording only. It does not detect errors (see
//! `service.rs`, `fields.rs` and `tree.rs`) and it has no catch-all variant: a new kind of
//! mistake gets its own variant.

use std::fmt;

/// Where in a spec file an error is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    /// The file name as the caller gave it (used only in messages).
    pub file: String,
    /// 1-based line, when known (`u32` keeps `SpecError` small; files are far shorter).
    pub line: Option<u32>,
    /// 1-based column in characters, when known.
    pub column: Option<u32>,
    /// Path of the field, e.g. `services[1].resources.cpu`; empty for the file as a whole.
    /// A file holding a single service mapping has no `services[i]` prefix.
    pub field: String,
}

impl Place {
    /// The whole file, no line.
    pub(crate) fn file(file: &str) -> Place {
        Place {
            file: file.to_owned(),
            line: None,
            column: None,
            field: String::new(),
        }
    }

    /// A 1-based line and column; 0 (unknown in serde-saphyr and serde_json) reads as unknown.
    pub(crate) fn at(file: &str, line: usize, column: usize, field: &str) -> Place {
        let line = u32::try_from(line).ok().filter(|l| *l > 0);
        let column = u32::try_from(column)
            .ok()
            .filter(|c| *c > 0 && line.is_some());
        Place {
            file: file.to_owned(),
            line,
            column,
            field: field.to_owned(),
        }
    }
}

impl fmt::Display for Place {
    /// `spec web.yaml line 4 column 3`: the prefix of every message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spec {}", self.file)?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
            if let Some(column) = self.column {
                write!(f, " column {column}")?;
            }
        }
        Ok(())
    }
}

/// The text format a file was read as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Yaml => "yaml",
            Format::Json => "json",
        })
    }
}

/// Which kind of name failed its rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    Service,
    Port,
    EnvVar,
    Label,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Service => "service name",
            NameKind::Port => "port name",
            NameKind::EnvVar => "environment variable name",
            NameKind::Label => "label name",
        })
    }
}

/// Which quantity failed to parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantityKind {
    Cpu,
    Memory,
    Duration,
}

impl fmt::Display for QuantityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuantityKind::Cpu => "cpu",
            QuantityKind::Memory => "memory",
            QuantityKind::Duration => "duration",
        })
    }
}

/// Why a spec file was rejected. Every message starts with `spec FILE line L column C:` (line and
/// column when known), names the field and says what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The bytes are not UTF-8; `byte` is the offset of the first bad byte.
    #[error("{at}: not valid utf-8 at byte {byte}, save the file as utf-8")]
    NotUtf8 { at: Place, byte: usize },

    /// The text is not well-formed YAML or JSON (or exceeds the parser's size budget).
    /// `detail` is the parser's own description.
    #[error("{at}: invalid {format}: {detail}")]
    Syntax {
        at: Place,
        format: Format,
        detail: String,
    },

    /// A mapping holds the same key twice.
    #[error("{at}: duplicate key {key:?}, keep only one")]
    DuplicateKey { at: Place, key: String },

    /// The file holds no service at all (empty, only comments, or an empty list).
    #[error(
        "{at}: no service in file, write one service (a mapping with name and image) or a list of them"
    )]
    NoService { at: Place },

    /// A mapping has a key Shoal does not know; `suggestion` is the closest known one.
    #[error(
        "{at}: unknown field {name:?}{}{}",
        in_parent(&.at.field),
        advice(*.suggestion, .expected)
    )]
    UnknownField {
        at: Place,
        name: String,
        suggestion: Option<&'static str>,
        expected: &'static [&'static str],
    },

    /// A required field is absent; `at.field` is the path it should have.
    #[error("{at}: missing field {name:?}{}, {hint}", in_parent(&.at.field))]
    MissingField {
        at: Place,
        name: &'static str,
        hint: &'static str,
    },

    /// A value has the wrong shape (`replicas: three`, `ports: 80`).
    #[error("{at}: {}expected {expected}, found {found}", field_prefix(&.at.field))]
    WrongType {
        at: Place,
        expected: &'static str,
        found: String,
    },

    /// A whole number outside its allowed range.
    #[error("{at}: {}{value} is out of range, use {min} to {max}", field_prefix(&.at.field))]
    OutOfRange {
        at: Place,
        value: String,
        min: u64,
        max: u64,
    },

    /// A service, port, environment variable or label name breaks its rules.
    #[error("{at}: {}bad {kind} {value:?}: {reason}", field_prefix(&.at.field))]
    InvalidName {
        at: Place,
        kind: NameKind,
        value: String,
        reason: String,
    },

    /// A cpu, memory or duration value that does not parse.
    #[error("{at}: {}bad {kind} {value:?}: {reason}", field_prefix(&.at.field))]
    InvalidQuantity {
        at: Place,
        kind: QuantityKind,
        value: String,
        reason: String,
    },

    /// A placement constraint that is not `label == value` or `label != value`.
    #[error("{at}: {}bad constraint {value:?}: {reason}", field_prefix(&.at.field))]
    InvalidConstraint {
        at: Place,
        value: String,
        reason: String,
    },

    /// A keyword field (`strategy`, `restart.policy`, `partition`) with a value it does not take.
    #[error(
        "{at}: {}unknown value {value:?}{}",
        field_prefix(&.at.field),
        advice(*.suggestion, .expected)
    )]
    UnknownValue {
        at: Place,
        value: String,
        suggestion: Option<&'static str>,
        expected: &'static [&'static str],
    },

    /// A string or list that must not be empty (`image: ""`, `command: []`).
    #[error("{at}: {}is empty, {hint}", field_prefix(&.at.field))]
    Empty { at: Place, hint: &'static str },

    /// A service with neither `image` nor `command`; `at.field` is the path `image` would have.
    #[error(
        "{at}: missing field \"image\" or \"command\"{}, set image (docker driver) or command (process driver)",
        in_parent(&.at.field)
    )]
    NoWorkload { at: Place },

    /// An `image` service publishing a port without saying which container port.
    #[error(
        "{at}: {}container port missing, a service with an image must say which container port to publish (container: 80)",
        field_prefix(&.at.field)
    )]
    MissingContainerPort { at: Place },

    /// Two ports of one service share a name (explicit or defaulted).
    #[error("{at}: {}duplicate port name {name:?}{}, give each port its own name", field_prefix(&.at.field), first(*.first_line))]
    DuplicatePortName {
        at: Place,
        name: String,
        first_line: Option<u32>,
    },

    /// Two ports of one service ask for the same host port.
    #[error("{at}: {}duplicate host port {port}{}, use a different host port", field_prefix(&.at.field), first(*.first_line))]
    DuplicateHostPort {
        at: Place,
        port: u16,
        first_line: Option<u32>,
    },

    /// Two services in one file share a name.
    #[error("{at}: {}duplicate service name {name:?}{}, service names must be unique in a file", field_prefix(&.at.field), first(*.first_line))]
    DuplicateService {
        at: Place,
        name: String,
        first_line: Option<u32>,
    },
}

impl SpecError {
    /// Where the error is.
    pub fn place(&self) -> &Place {
        match self {
            SpecError::NotUtf8 { at, .. }
            | SpecError::Syntax { at, .. }
            | SpecError::DuplicateKey { at, .. }
            | SpecError::NoService { at }
            | SpecError::UnknownField { at, .. }
            | SpecError::MissingField { at, .. }
            | SpecError::WrongType { at, .. }
            | SpecError::OutOfRange { at, .. }
            | SpecError::InvalidName { at, .. }
            | SpecError::InvalidQuantity { at, .. }
            | SpecError::InvalidConstraint { at, .. }
            | SpecError::UnknownValue { at, .. }
            | SpecError::Empty { at, .. }
            | SpecError::NoWorkload { at }
            | SpecError::MissingContainerPort { at }
            | SpecError::DuplicatePortName { at, .. }
            | SpecError::DuplicateHostPort { at, .. }
            | SpecError::DuplicateService { at, .. } => at,
        }
    }

    /// The 1-based line of the error, when known.
    pub fn line(&self) -> Option<usize> {
        self.place().line.map(|l| l as usize)
    }

    /// The 1-based column of the error, when known.
    pub fn column(&self) -> Option<usize> {
        self.place().column.map(|c| c as usize)
    }

    /// The field path (`services[1].resources.cpu`), when the error is about a field.
    pub fn field(&self) -> Option<&str> {
        let field = self.place().field.as_str();
        (!field.is_empty()).then_some(field)
    }
}

/// `resources.cpu: ` before a message about a field, nothing for the file as a whole.
fn field_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

/// ` in services[1]` for the parent of a field path, nothing at the top level.
fn in_parent(path: &str) -> String {
    match path.rfind('.') {
        Some(dot) => format!(" in {}", &path[..dot]),
        None => String::new(),
    }
}

/// `, did you mean "replicas"` or `, expected one of a, b, c`.
fn advice(suggestion: Option<&str>, expected: &[&str]) -> String {
    match suggestion {
        Some(s) => format!(", did you mean {s:?}"),
        None => format!(", expected one of {}", expected.join(", ")),
    }
}

/// ` (first at line 3)` when the earlier occurrence's line is known.
fn first(line: Option<u32>) -> String {
    line.map(|l| format!(" (first at line {l})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_reads_like_the_style_guide_example() {
        let err = SpecError::UnknownField {
            at: Place {
                file: "web.yaml".into(),
                line: Some(4),
                column: None,
                field: "replica".into(),
            },
            name: "replica".into(),
            suggestion: Some("replicas"),
            expected: &["replicas"],
        };
        assert_eq!(
            err.to_string(),
            r#"spec web.yaml line 4: unknown field "replica", did you mean "replicas""#
        );
    }

    #[test]
    fn nested_unknown_field_names_its_parent_and_lists_the_fields_without_a_close_match() {
        let err = SpecError::UnknownField {
            at: Place::at("a.yaml", 7, 5, "services[1].resources.gpu_count"),
            name: "gpu_count".into(),
            suggestion: None,
            expected: &["cpu", "memory"],
        };
        assert_eq!(
            err.to_string(),
            r#"spec a.yaml line 7 column 5: unknown field "gpu_count" in services[1].resources, expected one of cpu, memory"#
        );
        assert_eq!(err.field(), Some("services[1].resources.gpu_count"));
        assert_eq!(err.line(), Some(7));
    }

    #[test]
    fn a_file_level_error_has_no_line_and_no_field() {
        let err = SpecError::NoService {
            at: Place::file("x.yaml"),
        };
        assert_eq!(err.line(), None);
        assert_eq!(err.field(), None);
        assert!(
            err.to_string()
                .starts_with("spec x.yaml: no service in file")
        );
    }
}
