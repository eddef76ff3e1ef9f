//! The agent's HTTP+JSON API. So far: the bearer token that guards it (`token.rs`).

mod token;

pub use token::{TOKEN_FILE, load_or_create_token, read_token};

/// An io error as a lowercase phrase without the OS code, for messages: `No such file or
/// directory (os error 2)` → `no such file or directory`.
pub fn plain_io(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_owned(),
        _ => s,
    };
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => s,
    }
}
