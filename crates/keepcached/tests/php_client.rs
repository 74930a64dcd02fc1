//! The seed's client library: PHP with the memcached extension (libmemcached underneath) and
//! the older memcache extension, doing their everyday operations through the server. The same
//! script runs against memcached and keepcached and must print the documented results.

use std::process::Command;
use std::time::Duration;

use keepcached_testkit::env;
use keepcached_testkit::run_with_timeout;
use keepcached_testkit::wire::Target;

/// Exercises php-memcached; every line is `label=var_export(result)`.
const MEMCACHED_SCRIPT: &str = r#"<?php
$m = new Memcached();
$m->setOption(Memcached::OPT_COMPRESSION, false);
$m->addServer('127.0.0.1', (int)$argv[1]);
function out($label, $v) { echo $label, '=', var_export($v, true), "\n"; }
out('set', $m->set('php:a', 'hello'));
out('get', $m->get('php:a'));
out('get_missing', $m->get('php:missing'));
out('missing_code', $m->getResultCode() === Memcached::RES_NOTFOUND);
out('set_int', $m->set('php:n', 10));
out('increment', $m->increment('php:n', 5));
out('decrement_to_zero', $m->decrement('php:n', 20));
out('increment_missing', $m->increment('php:nope', 1));
out('set_array', $m->set('php:arr', ['x' => 1, 'y' => [2, 3]]));
out('get_array', $m->get('php:arr'));
out('set_float', $m->set('php:f', 1.5));
out('get_float', $m->get('php:f'));
out('set_bool', $m->set('php:b', true));
out('get_bool', $m->get('php:b'));
out('getMulti', $m->getMulti(['php:a', 'php:n', 'php:missing', 'php:b']));
$r = $m->get('php:a', null, Memcached::GET_EXTENDED);
out('cas_ok', $m->cas($r['cas'], 'php:a', 'world'));
out('cas_stale', $m->cas($r['cas'], 'php:a', 'again'));
out('stale_code', $m->getResultCode() === Memcached::RES_DATA_EXISTS);
out('get_after_cas', $m->get('php:a'));
out('add_present', $m->add('php:a', 'x'));
out('add_absent', $m->add('php:new', 'x'));
out('replace', $m->replace('php:new', 'y'));
out('append', $m->append('php:new', 'z'));
out('prepend', $m->prepend('php:new', 'w'));
out('get_new', $m->get('php:new'));
$big = str_repeat('0123456789', 50000);
out('set_big', $m->set('php:big', $big));
out('get_big', $m->get('php:big') === $big);
out('delete', $m->delete('php:a'));
out('get_deleted', $m->get('php:a'));
out('delete_missing', $m->delete('php:a'));
out('setMulti', $m->setMulti(['php:m1' => 'one', 'php:m2' => 'two']));
out('getMulti_set', $m->getMulti(['php:m1', 'php:m2']));
out('deleteMulti', $m->deleteMulti(['php:m1', 'php:m2']));
out('getMulti_none', $m->getMulti(['php:m1', 'php:m2']));
out('expired', $m->set('php:old', 'v', -1) && $m->get('php:old') === false);
out('flush', $m->flush());
out('get_flushed', $m->get('php:new'));
"#;

const MEMCACHED_EXPECTED: &str = "set=true
get='hello'
get_missing=false
missing_code=true
set_int=true
increment=15
decrement_to_zero=0
increment_missing=false
set_array=true
get_array=array (
  'x' => 1,
  'y' => 
  array (
    0 => 2,
    1 => 3,
  ),
)
set_float=true
get_float=1.5
set_bool=true
get_bool=true
getMulti=array (
  'php:a' => 'hello',
  'php:n' => 0,
  'php:b' => true,
)
cas_ok=true
cas_stale=false
stale_code=true
get_after_cas='world'
add_present=false
add_absent=true
replace=true
append=true
prepend=true
get_new='wyz'
set_big=true
get_big=true
delete=true
get_deleted=false
delete_missing=false
setMulti=true
getMulti_set=array (
  'php:m1' => 'one',
  'php:m2' => 'two',
)
deleteMulti=array (
  'php:m1' => true,
  'php:m2' => true,
)
getMulti_none=array (
)
expired=true
flush=true
get_flushed=false
";

/// The older memcache extension (the one the seed's guide installs).
const MEMCACHE_SCRIPT: &str = r#"<?php
$m = new Memcache();
$m->addServer('127.0.0.1', (int)$argv[1]);
function out($label, $v) { echo $label, '=', var_export($v, true), "\n"; }
out('set', $m->set('pc:a', 'hello', 0, 0));
out('get', $m->get('pc:a'));
out('get_many', $m->get(['pc:a', 'pc:missing']));
out('add_present', $m->add('pc:a', 'x', 0, 0));
out('replace', $m->replace('pc:a', 'bye', 0, 0));
out('get_replaced', $m->get('pc:a'));
out('set_n', $m->set('pc:n', '7', 0, 0));
out('increment', $m->increment('pc:n', 3));
out('decrement', $m->decrement('pc:n', 100));
out('delete', $m->delete('pc:a'));
out('get_deleted', $m->get('pc:a'));
out('flush', $m->flush());
"#;

const MEMCACHE_EXPECTED: &str = "set=true
get='hello'
get_many=array (
  'pc:a' => 'hello',
)
add_present=false
replace=true
get_replaced='bye'
set_n=true
increment=10
decrement=0
delete=true
get_deleted=false
flush=true
";

fn run_php(target: &Target, script: &str, name: &str) -> String {
    let server = target
        .start(&[])
        .unwrap_or_else(|e| panic!("{}: {e}", target.label));
    let path = std::env::temp_dir().join(format!("keepcached-{name}-{}.php", std::process::id()));
    std::fs::write(&path, script).expect("write the PHP script");
    let out = run_with_timeout(
        Command::new("php")
            .arg(&path)
            .arg(server.port().to_string()),
        Duration::from_secs(60),
    )
    .expect("php runs");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.is_some_and(|s| s.success()),
        "php {name} against {} failed: {:?}\n{}{}",
        target.label,
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

fn check(script: &str, expected: &str, name: &str, extension: &str) {
    if !env::require(name, true, &["memcached", "php"]) {
        return;
    }
    let baseline = run_php(&Target::memcached(), script, name);
    assert_eq!(
        baseline, expected,
        "php {extension} against memcached does not give the documented results"
    );
    let ours = run_php(
        &Target::subject_from_env(env!("CARGO_BIN_EXE_keepcached")),
        script,
        name,
    );
    assert_eq!(
        ours, baseline,
        "php {extension} differs between memcached and keepcached"
    );
}

#[test]
fn php_memcached_extension_works() {
    check(
        MEMCACHED_SCRIPT,
        MEMCACHED_EXPECTED,
        "php_memcached_extension_works",
        "memcached",
    );
}

#[test]
fn php_memcache_extension_works() {
    check(
        MEMCACHE_SCRIPT,
        MEMCACHE_EXPECTED,
        "php_memcache_extension_works",
        "memcache",
    );
}
