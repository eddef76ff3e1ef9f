//! The located value tree a spec file is first read into: every node knows its line and column,
//! and scalars keep their source text. Reading text (YAML or JSON) into this tree is here.
//!
//! This file knows nothing of services or fields: no unknown-field checks, no defaults, no
//! semantic validation (that is `service.rs`). Work and memory are bounded by serde-saphyr's
//! budget, set tight here because a spec file is small.

use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{Budget, DefaultMessageFormatter, MessageFormatter, Spanned};

use super::error::{Format, Place, SpecError};

/// One YAML/JSON node and where it is.
#[derive(Debug)]
pub(crate) struct Node {
    pub value: Value,
    /// 1-based line and column of the node (for an alias: of the alias, where it is used).
    pub line: usize,
    pub column: usize,
    /// Byte range of the node's definition in the source text, when known: how a number or
    /// boolean was written (`1.50`, `0x10`), used when it stands for a string.
    raw: Option<Range<usize>>,
}

#[derive(Debug)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The node's source text, trimmed, when the source span is known and valid.
    pub fn raw<'t>(&self, text: &'t str) -> Option<&'t str> {
        self.raw
            .clone()
            .and_then(|r| text.get(r))
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    /// A scalar as a string, as written: strings as they are, numbers and booleans as in the
    /// source (so `1.50` stays `1.50`). None for null, lists and mappings.
    pub fn scalar_text(&self, text: &str) -> Option<String> {
        let fallback = match &self.value {
            Value::Str(s) => return Some(s.clone()),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Null | Value::Seq(_) | Value::Map(_) => return None,
        };
        // Anchored or tagged scalars have spans that cover more than the scalar itself.
        Some(
            self.raw(text)
                .filter(|r| !r.contains(['&', '*', '!']))
                .map_or(fallback, str::to_owned),
        )
    }

    /// What this node is, for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Null => "nothing (null)".to_owned(),
            Value::Bool(b) => format!("boolean {b}"),
            Value::Int(i) => format!("number {i}"),
            Value::Float(f) => format!("number {f}"),
            Value::Str(s) => {
                let shown: String = s.chars().take(40).collect();
                let more = if shown.len() < s.len() { "…" } else { "" };
                format!("string {shown:?}{more}")
            }
            Value::Seq(_) => "a list".to_owned(),
            Value::Map(_) => "a mapping".to_owned(),
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(d)?;
        let span = spanned.defined.span();
        let raw = match (span.byte_offset(), span.byte_len()) {
            (Some(start), Some(len)) => usize::try_from(start)
                .ok()
                .zip(usize::try_from(len).ok())
                .and_then(|(s, l)| Some(s..s.checked_add(l)?)),
            _ => None,
        };
        Ok(Node {
            value: spanned.value,
            line: usize::try_from(spanned.referenced.line()).unwrap_or(0),
            column: usize::try_from(spanned.referenced.column()).unwrap_or(0),
            raw,
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any yaml value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        // `!!binary` scalars: only meaningful to us if they are text.
        String::from_utf8(v.to_vec())
            .map(Value::Str)
            .map_err(|_| E::custom("binary value is not utf-8 text"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Value::Map(entries))
    }
}

/// Reads `text` into one tree per YAML document (null documents skipped).
///
/// JSON is read by the YAML parser too (so nodes have lines), but first checked by serde_json
/// when the file looks like JSON: a `.json` name, or text starting with `{` or `[`. A `.json`
/// file must be strict JSON. Text starting with `{`/`[` that is not valid JSON may still be a
/// YAML flow collection; if it is not valid YAML either, the JSON error is reported.
pub(crate) fn load(file: &str, text: &str) -> Result<Vec<Node>, SpecError> {
    if text.trim().is_empty() {
        // No service, whatever the format: the caller says so (serde_json would say "EOF").
        return Ok(Vec::new());
    }
    let named_json = file.to_ascii_lowercase().ends_with(".json");
    let looks_json = text.trim_start().starts_with(['{', '[']);
    if named_json || looks_json {
        if let Err(json_err) = serde_json::from_str::<de::IgnoredAny>(text) {
            let json_err = json_error(file, &json_err);
            if named_json {
                return Err(json_err);
            }
            return load_yaml(file, text, Format::Json).map_err(|_| json_err);
        }
        return load_yaml(file, text, Format::Json);
    }
    load_yaml(file, text, Format::Yaml)
}

fn load_yaml(file: &str, text: &str, format: Format) -> Result<Vec<Node>, SpecError> {
    serde_saphyr::from_str_multiple_with_options::<Node, Vec<Node>>(text, options())
        .map_err(|e| yaml_error(file, format, &e))
}

/// Deepest nesting of lists and mappings read; a spec needs about five levels.
const MAX_DEPTH: usize = 32;

/// serde-saphyr options: YAML 1.2 booleans (`yes` and `no` stay strings: `NO` is a country),
/// no source snippets in messages (we add our own location), and a budget sized for spec files
/// rather than the library's generous defaults, so an alias bomb or a deep nest fails fast.
fn options() -> serde_saphyr::Options {
    let mut budget = Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_events = 200_000;
    budget.max_nodes = 100_000;
    budget.max_aliases = 1_000;
    budget.max_documents = 1_000;
    budget.max_total_scalar_bytes = 4 << 20;
    let mut options = serde_saphyr::options! { strict_booleans: true, with_snippet: false };
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = 20_000;
    options
}

fn yaml_error(file: &str, format: Format, err: &serde_saphyr::Error) -> SpecError {
    let mut inner = err;
    while let serde_saphyr::Error::AliasError { error, .. }
    | serde_saphyr::Error::WithSnippet { error, .. } = inner
    {
        inner = error;
    }
    let (line, column) = err
        .location()
        .map(|l| {
            (
                usize::try_from(l.line()).unwrap_or(0),
                usize::try_from(l.column()).unwrap_or(0),
            )
        })
        .unwrap_or((0, 0));
    let at = Place::at(file, line, column, "");
    if let serde_saphyr::Error::DuplicateMappingKey { key, .. } = inner {
        return SpecError::DuplicateKey {
            at,
            key: key.clone().unwrap_or_else(|| "?".to_owned()),
        };
    }
    if let serde_saphyr::Error::Budget {
        breach: BudgetBreach::Depth { .. },
        ..
    } = inner
    {
        let detail = format!("nested more than {MAX_DEPTH} levels deep, a spec needs far fewer");
        return SpecError::Syntax { at, format, detail };
    }
    let message = DefaultMessageFormatter.format_message(inner);
    // The formatter's text may hold control characters copied from the input.
    let detail: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    SpecError::Syntax { at, format, detail }
}

fn json_error(file: &str, err: &serde_json::Error) -> SpecError {
    let full = err.to_string();
    // serde_json appends " at line L column C"; the place says that already.
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    let detail = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    SpecError::Syntax {
        at: Place::at(file, err.line(), err.column(), ""),
        format: Format::Json,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_know_their_line_and_column() {
        let docs = load("t.yaml", "name: web\nreplicas: 3\n").unwrap();
        let Value::Map(entries) = &docs[0].value else {
            panic!("not a map: {:?}", docs[0])
        };
        let (key, value) = &entries[1];
        assert_eq!((key.line, key.column), (2, 1));
        assert_eq!((value.line, value.column), (2, 11));
        assert!(matches!(value.value, Value::Int(3)));
    }

    #[test]
    fn numbers_standing_for_strings_keep_their_source_text() {
        let text = "a: 1.50\nb: 0x10\nc: true\nd: yes\n";
        let docs = load("t.yaml", text).unwrap();
        let Value::Map(entries) = &docs[0].value else {
            panic!()
        };
        let texts: Vec<_> = entries
            .iter()
            .map(|(_, v)| v.scalar_text(text).unwrap())
            .collect();
        assert_eq!(texts, ["1.50", "0x10", "true", "yes"]);
    }

    #[test]
    fn an_invalid_json_file_reports_serde_json_line_and_column() {
        let err = load("web.json", "{\n  \"name\": \"web\",\n  \"replicas\": }\n").unwrap_err();
        assert!(
            matches!(
                err,
                SpecError::Syntax {
                    format: Format::Json,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.line(), Some(3));
        assert_eq!(err.column(), Some(15));
        assert!(!err.to_string().contains(" at line"), "{err}");
    }

    #[test]
    fn a_yaml_flow_mapping_is_not_mistaken_for_broken_json() {
        let docs = load("t.yaml", "{name: web, image: nginx}").unwrap();
        assert!(matches!(docs[0].value, Value::Map(ref e) if e.len() == 2));
    }

    #[test]
    fn a_yaml_syntax_error_has_a_line_and_no_location_suffix() {
        let err = load("t.yaml", "name: web\nports: [1, 2\n").unwrap_err();
        assert!(
            matches!(
                err,
                SpecError::Syntax {
                    format: Format::Yaml,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.line().is_some(), "{err}");
        assert!(!err.to_string().contains("at line"), "{err}");
    }

    #[test]
    fn a_duplicate_key_is_named_with_its_line() {
        let err = load("t.yaml", "name: a\nimage: x\nname: b\n").unwrap_err();
        assert_eq!(
            err,
            SpecError::DuplicateKey {
                at: Place::at("t.yaml", 3, 1, ""),
                key: "name".into()
            }
        );
    }
}
