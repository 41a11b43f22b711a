//! Crash points for tests: when `SEALFS_FAILPOINTS_FILE` names a file and a line of it equals a
//! point's name as the node passes it, the node aborts on the spot (as `kill -9` would, between
//! two writes that a real crash could also separate). Unset, a point costs one branch.

use std::sync::OnceLock;

fn file() -> Option<&'static str> {
    static FILE: OnceLock<Option<String>> = OnceLock::new();
    FILE.get_or_init(|| std::env::var("SEALFS_FAILPOINTS_FILE").ok())
        .as_deref()
}

/// Abort here if the failpoint file lists `name`.
pub fn hit(name: &str) {
    let Some(path) = file() else { return };
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    if text.lines().any(|l| l.trim() == name) {
        tracing::error!("failpoint {name}: aborting");
        std::process::abort();
    }
}
