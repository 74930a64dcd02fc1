//! Time-based behaviour on memcached and keepcached: delayed flush_all and short expiry times.
//! Both servers keep time in whole seconds, so each check waits at most a few seconds, polling
//! rather than sleeping a fixed time.

use std::thread;
use std::time::{Duration, Instant};

use keepcached_testkit::env;
use keepcached_testkit::mask::stat_u64;
use keepcached_testkit::wire::Target;
use keepcached_testkit::Client;

fn targets() -> [Target; 2] {
    [
        Target::memcached(),
        Target::subject_from_env(env!("CARGO_BIN_EXE_keepcached")),
    ]
}

/// Polls `get key` until it misses; how long that took, or None after `limit`.
fn time_until_gone(client: &mut Client, key: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if client.call(&format!("get {key}\r\n")).unwrap() == "END\r\n" {
            return Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Runs `check` against memcached and keepcached at once, each on a fresh server with default
/// flags: its label and a connection. Skipped (with a message) without memcached.
fn on_both(test: &str, check: impl Fn(&str, &mut Client) + Sync) {
    if !env::require(test, true, &["memcached"]) {
        return;
    }
    let check = &check;
    thread::scope(|s| {
        for target in targets() {
            s.spawn(move || {
                let server = target
                    .start(&[])
                    .unwrap_or_else(|e| panic!("{}: {e}", target.label));
                let mut c = server.connect().unwrap();
                check(&target.label, &mut c);
            });
        }
    });
}

#[test]
fn delayed_flush_all_takes_effect_later() {
    on_both("delayed_flush_all_takes_effect_later", |label, c| {
        assert_eq!(c.call("set k 0 0 1\r\nv\r\n").unwrap(), "STORED\r\n");
        assert_eq!(c.call("flush_all 2\r\n").unwrap(), "OK\r\n");
        assert_eq!(
            c.call("get k\r\n").unwrap(),
            "VALUE k 0 1\r\nv\r\nEND\r\n",
            "{}: flush_all 2 flushed at once",
            label
        );
        let gone = time_until_gone(c, "k", Duration::from_secs(4));
        assert!(gone.is_some(), "{}: flush_all 2 never flushed", label);
        // Writes after the flush time are kept.
        thread::sleep(Duration::from_millis(1100));
        assert_eq!(c.call("set k 0 0 1\r\nw\r\n").unwrap(), "STORED\r\n");
        assert_eq!(
            c.call("get k\r\n").unwrap(),
            "VALUE k 0 1\r\nw\r\nEND\r\n",
            "{}",
            label
        );
    });
}

#[test]
fn short_expiry_times_expire() {
    on_both("short_expiry_times_expire", |label, c| {
        let l = label;
        assert_eq!(c.call("set a 0 2 1\r\na\r\n").unwrap(), "STORED\r\n");
        assert_eq!(c.call("set t 0 0 1\r\nt\r\n").unwrap(), "STORED\r\n");
        assert_eq!(c.call("touch t 2\r\n").unwrap(), "TOUCHED\r\n");
        assert_eq!(c.call("set g 0 0 1\r\ng\r\n").unwrap(), "STORED\r\n");
        assert_eq!(
            c.call("gat 2 g\r\n").unwrap(),
            "VALUE g 0 1\r\ng\r\nEND\r\n"
        );
        assert_eq!(c.call("set p 0 0 1\r\np\r\n").unwrap(), "STORED\r\n");
        assert_eq!(
                    c.call("get a t g p\r\n").unwrap(),
                    "VALUE a 0 1\r\na\r\nVALUE t 0 1\r\nt\r\nVALUE g 0 1\r\ng\r\nVALUE p 0 1\r\np\r\nEND\r\n",
                    "{l}: items with 2 s to live are gone at once"
                );
        for key in ["a", "t", "g"] {
            assert!(
                time_until_gone(c, key, Duration::from_secs(5)).is_some(),
                "{l}: {key} did not expire"
            );
        }
        assert_eq!(
            c.call("get p\r\n").unwrap(),
            "VALUE p 0 1\r\np\r\nEND\r\n",
            "{l}"
        );
        // memcached counts a get that finds an expired item as get_expired (and a miss).
        let stats = c.call("stats\r\n").unwrap();
        let expired = stat_u64(&stats, "get_expired");
        assert!(
            expired.is_some_and(|n| n >= 1),
            "{l}: get_expired is {expired:?} after gets of expired items (get_misses {:?})",
            stat_u64(&stats, "get_misses")
        );
    });
}

/// Expired items leave without a reader, within seconds (the background crawler), and their
/// memory is reused: after ten 66 KB items expire, ten more of the same size leave `bytes`
/// where the first ten put it, in both servers (memcached's t/issue_14.t and
/// t/lru-maintainer.t ask this of memcached).
#[test]
fn expired_items_leave_without_a_reader_and_their_memory_is_reused() {
    on_both(
        "expired_items_leave_without_a_reader_and_their_memory_is_reused",
        |label, c| {
            let l = label;
            let value = "B".repeat(66_560);
            let set_ten = |c: &mut Client, from: usize| {
                for key in from..from + 10 {
                    let set = format!("set key{key:02} 0 2 66560\r\n{value}\r\n");
                    assert_eq!(c.call(&set).unwrap(), "STORED\r\n", "{l}");
                }
                stat_u64(&c.call("stats\r\n").unwrap(), "bytes").unwrap()
            };
            let first = set_ten(c, 0);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let stats = c.call("stats\r\n").unwrap();
                if stat_u64(&stats, "curr_items") == Some(0) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{l}: expired items still counted:\n{stats}"
                );
                thread::sleep(Duration::from_millis(100));
            }
            assert_eq!(set_ten(c, 10), first, "{l}: bytes after ten more");
        },
    );
}
