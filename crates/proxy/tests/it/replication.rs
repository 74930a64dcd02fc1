//! Multi-get over several pools, and replicas under concurrent writers.

use std::collections::BTreeMap;

use crate::common::{config, memcached, Client, Process, ProxyHandle};

/// A multi-get of hundreds of keys over three pools of two servers: the right values, in the
/// order asked, misses left out; and the same after one server dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiget_over_three_pools_returns_values_in_order() {
    let mut servers: Vec<Process> = (0..6).map(|_| memcached()).collect();
    let pools: Vec<Vec<&Process>> = servers.chunks(2).map(|c| c.iter().collect()).collect();
    let pools: Vec<&[&Process]> = pools.iter().map(Vec::as_slice).collect();
    let proxy = ProxyHandle::start(config(&pools)).await;
    let mut client = proxy.client().await;
    let mut expected = String::new();
    let mut request = String::from("get");
    for i in 0..400 {
        let key = format!("mg:{i}");
        request.push(' ');
        request.push_str(&key);
        if i % 9 == 4 {
            continue;
        }
        let value = format!("value-{i}-{}", "z".repeat(i % 17));
        client
            .send(format!("set {key} {i} 0 {}\r\n{value}\r\n", value.len()).as_bytes())
            .await;
        assert_eq!(client.read_reply(false).await, "STORED\r\n");
        expected.push_str(&format!("VALUE {key} {i} {}\r\n{value}\r\n", value.len()));
    }
    request.push_str("\r\n");
    expected.push_str("END\r\n");
    assert_eq!(client.call(&request).await, expected);

    // Every key is on one server of each pool.
    for pool in servers.chunks(2) {
        let mut found = 0;
        for s in pool {
            let reply = Client::connect(&s.addr()).await.call(&request).await;
            found += reply.matches("VALUE ").count();
        }
        assert_eq!(found, expected.matches("VALUE ").count());
    }

    // One server of the main pool gone: its keys come from the next pool.
    drop(servers.remove(0));
    assert_eq!(client.call(&request).await, expected);
    let gets = client.call("gets mg:0 mg:1\r\n").await;
    assert_eq!(gets.matches("VALUE ").count(), 2, "{gets}");
    assert!(
        gets.lines().next().unwrap().split(' ').count() == 5,
        "{gets}"
    );
    proxy.stop().await;
}

/// A tiny deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Concurrent writers on the same 100 keys (set, append, prepend, incr, delete, add, cas, and
/// their meta forms):
/// afterwards every key is identical (value, flags, TTL) on its replicas in both pools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_leave_replicas_identical() {
    let servers: Vec<Process> = (0..4).map(|_| memcached()).collect();
    let proxy = ProxyHandle::start(config(&[
        &[&servers[0], &servers[1]],
        &[&servers[2], &servers[3]],
    ]))
    .await;
    let mut writers = Vec::new();
    for w in 0..12u64 {
        let mut client = proxy.client().await;
        writers.push(tokio::spawn(async move {
            let mut rng = Lcg(w + 1);
            for i in 0..250 {
                let key = format!("hot:{}", rng.next(100));
                let reply = match rng.next(11) {
                    0 | 1 => {
                        let value = format!("{w}-{i}");
                        client
                            .call(&format!("set {key} {w} 0 {}\r\n{value}\r\n", value.len()))
                            .await
                    }
                    2 => {
                        client
                            .call(&format!("append {key} 0 0 1\r\n{}\r\n", w % 10))
                            .await
                    }
                    3 => client.call(&format!("prepend {key} 0 0 1\r\nP\r\n")).await,
                    4 => client.call(&format!("incr {key} {}\r\n", w + 1)).await,
                    5 => client.call(&format!("add {key} 0 0 1\r\n7\r\n")).await,
                    6 => client.call(&format!("delete {key}\r\n")).await,
                    7 => client.call(&format!("ma {key} D{w} N0\r\n")).await,
                    8 => client.call(&format!("ms {key} 1 MP\r\nm\r\n")).await,
                    9 => {
                        let mg = client.call(&format!("mg {key} c\r\n")).await;
                        match mg.strip_prefix("HD c") {
                            Some(cas) => {
                                client
                                    .call(&format!("ms {key} 1 C{} F2\r\nM\r\n", cas.trim()))
                                    .await
                            }
                            None => continue,
                        }
                    }
                    _ => {
                        let gets = client.call(&format!("gets {key}\r\n")).await;
                        match gets.lines().next().and_then(|l| l.rsplit(' ').next()) {
                            Some(cas) if gets.starts_with("VALUE") => {
                                client
                                    .call(&format!("cas {key} 1 0 1 {cas}\r\nC\r\n"))
                                    .await
                            }
                            _ => continue,
                        }
                    }
                };
                assert!(
                    !reply.starts_with("SERVER_ERROR") && !reply.starts_with("ERROR"),
                    "{key}: {reply:?}"
                );
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let mut direct = Vec::new();
    for s in &servers {
        direct.push(Client::connect(&s.addr()).await);
    }
    let mut present = 0;
    for k in 0..100 {
        let key = format!("hot:{k}");
        // Per pool: the item as the server holding it reports it (mg: value, flags, TTL).
        let mut copies = BTreeMap::new();
        for (i, client) in direct.iter_mut().enumerate() {
            let item = client.call(&format!("mg {key} v f t\r\n")).await;
            if item != "EN\r\n" {
                copies.entry(i / 2).or_insert_with(Vec::new).push(item);
            }
        }
        let all: Vec<&String> = copies.values().flatten().collect();
        if all.is_empty() {
            continue;
        }
        present += 1;
        assert_eq!(all.len(), 2, "{key}: {copies:?}");
        assert_eq!(all[0], all[1], "{key} differs between replicas");
    }
    assert!(present > 10, "only {present} keys survived the writers");
    proxy.stop().await;
}
