//! Seeded differential fuzzing against Debian's memcached: per protocol (text, meta, binary),
//! 10,000 generated and mutated cases go to a fresh memcached and a fresh `keepcached server`
//! started with the same flags, and the masked replies must be identical (see
//! keepcached_testkit::fuzz for the generator, the masks and why a case cannot hang the run).
//!
//! The seed is fixed so CI is reproducible, and printed; `KEEPCACHED_FUZZ_SEED=<n>` runs another
//! one and `KEEPCACHED_FUZZ_CASES=<n>` another count (to explore locally).

use keepcached_testkit::fuzz::{differential, Feature, Protocol, Report};
use keepcached_testkit::wire::Target;
use keepcached_testkit::{env, memcached};

const SEED: u64 = 0x6b65_6570_0012;
const CASES: usize = 10_000;
/// Concurrent cases: most of a run is the time a waiting case costs, spent in parallel.
const WORKERS: usize = 24;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| {
            let v = v.trim();
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            }
        })
        .unwrap_or(default)
}

fn run(protocol: Protocol, flags: &[&str]) -> Option<Report> {
    let test = format!("fuzz_differential_{}", protocol.name());
    if !env::require(&test, true, &["memcached"]) {
        return None;
    }
    let seed = setting("KEEPCACHED_FUZZ_SEED", SEED);
    let cases = setting("KEEPCACHED_FUZZ_CASES", CASES as u64) as usize;
    println!("{test}: seed {seed:#x}, {cases} cases");
    let reference = memcached(flags).expect("memcached");
    let subject = Target::subject_from_env(env!("CARGO_BIN_EXE_keepcached"))
        .start(flags)
        .expect("keepcached");
    let report = differential(protocol, seed, cases, &reference, &subject, WORKERS);
    report.assert_clean(protocol, seed);
    Some(report)
}

/// The minimum counts apply to the default run (10,000 cases of the fixed seed), which shows
/// each of these features far more often.
fn default_run() -> bool {
    std::env::var_os("KEEPCACHED_FUZZ_SEED").is_none()
        && std::env::var_os("KEEPCACHED_FUZZ_CASES").is_none()
}

#[test]
fn fuzz_differential_text() {
    if let Some(report) = run(Protocol::Text, &["-B", "ascii"]) {
        if default_run() {
            report.assert_features(&[
                (Feature::LongGetKeyBehindReplies, 50),
                (Feature::HttpUnderCommandLetter, 50),
                (Feature::Crawler, 50),
            ]);
        }
    }
}

#[test]
fn fuzz_differential_meta() {
    if let Some(report) = run(Protocol::Meta, &["-B", "ascii"]) {
        if default_run() {
            report.assert_features(&[(Feature::LongOpaque, 200)]);
        }
    }
}

#[test]
fn fuzz_differential_binary() {
    run(Protocol::Binary, &["-B", "binary"]);
}
