//! Tidy checks of the code's own rules: the sans-IO core (`membership/`, `state/`, `placement/`,
//! `reconcile/`, `node/`) never reads a clock, does IO, spawns tasks or draws OS randomness.

use std::path::Path;

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

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
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

#[test]
fn the_core_performs_no_io_reads_no_clock_and_draws_no_os_randomness() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in CORE {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(!files.is_empty(), "no core files found");
    let mut violations = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (pat, what) in FORBIDDEN {
                if code.contains(pat) {
                    violations.push(format!(
                        "{}:{}: {what} ({pat})",
                        f.strip_prefix(root).unwrap().display(),
                        n + 1
                    ));
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
fn every_source_file_opens_with_a_doc_comment() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let missing: Vec<String> = files
        .iter()
        .filter(|f| {
            !std::fs::read_to_string(f)
                .unwrap()
                .trim_start()
                .starts_with("//!")
        })
        .map(|f| f.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading //! doc: {missing:?}"
    );
}
