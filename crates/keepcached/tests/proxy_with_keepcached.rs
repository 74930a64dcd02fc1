//! The whole tier from this build: two `keepcached server` processes behind one `keepcached
//! proxy` started with magent's command line, all on free loopback ports. The proxy crate's own
//! tests use Debian's memcached as the backend; these show our server works behind it as well.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use keepcached_testkit::wait::poll_until;
use keepcached_testkit::{
    keepcached_proxy, keepcached_server, raise_open_file_limit, Client, End, ServerProcess,
};
use nix::sys::signal::Signal;

const BIN: &str = env!("CARGO_BIN_EXE_keepcached");

/// `keepcached proxy -D -l 127.0.0.1 -p PORT -s MAIN -b BACKUP`, killed by pid on drop.
fn start_proxy(main: &ServerProcess, backup: &ServerProcess) -> ServerProcess {
    let (main, backup) = (main.addr().to_string(), backup.addr().to_string());
    keepcached_proxy(Path::new(BIN), &["-s", &main, "-b", &backup]).expect("start keepcached proxy")
}

fn server() -> ServerProcess {
    keepcached_server(Path::new(BIN), &[]).expect("start keepcached server")
}

fn call(client: &mut Client, request: &str) -> String {
    client
        .call(request)
        .unwrap_or_else(|e| panic!("{request:?}: {e}"))
}

/// `request` sent straight to a server.
fn direct(server: &ServerProcess, request: &str) -> String {
    call(&mut server.connect().expect("connect"), request)
}

/// Started with magent's flags, not `--config`, the proxy has no file to read again: each SIGHUP
/// is logged (docs/proxy.md) and changes nothing; it goes on serving with its two servers.
#[test]
fn a_sighup_without_config_is_logged_and_changes_nothing() {
    let (main, backup) = (server(), server());
    let mut proxy = start_proxy(&main, &backup);
    // SIGHUP is ignored until its handler is in place, which is before this line.
    assert!(
        poll_until(Duration::from_secs(10), || proxy
            .log_text()
            .contains("proxy serving")),
        "{}",
        proxy.log_text()
    );
    let logged = "SIGHUP: no configuration file to read again (started without --config)";
    // One at a time: signals sent at once may arrive as one.
    for n in 1..=3 {
        proxy.signal(Signal::SIGHUP).expect("SIGHUP");
        assert!(
            poll_until(Duration::from_secs(10), || proxy
                .log_text()
                .matches(logged)
                .count()
                == n),
            "SIGHUP {n} not logged once:\n{}",
            proxy.log_text()
        );
    }
    assert!(proxy.is_running(), "{}", proxy.log_text());
    let mut client = proxy.connect().expect("connect to the proxy");
    assert_eq!(call(&mut client, "set hup 0 0 1\r\nx\r\n"), "STORED\r\n");
    for s in [&main, &backup] {
        assert_eq!(direct(s, "get hup\r\n"), "VALUE hup 0 1\r\nx\r\nEND\r\n");
    }
}

/// The seed's test with magent's command line: `set test 0 0 5 / nihao` through the proxy, then
/// `get test` directly on each server returns `nihao`.
#[test]
fn seed_set_through_the_proxy_lands_on_both_servers() {
    let (main, backup) = (server(), server());
    let proxy = start_proxy(&main, &backup);
    let mut client = proxy.connect().expect("connect to the proxy");
    assert_eq!(
        call(&mut client, "set test 0 0 5\r\nnihao\r\n"),
        "STORED\r\n"
    );
    assert_eq!(
        call(&mut client, "get test\r\n"),
        "VALUE test 0 5\r\nnihao\r\nEND\r\n"
    );
    for s in [&main, &backup] {
        assert_eq!(
            direct(s, "get test\r\n"),
            "VALUE test 0 5\r\nnihao\r\nEND\r\n",
            "{}",
            s.label()
        );
    }
}

/// incr/decr, append/prepend, add/replace, cas after gets, and their meta forms run on one
/// replica and leave both holding the same item (value, flags, TTL).
#[test]
fn conditional_writes_leave_both_replicas_identical() {
    let (main, backup) = (server(), server());
    // Different CAS sequences on the two servers: a cas forwarded verbatim would fail on one.
    for _ in 0..7 {
        direct(&backup, "set skew 0 0 1\r\nx\r\n");
    }
    let proxy = start_proxy(&main, &backup);
    let mut client = proxy.connect().expect("connect to the proxy");
    let steps = [
        ("set n 5 0 2\r\n10\r\n", "STORED\r\n"),
        ("incr n 5\r\n", "15\r\n"),
        ("decr n 6\r\n", "9\r\n"),
        ("incr missing 1\r\n", "NOT_FOUND\r\n"),
        ("set s 7 0 3\r\nabc\r\n", "STORED\r\n"),
        ("append s 0 0 2\r\nde\r\n", "STORED\r\n"),
        ("prepend s 0 0 2\r\nzz\r\n", "STORED\r\n"),
        ("add s 0 0 1\r\nq\r\n", "NOT_STORED\r\n"),
        ("add t 3 0 1\r\nq\r\n", "STORED\r\n"),
        ("replace t 4 0 1\r\nr\r\n", "STORED\r\n"),
        ("ms m 1 F9 O1\r\n1\r\n", "HD O1\r\n"),
        ("ma m D41 v O2\r\n", "VA 2 O2\r\n42\r\n"),
        ("ms m 1 MA\r\n!\r\n", "HD\r\n"),
        ("ms m 1 MP q\r\n<\r\nmn\r\n", "MN\r\n"),
    ];
    for (request, reply) in steps {
        assert_eq!(call(&mut client, request), reply, "{request:?}");
    }

    let gets = call(&mut client, "gets s\r\n");
    let cas: u64 = gets
        .lines()
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no CAS in {gets:?}"));
    assert_eq!(
        call(&mut client, &format!("cas s 9 0 3 {cas}\r\nnew\r\n")),
        "STORED\r\n"
    );
    assert_eq!(
        call(&mut client, &format!("cas s 9 0 3 {cas}\r\nold\r\n")),
        "EXISTS\r\n"
    );
    let mg = call(&mut client, "mg m c\r\n");
    let cas = mg.trim().trim_start_matches("HD c");
    assert_eq!(
        call(&mut client, &format!("ms m 2 C{cas} F3\r\nok\r\n")),
        "HD\r\n"
    );

    for (key, item) in [
        ("n", "VA 2 f5 t-1\r\n9 \r\n"),
        ("s", "VA 3 f9 t-1\r\nnew\r\n"),
        ("t", "VA 1 f4 t-1\r\nr\r\n"),
        ("m", "VA 2 f3 t-1\r\nok\r\n"),
    ] {
        let request = format!("mg {key} v f t\r\n");
        assert_eq!(direct(&main, &request), item, "main, {key}");
        assert_eq!(direct(&backup, &request), item, "backup, {key}");
    }
}

/// kill -9 of the main server under a load of sets and gets: no client sees an error, and the
/// proxy reports the server down.
#[test]
fn killing_the_main_server_under_load_costs_no_client_errors() {
    let (main, backup) = (server(), server());
    let main_addr = main.addr().to_string();
    let proxy = start_proxy(&main, &backup);
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let mut client = proxy.connect().expect("connect to the proxy");
            let (stop, ops) = (stop.clone(), ops.clone());
            thread::spawn(move || {
                let mut errors = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("load:{w}:{}", i % 50);
                    let value = format!("v{i}");
                    let set = format!("set {key} 0 0 {}\r\n{value}\r\n", value.len());
                    match client.call(&set) {
                        Ok(reply) if reply == "STORED\r\n" => {}
                        other => errors.push(format!("set {key}: {other:?}")),
                    }
                    let wanted = format!("VALUE {key} 0 {}\r\n{value}\r\nEND\r\n", value.len());
                    match client.call(&format!("get {key}\r\n")) {
                        Ok(reply) if reply == wanted => {}
                        other => errors.push(format!("get {key}: {other:?}")),
                    }
                    i += 1;
                    ops.fetch_add(2, Ordering::Relaxed);
                }
                errors
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let before = ops.load(Ordering::Relaxed);
    drop(main);
    thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let errors: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker"))
        .collect();
    let after = ops.load(Ordering::Relaxed);
    assert!(errors.is_empty(), "client errors: {errors:#?}");
    assert!(
        before > 100 && after > before + 100,
        "load ran: {before} then {after} ops"
    );
    let backends = call(
        &mut proxy.connect().expect("connect to the proxy"),
        "stats backends\r\n",
    );
    assert!(
        backends.contains(&format!("main/{main_addr} state=down")),
        "{backends}"
    );
    assert!(
        backends.contains(&format!("backup/{} state=up", backup.addr())),
        "{backends}"
    );
}

/// Meta commands through the proxy answer as our server answers them directly, quiet mode and
/// opaque tokens included.
#[test]
fn meta_commands_answer_as_the_server_does() {
    let (main, backup, reference) = (server(), server(), server());
    let proxy = start_proxy(&main, &backup);
    let script = "ms foo 2 T0 F5 O77\r\nhi\r\n\
                  mg foo v f t k O1\r\n\
                  mg nope v q O2\r\n\
                  mg foo v q O3\r\n\
                  mg nope v k O4\r\n\
                  ms foo 2 q\r\nho\r\n\
                  ms foo 2 ME q O5\r\nxx\r\n\
                  md nope q O7\r\n\
                  ma cnt q\r\n\
                  ma cnt N0 J5 O8\r\n\
                  ma cnt v MD D2 O9\r\n\
                  ms foo 1 MA q\r\n!\r\n\
                  mg foo v s\r\n\
                  mg foo v v\r\n\
                  mn\r\n";
    let through_proxy =
        exchange_until_noop(&mut proxy.connect().expect("connect to the proxy"), script);
    let from_server = exchange_until_noop(&mut reference.connect().expect("connect"), script);
    assert_eq!(through_proxy, from_server);
    assert!(
        through_proxy.starts_with("HD O77\r\nVA 2 f5 t-1 kfoo O1\r\nhi\r\n"),
        "{through_proxy}"
    );
    for s in [&main, &backup] {
        assert_eq!(direct(s, "mg foo v f\r\n"), "VA 3 f0\r\nho!\r\n");
        assert_eq!(direct(s, "mg cnt v\r\n"), "VA 1\r\n3\r\n");
    }
}

/// Sends a script ending in `mn` and returns everything up to its `MN`.
fn exchange_until_noop(client: &mut Client, script: &str) -> String {
    let reply = client
        .exchange(script.as_bytes(), &End::Suffix(b"MN\r\n".to_vec()))
        .unwrap_or_else(|e| panic!("{script:?}: {e}"));
    assert!(!reply.timed_out && !reply.closed, "{reply:?}");
    String::from_utf8(reply.bytes).expect("text reply")
}

/// magent deployments open tens of thousands of client connections (the seed runs it with
/// `-n 51200`): an idle one must not hold the proxy's read and reply buffers.
#[test]
fn idle_client_connections_hold_no_buffers() {
    const CONNECTIONS: usize = 2000;
    let limit = raise_open_file_limit(CONNECTIONS as u64 + 500).expect("raise the fd limit");
    assert!(
        limit > CONNECTIONS as u64,
        "open-file limit {limit} too low"
    );
    let (main, backup) = (server(), server());
    let proxy = start_proxy(&main, &backup);
    let mut first = proxy.connect().expect("connect to the proxy");
    assert_eq!(call(&mut first, "set k 0 0 1\r\nv\r\n"), "STORED\r\n");
    let before = proxy.rss_kib().expect("proxy VmRSS");
    // Every connection is served once, then left idle (one after the other: what is measured is
    // what idle connections hold, not the peak of a burst of requests).
    let clients: Vec<Client> = (0..CONNECTIONS)
        .map(|i| {
            let mut client = proxy.connect().expect("connect to the proxy");
            let reply = call(&mut client, "get k\r\n");
            assert_eq!(reply, "VALUE k 0 1\r\nv\r\nEND\r\n", "connection {i}");
            client
        })
        .collect();
    let per_connection = (proxy.rss_kib().expect("proxy VmRSS").saturating_sub(before) * 1024)
        / clients.len() as u64;
    eprintln!("proxy: {per_connection} bytes per idle client connection");
    // A 16 KiB read buffer and a reply buffer each would be over 32 KiB.
    assert!(
        per_connection <= 8 * 1024,
        "{per_connection} bytes per idle client connection"
    );
}
