//! Reading typed fields out of the located tree: mappings checked against their known field
//! names (unknown ones rejected with a "did you mean"), integers in range, strings, keywords,
//! and the field paths (`services[1].resources.cpu`) errors are reported against.
//!
//! Nothing here knows what a service is: which fields exist, their defaults and their rules are
//! the caller's (`service.rs`).

use super::error::{Place, SpecError};
use super::tree::{Node, Value};

/// What every reader needs: the file name for messages and the text for scalars' source.
#[derive(Clone, Copy)]
pub(crate) struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    /// The place of `node`, reported against the field `path`.
    pub fn place(&self, node: &Node, path: &str) -> Place {
        Place::at(self.file, node.line, node.column, path)
    }

    pub fn wrong_type(&self, node: &Node, path: &str, expected: &'static str) -> SpecError {
        SpecError::WrongType {
            at: self.place(node, path),
            expected,
            found: node.describe(),
        }
    }

    /// A non-empty string (`expected` names what it is for the message).
    pub fn string(
        &self,
        node: &Node,
        path: &str,
        expected: &'static str,
    ) -> Result<String, SpecError> {
        match &node.value {
            Value::Str(s) => Ok(s.clone()),
            _ => Err(self.wrong_type(node, path, expected)),
        }
    }

    /// A string, number or boolean read as a string, numbers as written (`1.50`, `8080`).
    pub fn stringish(&self, node: &Node, path: &str) -> Result<String, SpecError> {
        node.scalar_text(self.text)
            .ok_or_else(|| self.wrong_type(node, path, "a string, number or boolean"))
    }

    /// A whole number in `min..=max`.
    pub fn int(
        &self,
        node: &Node,
        path: &str,
        expected: &'static str,
        min: u64,
        max: u64,
    ) -> Result<u64, SpecError> {
        let Value::Int(i) = node.value else {
            return Err(self.wrong_type(node, path, expected));
        };
        u64::try_from(i)
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| SpecError::OutOfRange {
                at: self.place(node, path),
                value: i.to_string(),
                min,
                max,
            })
    }

    /// One of `allowed`, with a suggestion when the value is close to one of them.
    pub fn keyword(
        &self,
        node: &Node,
        path: &str,
        allowed: &'static [&'static str],
    ) -> Result<&'static str, SpecError> {
        let Value::Str(s) = &node.value else {
            return Err(self.wrong_type(node, path, "a keyword"));
        };
        allowed
            .iter()
            .copied()
            .find(|a| a == s)
            .ok_or_else(|| SpecError::UnknownValue {
                at: self.place(node, path),
                value: s.clone(),
                suggestion: suggest(s, allowed),
                expected: allowed,
            })
    }

    /// The items of a list.
    pub fn list<'n>(
        &self,
        node: &'n Node,
        path: &str,
        expected: &'static str,
    ) -> Result<&'n [Node], SpecError> {
        match &node.value {
            Value::Seq(items) => Ok(items),
            _ => Err(self.wrong_type(node, path, expected)),
        }
    }

    /// The entries of a mapping whose keys are free-form strings (like `env`).
    pub fn string_map<'n>(
        &self,
        node: &'n Node,
        path: &str,
        expected: &'static str,
    ) -> Result<Vec<(String, &'n Node, &'n Node)>, SpecError> {
        let Value::Map(entries) = &node.value else {
            return Err(self.wrong_type(node, path, expected));
        };
        entries
            .iter()
            .map(|(k, v)| match k.scalar_text(self.text) {
                Some(name) => Ok((name, k, v)),
                None => Err(self.wrong_type(k, path, "a name")),
            })
            .collect()
    }
}

/// A mapping whose keys were all checked against a fixed list of fields.
pub(crate) struct Fields<'n> {
    /// The mapping node itself (its place is where a missing field is reported).
    pub node: &'n Node,
    pub path: String,
    entries: Vec<(&'n str, &'n Node)>,
}

impl<'n> Fields<'n> {
    /// Reads `node` as a mapping whose keys must be among `known`; the first unknown key (in
    /// file order) is an error naming it, with the closest known field as a suggestion.
    pub fn read(
        src: &Source<'_>,
        node: &'n Node,
        path: &str,
        expected: &'static str,
        known: &'static [&'static str],
    ) -> Result<Fields<'n>, SpecError> {
        let Value::Map(map) = &node.value else {
            return Err(src.wrong_type(node, path, expected));
        };
        let mut entries = Vec::with_capacity(map.len());
        for (key, value) in map {
            let Value::Str(name) = &key.value else {
                return Err(src.wrong_type(key, path, "a field name"));
            };
            if !known.contains(&name.as_str()) {
                return Err(SpecError::UnknownField {
                    at: src.place(key, &child(path, name)),
                    name: name.clone(),
                    suggestion: suggest(name, known),
                    expected: known,
                });
            }
            entries.push((name.as_str(), value));
        }
        Ok(Fields {
            node,
            path: path.to_owned(),
            entries,
        })
    }

    /// The value of field `name`; a null value (`spread:` with nothing after it) counts as absent.
    pub fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .filter(|v| !matches!(v.value, Value::Null))
    }

    /// The path of field `name` of this mapping.
    pub fn path_of(&self, name: &str) -> String {
        child(&self.path, name)
    }
}

/// `parent.name`, or `name` at the top level.
pub(crate) fn child(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

/// `parent[index]`.
pub(crate) fn item(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// The known name closest to `given`: equal ignoring case, within edit distance 2, or starting
/// with `given`. Ties go to the earlier name in `known`.
pub(crate) fn suggest(given: &str, known: &'static [&'static str]) -> Option<&'static str> {
    let given = given.to_lowercase();
    if given.is_empty() || given.len() > 64 {
        return None;
    }
    // Compare with '-' and '_' made equal: `on_failure` means `on-failure`, `stop-grace` means `stop_grace`.
    let norm = |s: &str| s.replace('-', "_");
    let g = norm(&given);
    known
        .iter()
        .copied()
        .filter_map(|k| {
            let k_norm = norm(k);
            let d = edit_distance(&g, &k_norm);
            // An abbreviation: `repl` for `replicas`.
            let prefix = g.len() >= 3 && k_norm.starts_with(&g);
            // A short word within distance 2 of everything short is no suggestion (`ab` vs `env`).
            let close = d <= 2 && d < g.chars().count().max(2);
            (close || prefix).then_some((d, k))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let replace = prev[j] + usize::from(ca != *cb);
            cur.push(replace.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &[&str] = &[
        "name",
        "image",
        "command",
        "replicas",
        "resources",
        "stop_grace",
        "spread",
        "strategy",
    ];

    #[test]
    fn suggestions_catch_typos_prefixes_case_and_dashes() {
        assert_eq!(suggest("replica", SERVICE), Some("replicas"));
        assert_eq!(suggest("imag", SERVICE), Some("image"));
        assert_eq!(suggest("Image", SERVICE), Some("image"));
        assert_eq!(suggest("repl", SERVICE), Some("replicas"));
        assert_eq!(suggest("stop-grace", SERVICE), Some("stop_grace"));
        assert_eq!(
            suggest("on_failure", &["always", "on-failure", "never"]),
            Some("on-failure")
        );
        assert_eq!(suggest("comand", SERVICE), Some("command"));
    }

    #[test]
    fn nothing_is_suggested_for_an_unrelated_word() {
        assert_eq!(suggest("volumes", SERVICE), None);
        assert_eq!(suggest("x", SERVICE), None);
        assert_eq!(suggest("", SERVICE), None);
    }

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("replica", "replicas"), 1);
    }
}
