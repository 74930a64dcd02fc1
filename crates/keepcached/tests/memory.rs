//! Memory limit behaviour, checked on memcached (so each assertion is known to hold for the
//! reference) and on keepcached: eviction under -m keeps recently read items and reports
//! evictions; with -M a full cache refuses writes with memcached's error instead.

use keepcached_testkit::env;
use keepcached_testkit::mask::stat_u64;
use keepcached_testkit::wire::Target;
use keepcached_testkit::{Client, End};

const VALUE_LEN: usize = 1000;

fn set_request(key: &str) -> Vec<u8> {
    let mut req = format!("set {key} 0 0 {VALUE_LEN}\r\n").into_bytes();
    req.extend(vec![b'v'; VALUE_LEN]);
    req.extend_from_slice(b"\r\n");
    req
}

/// How many of `keys` are present, with one multi-get.
fn present(client: &mut Client, keys: &[String]) -> usize {
    let reply = client
        .exchange(
            format!("get {}\r\n", keys.join(" ")).as_bytes(),
            &End::Sentinel,
        )
        .expect("get");
    assert!(!reply.closed && !reply.timed_out, "incomplete get reply");
    reply
        .bytes
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"VALUE "))
        .count()
}

fn targets() -> [Target; 2] {
    [
        Target::memcached(),
        Target::subject_from_env(env!("CARGO_BIN_EXE_keepcached")),
    ]
}

/// Writes 5x the memory limit in pipelined batches while reading a small hot set after every
/// batch. Returns (hot keys surviving, oldest cold keys surviving, stats).
fn eviction_run(target: &Target) -> (usize, usize, String) {
    let server = target
        .start(&["-m", "8"])
        .unwrap_or_else(|e| panic!("{}: {e}", target.label));
    let mut client = server.connect().expect("connect");
    let hot: Vec<String> = (0..100).map(|i| format!("hot:{i}")).collect();
    for key in &hot {
        assert_eq!(
            client
                .call(&String::from_utf8(set_request(key)).unwrap())
                .unwrap(),
            "STORED\r\n"
        );
    }
    let batches = 200;
    let per_batch = 200;
    for batch in 0..batches {
        let mut request = Vec::new();
        for j in 0..per_batch {
            request.extend(set_request(&format!("cold:{}", batch * per_batch + j)));
        }
        let reply = client
            .exchange(&request, &End::Sentinel)
            .expect("set batch");
        assert_eq!(
            reply.bytes,
            b"STORED\r\n".repeat(per_batch),
            "{}: a write was refused while evicting",
            target.label
        );
        present(&mut client, &hot);
    }
    let hot_alive = present(&mut client, &hot);
    let oldest: Vec<String> = (0..1000).map(|i| format!("cold:{i}")).collect();
    let oldest_alive = present(&mut client, &oldest);
    let stats = client.call("stats\r\n").expect("stats");
    (hot_alive, oldest_alive, stats)
}

#[test]
fn eviction_keeps_recently_read_items() {
    if !env::require("eviction_keeps_recently_read_items", true, &["memcached"]) {
        return;
    }
    for target in targets() {
        let (hot_alive, oldest_alive, stats) = eviction_run(&target);
        let evictions = stat_u64(&stats, "evictions").expect("evictions stat");
        let items = stat_u64(&stats, "curr_items").expect("curr_items stat");
        let limit = stat_u64(&stats, "limit_maxbytes").expect("limit_maxbytes stat");
        eprintln!(
            "{}: hot {hot_alive}/100, oldest {oldest_alive}/1000, evictions {evictions}, items {items}",
            target.label
        );
        assert_eq!(limit, 8 * 1024 * 1024, "{}", target.label);
        assert!(
            evictions > 0,
            "{}: no evictions after writing 5x the limit",
            target.label
        );
        assert!(
            items * VALUE_LEN as u64 <= limit,
            "{}: {items} items of {VALUE_LEN} bytes exceed the {limit}-byte limit",
            target.label
        );
        assert!(
            items >= 1000,
            "{}: only {items} items kept in 8 MB",
            target.label
        );
        assert!(
            hot_alive >= 95,
            "{}: only {hot_alive}/100 hot items survived",
            target.label
        );
        assert!(
            oldest_alive <= 50,
            "{}: {oldest_alive}/1000 of the oldest unread items survived",
            target.label
        );
    }
}

#[test]
fn full_cache_with_dash_m_refuses_writes() {
    if !env::require(
        "full_cache_with_dash_m_refuses_writes",
        true,
        &["memcached"],
    ) {
        return;
    }
    for target in targets() {
        let server = target
            .start(&["-m", "8", "-M"])
            .unwrap_or_else(|e| panic!("{}: {e}", target.label));
        let mut client = server.connect().expect("connect");
        let mut stored = 0;
        let refusal = loop {
            assert!(
                stored < 20_000,
                "{}: 20 MB stored under -m 8 -M",
                target.label
            );
            let reply = client
                .exchange(&set_request(&format!("k:{stored}")), &End::Sentinel)
                .expect("set");
            if reply.bytes != b"STORED\r\n" {
                break reply.bytes;
            }
            stored += 1;
        };
        eprintln!("{}: {stored} items stored before the refusal", target.label);
        assert_eq!(
            String::from_utf8_lossy(&refusal),
            "SERVER_ERROR out of memory storing object\r\n",
            "{}",
            target.label
        );
        assert!(
            stored >= 1000,
            "{}: refused after only {stored} items",
            target.label
        );
        assert!(
            client
                .call("get k:0\r\n")
                .unwrap()
                .starts_with("VALUE k:0 0 1000\r\n"),
            "{}: the first item was evicted under -M",
            target.label
        );
        let stats = client.call("stats\r\n").expect("stats");
        assert_eq!(stat_u64(&stats, "evictions"), Some(0), "{}", target.label);
        assert_eq!(
            stat_u64(&stats, "curr_items"),
            Some(stored as u64),
            "{}",
            target.label
        );
        // Deleting makes room again.
        for i in 0..10 {
            assert_eq!(
                client.call(&format!("delete k:{i}\r\n")).unwrap(),
                "DELETED\r\n"
            );
        }
        let reply = client
            .exchange(&set_request("after-delete"), &End::Sentinel)
            .unwrap();
        assert_eq!(
            reply.bytes, b"STORED\r\n",
            "{}: no room after deletes",
            target.label
        );
    }
}

#[test]
fn expired_items_make_room_under_dash_m() {
    if !env::require("expired_items_make_room_under_dash_m", true, &["memcached"]) {
        return;
    }
    std::thread::scope(|s| {
        for target in targets() {
            s.spawn(move || {
                let server = target
                    .start(&["-m", "8", "-M"])
                    .unwrap_or_else(|e| panic!("{}: {e}", target.label));
                let mut client = server.connect().expect("connect");
                let short_lived = |key: &str| {
                    let mut req = format!("set {key} 0 2 {VALUE_LEN}\r\n").into_bytes();
                    req.extend(vec![b's'; VALUE_LEN]);
                    req.extend_from_slice(b"\r\n");
                    req
                };
                // Pipelined, so the cache fills well within the items' two seconds of life
                // even on a loaded machine; a refusal ends the fill.
                let mut stored = 0;
                loop {
                    assert!(
                        stored < 20_000,
                        "{}: no refusal under -m 8 -M",
                        target.label
                    );
                    let batch: Vec<u8> = (stored..stored + 100)
                        .flat_map(|i| short_lived(&format!("t:{i}")))
                        .collect();
                    let reply = client.exchange(&batch, &End::Sentinel).expect("set");
                    let replies = String::from_utf8_lossy(&reply.bytes);
                    stored += replies.lines().filter(|l| *l == "STORED").count();
                    if replies.lines().any(|l| l != "STORED") {
                        break;
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(3100));
                // Everything stored above has expired: its memory must serve new writes.
                for i in 0..stored / 2 {
                    let reply = client
                        .exchange(&set_request(&format!("n:{i}")), &End::Sentinel)
                        .expect("set");
                    assert_eq!(
                        String::from_utf8_lossy(&reply.bytes),
                        "STORED\r\n",
                        "{}: write {i} refused although {stored} items expired",
                        target.label
                    );
                }
            });
        }
    });
}
