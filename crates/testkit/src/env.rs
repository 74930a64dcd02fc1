//! Decide whether a test that needs root or an installed Debian tool can run here.
//!
//! In CI (`CI=true`) nothing is skipped: a missing tool or privilege is a failure there, because
//! the test command installs the tools and CI runs as root. On a developer's machine the test
//! prints why it is skipped and passes.

use std::path::Path;

/// Whether CI=true is set.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether the effective user is root, read from /proc (no unsafe libc call needed).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Whether `program` is found in PATH (or is an existing path).
pub fn has_program(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// True when `test` may run: as root or in CI, with every program present (or in CI, where a
/// missing program must fail the test rather than skip it). Otherwise prints a skip line.
pub fn require(test: &str, root: bool, programs: &[&str]) -> bool {
    if in_ci() {
        return true;
    }
    if root && !is_root() {
        eprintln!("SKIPPED {test}: needs root (or CI=true); run scripts/test.sh as root");
        return false;
    }
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| !has_program(p))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "SKIPPED {test}: {} not installed; scripts/test.sh installs it",
            missing.join(", ")
        );
        return false;
    }
    true
}
