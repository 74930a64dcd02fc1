//! The seed's client libraries through the proxy: PHP's memcached (libmemcached) and memcache
//! extensions.

use std::process::Command;

use crate::common::{config, memcached, temp_path, Client, ProxyHandle};

const SCRIPT: &str = r#"<?php
[$_, $host, $port] = $argv;
$m = new Memcached();
$m->setOption(Memcached::OPT_COMPRESSION, false);
$m->addServer($host, (int)$port);
var_export($m->set('php:seed', 'nihao')); echo "\n";
echo $m->get('php:seed'), "\n";
$m->set('php:n', 5);
echo $m->increment('php:n', 3), "\n";
var_export($m->append('php:seed', '!')); echo "\n";
echo json_encode($m->getMulti(['php:seed', 'php:n', 'php:none'])), "\n";
$item = $m->get('php:seed', null, Memcached::GET_EXTENDED);
var_export($m->cas($item['cas'], 'php:seed', 'swapped')); echo "\n";
echo $m->get('php:seed'), "\n";
var_export($m->delete('php:seed')); echo "\n";
var_export($m->get('php:seed')); echo "\n";
$mc = new Memcache();
$mc->connect($host, (int)$port);
var_export($mc->set('php:memcache', 'seed-client')); echo "\n";
echo $mc->get('php:memcache'), "\n";
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_clients_through_the_proxy() {
    let a = memcached();
    let b = memcached();
    let proxy = ProxyHandle::start(config(&[&[&a], &[&b]])).await;
    let script = temp_path("client.php");
    std::fs::write(&script, SCRIPT).unwrap();
    let (host, port) = proxy.addr.rsplit_once(':').unwrap();
    let output = tokio::task::spawn_blocking({
        let (script, host, port) = (script.clone(), host.to_string(), port.to_string());
        move || Command::new("php").arg(&script).args([host, port]).output()
    })
    .await
    .unwrap()
    .expect("run php");
    let _ = std::fs::remove_file(&script);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "php failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected = [
        "true",
        "nihao",
        "8",
        "true",
        r#"{"php:seed":"nihao!","php:n":8}"#,
        "true",
        "swapped",
        "true",
        "false",
        "true",
        "seed-client",
    ];
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "{stdout}");
    for server in [&a, &b] {
        let mut direct = Client::connect(&server.addr()).await;
        assert_eq!(
            direct.get("php:memcache").await.as_deref(),
            Some("seed-client")
        );
        assert_eq!(direct.get("php:n").await.as_deref(), Some("8"));
    }
    proxy.stop().await;
}
