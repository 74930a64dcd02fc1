//! The meta commands through the proxy: replies as memcached gives them (quiet mode, opaque
//! tokens, base64 keys), writes on every replica, conditional writes copied, reads failing over.

use crate::common::{config, memcached, Client, Process, ProxyHandle};

/// Sends `script` and reads replies up to and including the `MN` of its final `mn`.
async fn until_noop(client: &mut Client, script: &str) -> String {
    client.send(script.as_bytes()).await;
    let mut all = String::new();
    loop {
        let reply = client.read_reply(false).await;
        all.push_str(&reply);
        if reply == "MN\r\n" {
            return all;
        }
    }
}

/// `mg <key> <flags>` on one server directly.
async fn direct(server: &Process, request: &str) -> String {
    Client::connect(&server.addr()).await.call(request).await
}

/// The item (value, client flags, TTL) on each server, for checking that replicas are identical.
async fn items(servers: &[&Process], mg: &str) -> Vec<String> {
    let mut items = Vec::new();
    for s in servers {
        items.push(direct(s, mg).await);
    }
    items
}

/// Replies are memcached's own: the same script through the proxy and straight to a memcached
/// gives the same bytes, quiet mode included; every write lands on both replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_replies_match_memcached_and_writes_reach_both_replicas() {
    let a = memcached();
    let b = memcached();
    let reference = memcached();
    let proxy = ProxyHandle::start(config(&[&[&a], &[&b]])).await;
    let mut client = proxy.client().await;
    let mut refc = Client::connect(&reference.addr()).await;

    // No CAS values (c) here: they differ from server to server.
    let script = "ms foo 2 T100 F5 O77\r\nhi\r\n\
                  mg foo v f t k O1\r\n\
                  mg nope v q O2\r\n\
                  mg foo v q O3\r\n\
                  mg nope v k O4\r\n\
                  ms foo 2 q\r\nho\r\n\
                  ms foo 2 ME q O5\r\nxx\r\n\
                  ms new 3 ME O6\r\nnew\r\n\
                  md nope q O7\r\n\
                  md new q\r\n\
                  md new\r\n\
                  ma cnt q\r\n\
                  ma cnt N0 J5 O8\r\n\
                  ma cnt q\r\n\
                  ma cnt v MD D2 O9\r\n\
                  ms app 1 MA O10\r\nx\r\n\
                  ms foo 1 MA q\r\n!\r\n\
                  ms foo 1 MP\r\n<\r\n\
                  mg foo v s\r\n\
                  ms rep 1 MR\r\nr\r\n\
                  mg foo v v\r\n\
                  mg foo x\r\n\
                  ms foo 2 Mxx\r\nzz\r\n\
                  ma foo\r\n\
                  me nope\r\n\
                  mz foo\r\n\
                  mn\r\n";
    let through_proxy = until_noop(&mut client, script).await;
    let from_memcached = until_noop(&mut refc, script).await;
    assert_eq!(through_proxy, from_memcached);
    assert!(
        through_proxy.starts_with("HD O77\r\nVA 2 f5 t100 kfoo O1\r\nhi\r\nVA 2 O3\r\nhi\r\n"),
        "{through_proxy}"
    );

    for key in ["foo", "cnt", "app", "new", "rep"] {
        let on = items(&[&a, &b], &format!("mg {key} v f t\r\n")).await;
        assert_eq!(on[0], on[1], "replicas differ on {key}");
    }
    assert_eq!(direct(&b, "mg foo v\r\n").await, "VA 4\r\n<ho!\r\n");
    assert_eq!(direct(&b, "mg cnt v\r\n").await, "VA 1\r\n4\r\n");

    // me answers from a replica, with the item's metadata.
    assert!(client
        .call("me foo\r\n")
        .await
        .starts_with("ME foo exp=-1 "));

    // mg with T sets the TTL on every replica.
    assert_eq!(client.call("mg foo T300 v\r\n").await, "VA 4\r\n<ho!\r\n");
    for s in [&a, &b] {
        let ttl = direct(s, "mg foo t\r\n").await;
        let secs: i64 = ttl.trim().trim_start_matches("HD t").parse().unwrap();
        assert!((290..=300).contains(&secs), "{}: {ttl:?}", s.label);
    }

    // An ms too large for the cache: memcached's error, the data block swallowed, and the old
    // item gone from both replicas.
    let big = "x".repeat(1024 * 1024 + 1);
    let line = format!("ms foo {} T0\r\n{big}\r\nmn\r\n", big.len());
    assert_eq!(
        until_noop(&mut client, &line).await,
        "SERVER_ERROR object too large for cache\r\nMN\r\n"
    );
    for s in [&a, &b] {
        assert_eq!(direct(s, "mg foo v\r\n").await, "EN\r\n", "{}", s.label);
    }
    proxy.stop().await;
}

/// Compare-and-set, compare-and-delete and arithmetic with a CAS run on one replica only (the
/// CAS number is that replica's) and leave the replicas identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_cas_runs_on_one_replica_and_the_outcome_is_copied() {
    let a = memcached();
    let b = memcached();
    // Different CAS sequences on the two servers: a CAS forwarded to b would fail there.
    for _ in 0..5 {
        assert_eq!(direct(&b, "ms skew 1\r\nx\r\n").await, "HD\r\n");
    }
    let proxy = ProxyHandle::start(config(&[&[&a], &[&b]])).await;
    // a is empty beside b: it is warmed (and read after b) until it is up.
    proxy.await_all_up().await;
    let mut client = proxy.client().await;
    let cas_of = |reply: String| -> u64 {
        reply
            .split_whitespace()
            .find_map(|t| t.strip_prefix('c'))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no CAS in {reply:?}"))
    };

    let cas = cas_of(client.call("ms k 3 F2 T0 c\r\nold\r\n").await);
    assert_eq!(cas_of(client.call("mg k c\r\n").await), cas);
    assert_eq!(
        client
            .call(&format!("ms k 3 C{} F7\r\nbad\r\n", cas + 1))
            .await,
        "EX\r\n"
    );
    assert_eq!(
        client
            .call(&format!("ms k 3 C{cas} F7 O1\r\nnew\r\n"))
            .await,
        "HD O1\r\n"
    );
    let on = items(&[&a, &b], "mg k v f t\r\n").await;
    assert_eq!(on[0], "VA 3 f7 t-1\r\nnew\r\n");
    assert_eq!(on[0], on[1]);

    assert_eq!(client.call("ms k 2\r\n10\r\n").await, "HD\r\n");
    let cas = cas_of(client.call("mg k c\r\n").await);
    assert_eq!(
        client.call(&format!("ma k C{} v\r\n", cas + 1)).await,
        "EX\r\n"
    );
    assert_eq!(
        client.call(&format!("ma k C{cas} v\r\n")).await,
        "VA 2\r\n11\r\n"
    );
    let on = items(&[&a, &b], "mg k v f t\r\n").await;
    assert_eq!(on[0], on[1]);

    let cas = cas_of(client.call("mg k c\r\n").await);
    assert_eq!(
        client.call(&format!("md k C{} q\r\nmn\r\n", cas + 1)).await,
        "EX\r\n"
    );
    assert_eq!(client.read_reply(false).await, "MN\r\n");
    assert_eq!(direct(&b, "mg k v\r\n").await, "VA 2\r\n11\r\n");
    assert_eq!(
        until_noop(&mut client, &format!("md k C{cas} q\r\nmn\r\n")).await,
        "MN\r\n"
    );
    for s in [&a, &b] {
        assert_eq!(direct(s, "mg k v\r\n").await, "EN\r\n", "{}", s.label);
    }
    proxy.stop().await;
}

/// A base64 key routes as its decoded bytes: stored as `b` over three servers, it is found as
/// text; a key that a text line cannot carry is copied between replicas in base64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base64_keys_route_by_their_decoded_bytes() {
    let servers: Vec<Process> = (0..3).map(|_| memcached()).collect();
    let backup = memcached();
    let proxy = ProxyHandle::start(config(&[
        &[&servers[0], &servers[1], &servers[2]],
        &[&backup],
    ]))
    .await;
    let mut client = proxy.client().await;
    for i in 0..40 {
        let key = format!("key:{i}");
        let b64 = base64(key.as_bytes());
        assert_eq!(
            client
                .call(&format!("ms {b64} 2 b\r\nv{}\r\n", i % 10))
                .await,
            "HD\r\n"
        );
        assert_eq!(
            client.call(&format!("mg {key} v\r\n")).await,
            format!("VA 2\r\nv{}\r\n", i % 10),
            "{key}"
        );
        assert_eq!(
            client.get(&key).await.as_deref(),
            Some(format!("v{}", i % 10).as_str())
        );
    }

    // "n x\r" cannot be a text key; incr and append results reach the backup in base64.
    let b64 = base64(b"n x\r");
    assert_eq!(
        client.call(&format!("ms {b64} 1 b T0 F3\r\n5\r\n")).await,
        "HD\r\n"
    );
    assert_eq!(
        client.call(&format!("ma {b64} b v D4 k\r\n")).await,
        format!("VA 1 k{b64} b\r\n9\r\n")
    );
    let mut holders = Vec::new();
    for s in servers.iter().chain([&backup]) {
        let item = direct(s, &format!("mg {b64} b v f t\r\n")).await;
        if item != "EN\r\n" {
            holders.push(item);
        }
    }
    assert_eq!(holders, vec!["VA 1 f3 t-1\r\n9\r\n"; 2]);
    assert_eq!(
        client.call(&format!("ms {b64} 1 b MA\r\n!\r\n")).await,
        "HD\r\n"
    );
    assert_eq!(
        direct(&backup, &format!("mg {b64} b v\r\n")).await,
        "VA 2\r\n9!\r\n"
    );
    proxy.stop().await;
}

/// mg fails over to the backup when the main server dies, quiet or not; writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_reads_fail_over_to_the_backup() {
    let mut main = memcached();
    let backup = memcached();
    let proxy = ProxyHandle::start(config(&[&[&main], &[&backup]])).await;
    let mut client = proxy.client().await;
    assert_eq!(client.call("ms k 2 O1\r\nhi\r\n").await, "HD O1\r\n");
    main.kill();
    assert_eq!(
        until_noop(&mut client, "mg k v q O2\r\nmg gone v q\r\nmn\r\n").await,
        "VA 2 O2\r\nhi\r\nMN\r\n"
    );
    assert_eq!(client.call("mg k s v\r\n").await, "VA 2 s2\r\nhi\r\n");
    assert_eq!(
        until_noop(&mut client, "ms k 2 q\r\nho\r\nma n N0 q\r\nmn\r\n").await,
        "HD\r\nMN\r\n"
    );
    assert_eq!(direct(&backup, "mg k v\r\n").await, "VA 2\r\nho\r\n");
    proxy.stop().await;
}

/// Standard base64 with padding, as clients send binary keys.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
