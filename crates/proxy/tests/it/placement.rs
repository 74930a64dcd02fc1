//! Our ketama ring places keys where nutcracker (twemproxy, `hash: md5`, `distribution: ketama`)
//! does, so a pool can move from nutcracker to keepcached and keep its cache.

use keepcached_proxy::config::ServerSpec;
use keepcached_proxy::ring::{key_hash, Ring};

use crate::common::{memcached, nutcracker, Client};

/// Sets keys through nutcracker, then asks each backend directly: every key must be on the
/// server our ring names, and on no other.
async fn check_placement(entries: &[String], servers: &[crate::common::Process]) {
    let (proxy, _dir) = nutcracker(entries);
    let nodes: Vec<_> = entries
        .iter()
        .map(|e| ServerSpec::parse(e).unwrap().ring_node())
        .collect();
    let ring = Ring::new(&nodes);
    let mut through = Client::connect(&proxy.addr()).await;
    let keys: Vec<String> = (0..300)
        .map(|i| format!("placement:{i}:{}", i * 7919))
        .collect();
    for key in &keys {
        assert_eq!(through.set(key, "v").await, "STORED\r\n");
    }
    let mut direct = Vec::new();
    for s in servers {
        direct.push(Client::connect(&s.addr()).await);
    }
    let mut per_server = vec![0usize; servers.len()];
    for key in &keys {
        let ours = ring.lookup(key_hash(key.as_bytes()));
        for (i, client) in direct.iter_mut().enumerate() {
            let found = client.get(key).await.is_some();
            assert_eq!(
                found,
                i == ours,
                "key {key}: on server {i}? {found}; our ring says {ours}"
            );
        }
        per_server[ours] += 1;
    }
    assert!(
        per_server.iter().all(|n| *n > 0),
        "every server holds keys: {per_server:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_matches_nutcracker() {
    let servers: Vec<_> = (0..3).map(|_| memcached()).collect();
    let plain: Vec<String> = servers.iter().map(|s| format!("{}:1", s.addr())).collect();
    check_placement(&plain, &servers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_matches_nutcracker_with_names_and_weights() {
    let servers: Vec<_> = (0..3).map(|_| memcached()).collect();
    let entries = vec![
        format!("{}:1 alpha", servers[0].addr()),
        format!("{}:3 beta", servers[1].addr()),
        format!("{}:2", servers[2].addr()),
    ];
    check_placement(&entries, &servers).await;
}
