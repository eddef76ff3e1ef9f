//! Tidy checks of the code's own rules: the sans-IO core (`membership/`, `state/`, `placement/`,
//! `reconcile/`, `node/`) never reads a clock, does IO, spawns tasks or draws OS randomness, and
//! imports no shell module; only the docker driver names bollard; every source file opens with a
//! `//!` doc; no source file outside tests passes `MAX_LINES`.
//!
//! Each rule is a function from a file's text (or path and length) to its violations, so the
//! tests at the bottom can show it catching a made-up offender: a check that silently stopped
//! matching would pass forever otherwise. It reads source text; it does not parse Rust, so a
//! string literal that looks like a path counts as one (none does today).

use std::path::{Path, PathBuf};

const CORE: &[&str] = &[
    "src/membership",
    "src/state",
    "src/placement",
    "src/reconcile",
    "src/node",
];

const FORBIDDEN: &[(&str, &str)] = &[
    ("Instant::now", "reads a clock"),
    ("SystemTime", "reads a clock"),
    ("tokio::", "uses the async runtime"),
    ("std::fs", "does file IO"),
    ("std::net", "does network IO"),
    ("std::process", "spawns processes"),
    ("std::thread", "spawns threads"),
    ("thread_rng", "draws OS randomness"),
    ("rand::rng()", "draws OS randomness"),
    ("OsRng", "draws OS randomness"),
    ("from_os_rng", "draws OS randomness"),
    ("getrandom", "draws OS randomness"),
    ("std::env", "reads the environment"),
];

/// The shell modules the core must not import. The core may use `crate::runtime` itself (the
/// driver-independent commands, events, handles and `Owner`), never a driver or the lease.
const SHELL: &[&str] = &[
    "crate::agent",
    "crate::net",
    "crate::store",
    "crate::api",
    "crate::cli",
    "crate::sim",
    "crate::runtime::docker",
    "crate::runtime::process",
    "crate::runtime::lease",
];

/// Where bollard may be named: the docker driver's folder.
const BOLLARD_HOME: &[&str] = &["src/runtime/docker/"];

/// Where bollard must not be named. `tests/` may: its docker tests build images and plant
/// foreign containers with bollard directly, as an outside party would.
const BOLLARD_FREE: &[&str] = &["src", "chaos/src", "benches"];

/// The longest a source file outside tests may be: past it, a file holds more than one concern.
const MAX_LINES: usize = 800;

/// Where `MAX_LINES` applies.
const SOURCES: &[&str] = &["src", "chaos/src"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `.rs` files under `dirs` (relative to the package root), sorted, with their paths
/// relative to the root written with `/`.
fn files_under(dirs: &[&str]) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for dir in dirs {
        rust_files(&root().join(dir), &mut files);
    }
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(root()).unwrap();
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let text = std::fs::read_to_string(&f).unwrap();
            (rel, text)
        })
        .collect()
}

/// The text with `//` comments (doc comments included) blanked out, lines kept in place.
fn code_only(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn line_of(code: &str, pos: usize) -> usize {
    code[..pos].matches('\n').count() + 1
}

/// Every path that starts at `crate::`, with groups expanded (`crate::a::{b, c::d}` is
/// `crate::a::b` and `crate::a::c::d`), each with the line where its last segment is written.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let code = code_only(text);
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::") {
        let start = from + i;
        from = start + "crate::".len();
        let joined = code[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if joined {
            continue; // `mycrate::`, not ours
        }
        let mut pos = from;
        path_tree(&code, &mut pos, "crate", &mut out);
        from = from.max(pos);
    }
    out
}

fn skip_space(code: &str, pos: &mut usize) {
    while code[*pos..].starts_with(char::is_whitespace) {
        *pos += code[*pos..].chars().next().map_or(1, char::len_utf8);
    }
}

/// Reads one use tree at `pos` (a segment, `seg::tree`, or `{tree, ...}`) below `prefix`.
fn path_tree(code: &str, pos: &mut usize, prefix: &str, out: &mut Vec<(usize, String)>) {
    skip_space(code, pos);
    if code[*pos..].starts_with('{') {
        *pos += 1;
        loop {
            skip_space(code, pos);
            if *pos >= code.len() || code[*pos..].starts_with('}') {
                *pos = (*pos + 1).min(code.len());
                return;
            }
            let before = *pos;
            path_tree(code, pos, prefix, out);
            skip_space(code, pos);
            // `seg as alias`: the alias does not change what is imported.
            if code[*pos..].starts_with("as ") {
                *pos += 3;
                skip_space(code, pos);
                let alias = code[*pos..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(code.len() - *pos);
                *pos += alias;
                skip_space(code, pos);
            }
            if code[*pos..].starts_with(',') {
                *pos += 1;
            } else if *pos == before || !code[*pos..].starts_with('}') {
                return; // not a use tree after all
            }
        }
    }
    let len = code[*pos..]
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '*'))
        .unwrap_or(code.len() - *pos);
    if len == 0 {
        return;
    }
    let line = line_of(code, *pos);
    let path = format!("{prefix}::{}", &code[*pos..*pos + len]);
    *pos += len;
    if code[*pos..].starts_with("::") {
        *pos += 2;
        path_tree(code, pos, &path, out);
    } else {
        out.push((line, path));
    }
}

/// The core's imports of shell modules: `(line, path)`.
fn shell_imports(text: &str) -> Vec<(usize, String)> {
    crate_paths(text)
        .into_iter()
        .filter(|(_, p)| {
            SHELL
                .iter()
                .any(|s| p == s || p.strip_prefix(s).is_some_and(|r| r.starts_with("::")))
        })
        .collect()
}

/// The lines (1-based) whose code names bollard.
fn bollard_lines(text: &str) -> Vec<usize> {
    code_only(text)
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("bollard"))
        .map(|(n, _)| n + 1)
        .collect()
}

/// Whether `path` (relative, `/`-separated) holds tests, to which `MAX_LINES` does not apply:
/// `tests.rs`, `*_tests.rs`, or anything in a `tests/` folder.
fn is_test_file(path: &str) -> bool {
    let mut parts: Vec<&str> = path.split('/').collect();
    let name = parts.pop().unwrap_or("");
    name == "tests.rs" || name.ends_with("_tests.rs") || parts.contains(&"tests")
}

/// The files over `MAX_LINES`, each as `path: N lines`, longest first.
fn long_files(files: &[(String, String)]) -> Vec<String> {
    let mut long: Vec<(usize, &str)> = files
        .iter()
        .filter(|(path, _)| !is_test_file(path))
        .map(|(path, text)| (text.lines().count(), path.as_str()))
        .filter(|(n, _)| *n > MAX_LINES)
        .collect();
    long.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    long.into_iter()
        .map(|(n, path)| format!("{path}: {n} lines"))
        .collect()
}

#[test]
fn the_core_performs_no_io_reads_no_clock_and_draws_no_os_randomness() {
    let files = files_under(CORE);
    assert!(!files.is_empty(), "no core files found");
    let mut violations = Vec::new();
    for (path, text) in &files {
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (pat, what) in FORBIDDEN {
                if code.contains(pat) {
                    violations.push(format!("{path}:{}: {what} ({pat})", n + 1));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "the sans-IO core must stay pure:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_core_imports_no_shell_module() {
    let files = files_under(CORE);
    assert!(!files.is_empty(), "no core files found");
    let violations: Vec<String> = files
        .iter()
        .flat_map(|(path, text)| {
            shell_imports(text)
                .into_iter()
                .map(move |(line, p)| format!("{path}:{line}: imports {p}"))
        })
        .collect();
    assert!(
        violations.is_empty(),
        "the core ({}) must not import the shell ({}); move the shared type into the core or \
         hand the core a fact instead:\n{}",
        CORE.join(", "),
        SHELL.join(", "),
        violations.join("\n")
    );
}

#[test]
fn only_the_docker_driver_names_bollard() {
    let files = files_under(BOLLARD_FREE);
    assert!(!files.is_empty(), "no source files found");
    let violations: Vec<String> = files
        .iter()
        .filter(|(path, _)| !BOLLARD_HOME.iter().any(|home| path.starts_with(home)))
        .flat_map(|(path, text)| {
            bollard_lines(text)
                .into_iter()
                .map(move |line| format!("{path}:{line}: names bollard"))
        })
        .collect();
    assert!(
        violations.is_empty(),
        "bollard belongs to the docker driver ({}); its types must not leak out:\n{}",
        BOLLARD_HOME.join(" or "),
        violations.join("\n")
    );
}

#[test]
fn every_source_file_opens_with_a_doc_comment() {
    let missing: Vec<String> = files_under(&["src"])
        .into_iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(path, _)| path)
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading //! doc: {missing:?}"
    );
}

#[test]
fn no_source_file_outside_tests_passes_the_line_limit() {
    let files = files_under(SOURCES);
    assert!(!files.is_empty(), "no source files found");
    let long = long_files(&files);
    assert!(
        long.is_empty(),
        "source files over {MAX_LINES} lines (split each by responsibility; tests.rs, \
         *_tests.rs and tests/ folders are exempt):\n{}",
        long.join("\n")
    );
}

// --- the checks themselves, on made-up sources ---

#[test]
fn a_core_file_importing_the_shell_is_caught_with_its_line() {
    let src = "//! core\n\
               use crate::ids::NodeId;\n\
               use crate::runtime::{Handle, RuntimeCommand};\n\
               use crate::agent::config::AgentArgs;\n\
               use crate::{\n    spec::Resources,\n    net::Swarm,\n};\n\
               use crate::runtime::{self, docker::DockerDriver as D, lease};\n\
               fn f() { crate::store::open(); }\n\
               // use crate::cli::run; (a comment)\n\
               use mycrate::api::Client;\n";
    assert_eq!(
        shell_imports(src),
        vec![
            (4, "crate::agent::config::AgentArgs".to_owned()),
            (7, "crate::net::Swarm".to_owned()),
            (9, "crate::runtime::docker::DockerDriver".to_owned()),
            (9, "crate::runtime::lease".to_owned()),
            (10, "crate::store::open".to_owned()),
        ]
    );
}

#[test]
fn the_runtime_boundary_types_are_not_shell_imports() {
    let src = "use crate::runtime::{ExitInfo, Handle, Owner, RuntimeCommand, RuntimeEvent};\n\
               use crate::runtime::Observed;\n\
               use crate::network::Thing;\n\
               use crate::apis::Other;\n";
    assert_eq!(shell_imports(src), vec![]);
}

#[test]
fn bollard_outside_the_driver_is_caught_with_its_line() {
    let src = "//! bollard in a doc comment is fine\n\
               use std::fmt;\n\
               fn f(e: bollard::errors::Error) {} // bollard\n";
    assert_eq!(bollard_lines(src), vec![3]);
}

#[test]
fn a_long_file_is_listed_with_its_length_and_tests_are_exempt() {
    let long = "// line\n".repeat(MAX_LINES + 1);
    let at_limit = "// line\n".repeat(MAX_LINES);
    let files: Vec<(String, String)> = [
        ("src/node/mod.rs", long.as_str()),
        ("src/node/api.rs", at_limit.as_str()),
        ("src/node/tests.rs", long.as_str()),
        ("src/membership/sim_tests.rs", long.as_str()),
        ("chaos/src/tests/fleet.rs", long.as_str()),
        ("chaos/src/runner.rs", &"x\n".repeat(MAX_LINES + 5)),
    ]
    .into_iter()
    .map(|(p, t)| (p.to_owned(), t.to_owned()))
    .collect();
    assert_eq!(
        long_files(&files),
        vec![
            format!("chaos/src/runner.rs: {} lines", MAX_LINES + 5),
            format!("src/node/mod.rs: {} lines", MAX_LINES + 1),
        ]
    );
}
