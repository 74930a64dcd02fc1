//! libmemcached's conformance checker, `memccapable -a` (ASCII protocol), against memcached
//! (the baseline: every check passes there) and against keepcached (every check must pass).

use std::process::Command;
use std::time::Duration;

use keepcached_testkit::env;
use keepcached_testkit::run_with_timeout;
use keepcached_testkit::wire::Target;

/// The checks memccapable ran and whether each passed, from lines like
/// `ascii set                               [pass]`.
fn results(stdout: &str) -> Vec<(String, bool)> {
    stdout
        .lines()
        .filter_map(|line| {
            let (name, verdict) = line.rsplit_once('[')?;
            Some((name.trim().to_string(), verdict.starts_with("pass")))
        })
        .collect()
}

fn run_memccapable(target: &Target) -> Vec<(String, bool)> {
    let server = target
        .start(&[])
        .unwrap_or_else(|e| panic!("{}: {e}", target.label));
    let port = server.port().to_string();
    let out = run_with_timeout(
        Command::new("memccapable").args(["-a", "-t", "5", "-h", "127.0.0.1", "-p", &port]),
        Duration::from_secs(180),
    )
    .expect("memccapable runs");
    eprintln!(
        "memccapable against {}:\n{}{}",
        target.label, out.stdout, out.stderr
    );
    assert!(
        out.status.is_some(),
        "memccapable against {} timed out",
        target.label
    );
    results(&out.stdout)
}

#[test]
fn memccapable_ascii_checks_all_pass() {
    if !env::require(
        "memccapable_ascii_checks_all_pass",
        true,
        &["memcached", "memccapable"],
    ) {
        return;
    }
    let baseline = run_memccapable(&Target::memcached());
    assert!(
        baseline.len() >= 20,
        "memccapable ran too few checks: {baseline:?}"
    );
    assert!(
        baseline.iter().all(|(_, ok)| *ok),
        "memcached itself fails checks: {baseline:?}"
    );
    let ours = run_memccapable(&Target::subject_from_env(env!("CARGO_BIN_EXE_keepcached")));
    let names = |r: &[(String, bool)]| r.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let failed: Vec<&String> = ours.iter().filter(|(_, ok)| !ok).map(|(n, _)| n).collect();
    assert!(
        failed.is_empty(),
        "memccapable checks failing against keepcached: {failed:?}"
    );
    assert_eq!(
        names(&ours),
        names(&baseline),
        "memccapable did not run the same checks against keepcached (it stops at a hang or crash)"
    );
}
