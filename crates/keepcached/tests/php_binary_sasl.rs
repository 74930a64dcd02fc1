//! A real binary-protocol client with SASL: PHP's memcached extension (libmemcached underneath)
//! with `Memcached::OPT_BINARY_PROTOCOL` and `setSaslAuthData`, against `keepcached server -S`
//! with users from `MEMCACHED_SASL_PWDB`.
//!
//! Debian's memcached is not the reference here: its SASL goes through Cyrus SASL, which needs
//! a sasldb made with `saslpasswd2` (not installed by the project) and ignores the PWDB file, so
//! the expected output below is php-memcached's documented results.

use std::process::Command;
use std::time::Duration;

use keepcached_testkit::wire::Target;
use keepcached_testkit::{env, run_with_timeout};

/// Prints `label=var_export(result)` lines; the user and password come from the command line.
const SCRIPT: &str = r#"<?php
$m = new Memcached();
$m->setOption(Memcached::OPT_BINARY_PROTOCOL, true);
$m->setOption(Memcached::OPT_COMPRESSION, false);
$m->addServer('127.0.0.1', (int)$argv[1]);
$m->setSaslAuthData($argv[2], $argv[3]);
function out($label, $v) { echo $label, '=', var_export($v, true), "\n"; }
out('set', $m->set('php:a', 'hello'));
out('code', $m->getResultMessage());
if ($m->getResultCode() !== Memcached::RES_SUCCESS) { exit(0); }
out('get', $m->get('php:a'));
out('get_missing', $m->get('php:missing'));
out('missing_code', $m->getResultCode() === Memcached::RES_NOTFOUND);
out('add_present', $m->add('php:a', 'x'));
out('replace', $m->replace('php:a', 'world'));
out('append', $m->append('php:a', '!'));
out('prepend', $m->prepend('php:a', '>'));
out('get_changed', $m->get('php:a'));
out('set_int', $m->set('php:n', 10));
out('increment', $m->increment('php:n', 5));
out('decrement', $m->decrement('php:n', 20));
out('set_array', $m->set('php:arr', ['x' => 1]));
out('getMulti', $m->getMulti(['php:a', 'php:arr', 'php:missing']));
$r = $m->get('php:a', null, Memcached::GET_EXTENDED);
out('cas_ok', $m->cas($r['cas'], 'php:a', 'cas'));
out('cas_stale', $m->cas($r['cas'], 'php:a', 'again'));
out('touch', $m->touch('php:a', 100));
out('delete', $m->delete('php:a'));
out('delete_missing', $m->delete('php:a'));
$big = str_repeat('0123456789', 50000);
out('set_big', $m->set('php:big', $big));
out('get_big', $m->get('php:big') === $big);
out('version', count($m->getVersion()));
out('flush', $m->flush());
out('get_flushed', $m->get('php:n'));
"#;

const EXPECTED_ACCEPTED: &str = "set=true
code='SUCCESS'
get='hello'
get_missing=false
missing_code=true
add_present=false
replace=true
append=true
prepend=true
get_changed='>world!'
set_int=true
increment=15
decrement=0
set_array=true
getMulti=array (
  'php:a' => '>world!',
  'php:arr' => 
  array (
    'x' => 1,
  ),
)
cas_ok=true
cas_stale=false
touch=true
delete=true
delete_missing=false
set_big=true
get_big=true
version=1
flush=true
get_flushed=false
";

const EXPECTED_REFUSED: &str = "set=false
code='AUTHENTICATION FAILURE'
";

fn run_php(port: u16, user: &str, password: &str) -> String {
    let path = std::env::temp_dir().join(format!(
        "keepcached-php-binary-sasl-{}.php",
        std::process::id()
    ));
    std::fs::write(&path, SCRIPT).expect("write the PHP script");
    let out = run_with_timeout(
        Command::new("php")
            .arg(&path)
            .arg(port.to_string())
            .arg(user)
            .arg(password),
        Duration::from_secs(60),
    )
    .expect("php runs");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.is_some_and(|s| s.success()),
        "php failed: {:?}\n{}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

#[test]
fn php_binary_protocol_with_sasl() {
    if !env::require("php_binary_protocol_with_sasl", false, &["php"]) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("keepcached-php-sasl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pwdb = dir.join("pwdb");
    std::fs::write(&pwdb, "app:s3cret\nother:pw\n").expect("pwdb");
    // The only test in this binary, so no other test sees the variable change.
    std::env::set_var("MEMCACHED_SASL_PWDB", &pwdb);
    let server = Target::subject_from_env(env!("CARGO_BIN_EXE_keepcached"))
        .start(&["-S"])
        .expect("keepcached -S");
    assert_eq!(
        run_php(server.port(), "app", "s3cret"),
        EXPECTED_ACCEPTED,
        "right password"
    );
    assert_eq!(
        run_php(server.port(), "app", "wrong"),
        EXPECTED_REFUSED,
        "wrong password"
    );
    assert_eq!(
        run_php(server.port(), "nobody", "s3cret"),
        EXPECTED_REFUSED,
        "unknown user"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
