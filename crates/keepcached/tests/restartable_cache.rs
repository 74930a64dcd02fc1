//! The restartable cache (`-e FILE`) on real processes: a server stopped gracefully saves its
//! items and the next one loads them, values, flags and remaining TTLs intact; SIGUSR2 saves
//! without stopping; a damaged file gives one clear log line and an empty cache, never wrong
//! data. Each test prints its counts and asserts that nothing came back different.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keepcached_testkit::mask::stat_u64;
use keepcached_testkit::{keepcached_server, run_with_timeout, ServerProcess};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_keepcached");
const WAIT: Duration = Duration::from_secs(30);
/// Requests per pipelined batch.
const BATCH: usize = 500;

/// The items a test stores: varied sizes and flags; every fourth item lives an hour, every
/// fourth (offset by one) lives `short_ttl` seconds, the rest forever.
struct Items {
    count: usize,
    short_ttl: u32,
}

const LONG_TTL: u32 = 3600;

impl Items {
    fn key(&self, i: usize) -> String {
        format!("restart:{i}")
    }

    fn value(&self, i: usize) -> Vec<u8> {
        let len = (i * 7919) % 4000;
        (0..len).map(|j| (i + j * 31) as u8).collect()
    }

    fn flags(&self, i: usize) -> u32 {
        (i as u32).wrapping_mul(2_654_435_761)
    }

    fn ttl(&self, i: usize) -> u32 {
        match i % 4 {
            1 => LONG_TTL,
            2 => self.short_ttl,
            _ => 0,
        }
    }

    fn short_lived(&self, i: usize) -> bool {
        self.short_ttl != 0 && i % 4 == 2
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("keepcached-restart-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn connect(server: &ServerProcess) -> TcpStream {
    let stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Stores every item, pipelined with noreply, and waits until the server has done them all.
fn store_all(server: &ServerProcess, items: &Items) {
    store_some(server, items, |_| true);
}

/// Stores the items that `wanted` picks, as [`store_all`] does.
fn store_some(server: &ServerProcess, items: &Items, wanted: impl Fn(usize) -> bool) {
    let mut stream = connect(server);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let picked: Vec<usize> = (0..items.count).filter(|&i| wanted(i)).collect();
    for chunk in picked.chunks(BATCH) {
        let mut request = Vec::new();
        for &i in chunk {
            let value = items.value(i);
            request.extend_from_slice(
                format!(
                    "set {} {} {} {} noreply\r\n",
                    items.key(i),
                    items.flags(i),
                    items.ttl(i),
                    value.len()
                )
                .as_bytes(),
            );
            request.extend_from_slice(&value);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"mn\r\n");
        stream.write_all(&request).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "MN\r\n", "a set failed");
    }
}

/// What `mg key v f t` found.
#[derive(Debug, PartialEq, Eq)]
struct Found {
    value: Vec<u8>,
    flags: u32,
    /// -1 when the item never expires.
    ttl: i64,
}

/// `mg key v f t` for each key, pipelined; None for a miss.
fn fetch_all(server: &ServerProcess, keys: &[String]) -> Vec<Option<Found>> {
    let mut stream = connect(server);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut found = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(BATCH) {
        stream.write_all(&mg_requests(chunk)).unwrap();
        read_found(&mut reader, &mut found);
    }
    assert_eq!(found.len(), keys.len());
    found
}

/// `mg key v f t` for each key, then `mn`.
fn mg_requests(keys: &[String]) -> Vec<u8> {
    let mut request = String::new();
    for key in keys {
        request.push_str(&format!("mg {key} v f t\r\n"));
    }
    request.push_str("mn\r\n");
    request.into_bytes()
}

/// Reads the replies to [`mg_requests`] up to its `MN` into `found`.
fn read_found(reader: &mut impl BufRead, found: &mut Vec<Option<Found>>) {
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("MN") => return,
            Some("EN") => found.push(None),
            Some("VA") => {
                let len: usize = words[1].parse().unwrap();
                let mut value = vec![0; len + 2];
                reader.read_exact(&mut value).unwrap();
                value.truncate(len);
                let field = |c: char| -> i64 {
                    words
                        .iter()
                        .find_map(|w| w.strip_prefix(c))
                        .unwrap()
                        .parse()
                        .unwrap()
                };
                found.push(Some(Found {
                    value,
                    flags: field('f') as u32,
                    ttl: field('t'),
                }));
            }
            _ => panic!("unexpected reply line {line:?}"),
        }
    }
}

fn stats(server: &ServerProcess, name: &str) -> u64 {
    let mut c = server.connect().unwrap();
    stat_u64(&c.call("stats\r\n").unwrap(), name).unwrap()
}

fn signal(server: &ServerProcess, signal: Signal) {
    kill(Pid::from_raw(server.pid() as i32), signal).unwrap();
}

/// Sends SIGTERM and asserts a clean exit.
fn stop(mut server: ServerProcess) -> String {
    signal(&server, Signal::SIGTERM);
    let status = server.wait_exit(WAIT).unwrap();
    let log = server.log_text();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?} after SIGTERM; log:\n{log}"
    );
    log
}

/// The number after `what` in the first log line that has it.
fn count_in(log: &str, what: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no line with {what:?}; log:\n{log}"));
    let after = &line[line.find(what).unwrap() + what.len()..];
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count after {what:?} in {line}"))
}

fn start(file: &Path, extra: &[&str]) -> ServerProcess {
    let mut args = vec!["-e", file.to_str().unwrap()];
    args.extend(extra);
    keepcached_server(Path::new(BIN), &args).unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Checks every item of `items` on `server`: (present, mismatches). An item is a mismatch when
/// its value or flags differ, or (when `stored` says when storing began and ended) its
/// remaining TTL is off by more than rounding to whole seconds.
fn check(server: &ServerProcess, items: &Items, stored: Option<(Instant, Instant)>) -> (u64, u64) {
    let keys: Vec<String> = (0..items.count).map(|i| items.key(i)).collect();
    // The least and most seconds that can have passed since any item was stored.
    let least = stored.map(|(_, done)| done.elapsed().as_secs());
    let fetched = fetch_all(server, &keys);
    let most = stored.map(|(began, _)| began.elapsed().as_secs() + 1);
    let (mut present, mut mismatches) = (0, 0);
    for (i, found) in fetched.into_iter().enumerate() {
        let Some(found) = found else { continue };
        present += 1;
        let mut ok = found.value == items.value(i) && found.flags == items.flags(i);
        if let (Some(least), Some(most)) = (least, most) {
            ok &= match items.ttl(i) {
                0 => found.ttl == -1,
                // Whole seconds on both servers' clocks and in the file: two of rounding.
                ttl => (i64::from(ttl) - most as i64 - 2..=i64::from(ttl) - least as i64 + 1)
                    .contains(&found.ttl),
            };
        }
        if !ok {
            mismatches += 1;
            if mismatches <= 5 {
                eprintln!(
                    "mismatch at {}: flags {} ttl {} len {}",
                    items.key(i),
                    found.flags,
                    found.ttl,
                    found.value.len()
                );
            }
        }
    }
    (present, mismatches)
}

#[test]
fn sigterm_saves_and_a_restart_loads_values_flags_and_ttls() {
    let dir = temp_dir("sigterm");
    let file = dir.join("cache");
    let items = Items {
        count: 20_000,
        short_ttl: 2,
    };
    let first = start(&file, &[]);
    let stored_at = Instant::now();
    store_some(&first, &items, |i| !items.short_lived(i));
    let stored = (stored_at, Instant::now());
    // The short-lived items last, so that they are alive at the save on any but a very slow
    // machine, and expire while the server is down.
    store_some(&first, &items, |i| items.short_lived(i));
    // After the stores, so that the last short-lived item's expiry is behind the wait below.
    let short_stored = unix_now();
    let log = stop(first);
    assert!(log.contains("does not exist yet"), "log:\n{log}");
    let saved = count_in(&log, "saved ");
    // Wait, on a deadline, until the short-lived items have expired by the wall clock.
    while unix_now() <= short_stored + u64::from(items.short_ttl) + 1 {
        thread::sleep(Duration::from_millis(50));
    }
    let second = start(&file, &[]);
    let (present, mismatches) = check(&second, &items, Some(stored));
    let short_lived = (0..items.count).filter(|&i| items.short_lived(i)).count() as u64;
    let expected = items.count as u64 - short_lived;
    let restored = stats(&second, "curr_items");
    let log = stop(second);
    let (loaded, expired) = (count_in(&log, "loaded "), count_in(&log, "left out: "));
    println!(
        "items saved {saved}, items restored {restored} (expected {expected}, present {present}, \
         {expired} expired while down), mismatches {mismatches}"
    );
    assert_eq!(mismatches, 0, "values, flags or TTLs differ");
    assert!(
        saved >= expected && saved <= items.count as u64,
        "saved {saved}"
    );
    assert_eq!(present, expected, "every item but the expired ones is back");
    assert_eq!((restored, loaded), (expected, expected));
    assert_eq!(
        expired,
        saved - expected,
        "the expired items were dropped at load"
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sigusr2_saves_while_serving() {
    let dir = temp_dir("sigusr2");
    let file = dir.join("cache");
    let items = Items {
        count: 5000,
        short_ttl: 0,
    };
    let mut first = start(&file, &[]);
    store_all(&first, &items);
    signal(&first, Signal::SIGUSR2);
    let deadline = Instant::now() + WAIT;
    while !first.log_text().contains("saved 5000 items") {
        assert!(
            Instant::now() < deadline,
            "no save; log:\n{}",
            first.log_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(first.is_running(), "SIGUSR2 must not stop the server");
    assert_eq!(stats(&first, "curr_items"), 5000, "still serving");
    let copy = dir.join("copy");
    fs::copy(&file, &copy).unwrap();
    let second = start(&copy, &[]);
    let (present, mismatches) = check(&second, &items, None);
    println!("items saved 5000, items restored {present}, mismatches {mismatches}");
    assert_eq!((present, mismatches), (5000, 0));
    drop(first);
    drop(second);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_shutdown_command_saves() {
    let dir = temp_dir("shutdown");
    let file = dir.join("cache");
    let items = Items {
        count: 1000,
        short_ttl: 0,
    };
    let mut first = start(&file, &["-A"]);
    store_all(&first, &items);
    let mut c = first.connect().unwrap();
    c.send(b"shutdown\r\n").unwrap();
    let status = first.wait_exit(WAIT).unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let second = start(&file, &[]);
    let (present, mismatches) = check(&second, &items, None);
    println!("items saved 1000, items restored {present}, mismatches {mismatches}");
    assert_eq!((present, mismatches), (1000, 0));
    fs::remove_dir_all(dir).unwrap();
}

/// A good file of `items`, written by a server stopped with SIGTERM.
fn saved_file(dir: &Path, items: &Items) -> Vec<u8> {
    let file = dir.join("good");
    let server = start(&file, &[]);
    store_all(&server, items);
    stop(server);
    fs::read(&file).unwrap()
}

#[test]
fn damaged_files_give_one_line_and_an_empty_cache() {
    let dir = temp_dir("damaged");
    let items = Items {
        count: 2000,
        short_ttl: 0,
    };
    let good = saved_file(&dir, &items);
    let mid = good.len() / 2;
    let mut cases: Vec<(String, Vec<u8>, &str)> = Vec::new();
    for cut in [good.len() - 1, good.len() - 21, mid, 100, 44, 20] {
        cases.push((format!("cut-{cut}"), good[..cut].to_vec(), "truncated"));
    }
    // The byte may be a record's kind, a length or its checksum as well as a key or value: each
    // gives its own message, and every one of a record says that the record is damaged.
    let mut flipped = good.clone();
    flipped[mid] ^= 0x10;
    cases.push(("flipped".into(), flipped, "is damaged"));
    let mut magic = good.clone();
    magic[..4].copy_from_slice(b"XXXX");
    cases.push(("magic".into(), magic, "not a keepcached cache file"));
    let mut version = good.clone();
    version[8] = 99;
    cases.push(("version".into(), version, "format version 99"));
    // A file of the layout before the CAS bound, whose header was 8 bytes shorter.
    let mut first_version = good.clone();
    first_version[8] = 1;
    cases.push(("version-1".into(), first_version, "format version 1, but"));
    cases.push(("empty".into(), Vec::new(), "the file is empty"));
    let keys: Vec<String> = (0..items.count).map(|i| items.key(i)).collect();
    for (name, bytes, problem) in cases {
        let file = dir.join(&name);
        fs::write(&file, &bytes).unwrap();
        let server = start(&file, &[]);
        let restored = stats(&server, "curr_items");
        let wrong = fetch_all(&server, &keys)
            .into_iter()
            .enumerate()
            .filter(|(i, f)| {
                f.as_ref()
                    .is_some_and(|f| f.value != items.value(*i) || f.flags != items.flags(*i))
            })
            .count();
        let log = stop(server);
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("cannot load")).collect();
        println!(
            "{name}: items saved {}, items restored {restored}, mismatches {wrong}; {}",
            items.count,
            lines.first().unwrap_or(&"no line")
        );
        assert_eq!(
            wrong, 0,
            "{name}: a key returned a value that was not saved"
        );
        assert_eq!(restored, 0, "{name}: the cache must start empty");
        assert_eq!(
            lines.len(),
            1,
            "{name}: one line about the file; log:\n{log}"
        );
        assert!(
            lines[0].contains(file.to_str().unwrap()) && lines[0].contains(problem),
            "{name}: the line names the file and says {problem:?}: {}",
            lines[0]
        );
    }
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_daemon_reports_a_damaged_file_before_it_detaches() {
    let dir = temp_dir("daemon");
    let file = dir.join("cache");
    fs::write(&file, b"not a cache file at all").unwrap();
    let pidfile = dir.join("pid");
    let port = keepcached_testkit::free_port().unwrap().to_string();
    let out = run_with_timeout(
        Command::new(BIN).args([
            "server",
            "-d",
            "-u",
            "root",
            "-l",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "0",
            "-e",
            file.to_str().unwrap(),
            "-P",
            pidfile.to_str().unwrap(),
        ]),
        WAIT,
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    let pid = loop {
        if let Some(pid) = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            break Pid::from_raw(pid);
        }
        assert!(Instant::now() < deadline, "no pid file; {out:?}");
        thread::sleep(Duration::from_millis(20));
    };
    kill(pid, Signal::SIGTERM).unwrap();
    // Gone, or a zombie that nobody has reaped yet (its parent exited at once).
    let running = || {
        fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|s| !s.trim_start().starts_with('Z'))
        })
    };
    while running() {
        assert!(Instant::now() < deadline, "the daemon did not stop");
        thread::sleep(Duration::from_millis(20));
    }
    println!("daemon's stderr: {}", out.stderr.trim());
    assert!(out.status.is_some_and(|s| s.success()), "{out:?}");
    assert!(
        out.stderr.contains("cannot load") && out.stderr.contains("not a keepcached cache file"),
        "{out:?}"
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_missing_directory_is_a_usage_error() {
    let out = run_with_timeout(
        Command::new(BIN).args([
            "server",
            "-u",
            "root",
            "-e",
            "/nonexistent-keepcached-dir/cache",
        ]),
        WAIT,
    )
    .unwrap();
    assert_eq!(out.status.and_then(|s| s.code()), Some(64), "{out:?}");
    assert!(out.stderr.contains("does not exist"), "{out:?}");
}

/// A second SIGTERM during the final save ends the server at once: exit 1, logged, the previous
/// save kept whole and the temporary file removed. The save is held in the middle of its
/// writing by a disk that stops taking data (its temporary file is a pipe the test stops
/// reading), so the second signal surely meets it.
#[test]
fn a_second_sigterm_cuts_the_final_save_short_and_keeps_the_previous_file() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = temp_dir("second-sigterm");
    let file = dir.join("cache");
    let items = Items {
        count: 5000,
        short_ttl: 0,
    };
    let pidfile = dir.join("pid");
    let mut server = start(&file, &["-P", pidfile.to_str().unwrap()]);
    store_all(&server, &items);
    signal(&server, Signal::SIGUSR2);
    let deadline = Instant::now() + WAIT;
    while !server.log_text().contains("saved 5000 items") {
        assert!(Instant::now() < deadline, "no save:\n{}", server.log_text());
        thread::sleep(Duration::from_millis(20));
    }
    let previous = fs::read(&file).unwrap();
    // The final save would differ from the previous one.
    let mut client = server.connect().unwrap();
    assert_eq!(
        client.call("set added 0 0 1\r\nx\r\n").unwrap(),
        "STORED\r\n"
    );

    let temp = dir.join("cache.tmp");
    nix::unistd::mkfifo(&temp, nix::sys::stat::Mode::S_IRWXU).unwrap();
    // Non-blocking, so that opening needs no writer yet and reading never waits.
    let mut disk = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(&temp)
        .unwrap();
    signal(&server, Signal::SIGTERM);
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + WAIT;
    loop {
        match disk.read(&mut buf) {
            Ok(n) if n > 0 => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading the save: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the save never began:\n{}",
            server.log_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
    // Megabytes of items behind a pipe of 64 KiB nobody reads: the save waits mid-write.
    signal(&server, Signal::SIGTERM);
    let status = server.wait_exit(WAIT).unwrap();
    let log = server.log_text();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "second SIGTERM: exiting without finishing the save to {}",
            file.display()
        )),
        "{log}"
    );
    assert!(!log.contains("saved 5001 items"), "{log}");
    assert!(
        fs::read(&file).unwrap() == previous,
        "the previous save is kept whole"
    );
    assert!(!temp.exists(), "the temporary file is removed");
    assert!(!pidfile.exists(), "the pid file is removed");
    drop(disk);
    // And it loads: the previous save's items, not the one added since.
    let second = start(&file, &[]);
    let (present, mismatches) = check(&second, &items, None);
    assert_eq!((present, mismatches), (5000, 0));
    let mut client = second.connect().unwrap();
    assert_eq!(client.call("get added\r\n").unwrap(), "END\r\n");
    drop(second);
    fs::remove_dir_all(dir).unwrap();
}

/// Waits until the server's log has `what`; the log then.
fn wait_for_log(server: &ServerProcess, what: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = server.log_text();
        if log.contains(what) {
            return log;
        }
        assert!(Instant::now() < deadline, "no {what:?} in the log:\n{log}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn keys(items: &Items) -> Vec<String> {
    (0..items.count).map(|i| items.key(i)).collect()
}

/// Which of `items` a fresh server started with `flags` stores: what a load with those flags
/// should keep, found by the binary's own `set`.
fn accepted(items: &Items, flags: &[&str]) -> Vec<bool> {
    let server = keepcached_server(Path::new(BIN), flags).unwrap();
    store_all(&server, items);
    fetch_all(&server, &keys(items))
        .iter()
        .map(Option::is_some)
        .collect()
}

/// SIGUSR1, memcached 1.6's graceful shutdown, stops the server and saves, as SIGTERM does.
#[test]
fn sigusr1_stops_the_server_and_saves() {
    let dir = temp_dir("sigusr1");
    let file = dir.join("cache");
    let items = Items {
        count: 2000,
        short_ttl: 0,
    };
    let mut first = start(&file, &[]);
    store_all(&first, &items);
    signal(&first, Signal::SIGUSR1);
    let status = first.wait_exit(WAIT).unwrap();
    let log = first.log_text();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?} after SIGUSR1; log:\n{log}"
    );
    assert!(
        log.contains("SIGUSR1 received: shutting down"),
        "log:\n{log}"
    );
    let saved = count_in(&log, "saved ");
    let second = start(&file, &[]);
    let (present, mismatches) = check(&second, &items, None);
    println!("items saved {saved}, items restored {present}, mismatches {mismatches}");
    assert_eq!(saved, 2000);
    assert_eq!((present, mismatches), (2000, 0));
    drop(second);
    fs::remove_dir_all(dir).unwrap();
}

/// A final save that fails is logged and makes the exit status 1, and the previous file is
/// left as it was (and loads). The disk is full: the temporary file is /dev/full, which fails
/// every write with ENOSPC even for root.
#[test]
fn a_failed_final_save_exits_1_and_keeps_the_previous_file() {
    let dir = temp_dir("failed-save");
    let file = dir.join("cache");
    let items = Items {
        count: 2000,
        short_ttl: 0,
    };
    let mut server = start(&file, &[]);
    store_all(&server, &items);
    signal(&server, Signal::SIGUSR2);
    wait_for_log(&server, "saved 2000 items");
    let previous = fs::read(&file).unwrap();
    // The final save would differ from the previous one.
    let mut client = server.connect().unwrap();
    assert_eq!(
        client.call("set added 0 0 1\r\nx\r\n").unwrap(),
        "STORED\r\n"
    );
    drop(client);
    let temp = dir.join("cache.tmp");
    std::os::unix::fs::symlink("/dev/full", &temp).unwrap();
    signal(&server, Signal::SIGTERM);
    let status = server.wait_exit(WAIT).unwrap();
    let log = server.log_text();
    println!(
        "exit status {status:?}; {}",
        log.lines()
            .find(|l| l.contains("saving the cache"))
            .unwrap_or("no line")
    );
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "saving the cache to {} failed: No space left on device",
            file.display()
        )),
        "{log}"
    );
    assert!(!log.contains("saved 2001 items"), "{log}");
    assert!(
        fs::read(&file).unwrap() == previous,
        "the previous file is left as it was"
    );
    assert!(
        fs::symlink_metadata(&temp).is_err(),
        "the temporary file is removed"
    );
    let second = start(&file, &[]);
    let (present, mismatches) = check(&second, &items, None);
    assert_eq!((present, mismatches), (2000, 0));
    let mut client = second.connect().unwrap();
    assert_eq!(client.call("get added\r\n").unwrap(), "END\r\n");
    drop(second);
    fs::remove_dir_all(dir).unwrap();
}

/// Saves with `save_flags`, loads with `load_flags`: (items saved, items over -I at the load).
/// Asserts that the items loaded are exactly those saved that a server with `load_flags` stores,
/// with their values and flags.
fn save_then_load(
    dir: &Path,
    items: &Items,
    save_flags: &[&str],
    load_flags: &[&str],
) -> (u64, u64) {
    let file = dir.join(format!("cache{}", save_flags.join("").replace('-', "_")));
    let first = start(&file, save_flags);
    store_all(&first, items);
    let saved = count_in(&stop(first), "saved ");
    let in_file = accepted(items, save_flags);
    assert_eq!(saved, in_file.iter().filter(|&&a| a).count() as u64);
    let kept = accepted(items, load_flags);
    let second = start(&file, load_flags);
    let wrong = fetch_all(&second, &keys(items))
        .into_iter()
        .enumerate()
        .filter(|(i, found)| match found {
            None => in_file[*i] && kept[*i],
            Some(f) => !kept[*i] || f.value != items.value(*i) || f.flags != items.flags(*i),
        })
        .count();
    let log = stop(second);
    // "left out: E expired, N over -I, ..."
    let over = count_in(&log, "expired, ");
    let loaded = count_in(&log, "loaded ");
    println!(
        "saved with {save_flags:?}: {saved} items; loaded with {load_flags:?}: {loaded}, \
         {over} over -I, {wrong} wrong"
    );
    assert_eq!(wrong, 0, "loaded: exactly the saved items a set stores");
    assert_eq!(loaded + over, saved, "every item left out is counted");
    (saved, over)
}

/// A smaller `-I` at the load leaves the larger items out, and the log line counts them.
#[test]
fn a_smaller_item_size_leaves_the_larger_items_out_and_counts_them() {
    let dir = temp_dir("smaller-i");
    // Every value length from 0 to 3999 bytes once (7919 and 4000 are coprime).
    let items = Items {
        count: 4000,
        short_ttl: 0,
    };
    let (saved, over) = save_then_load(&dir, &items, &[], &["-I", "2k"]);
    assert_eq!(saved, 4000);
    assert!(over > 1900 && over < 2100, "{over} over -I 2k");
    fs::remove_dir_all(dir).unwrap();
}

/// A CAS counts 8 bytes toward `-I`: loading without `-C` a file saved with it leaves out the
/// items within 8 bytes of `-I`, counted as over it; the other way round none.
#[test]
fn a_cas_counts_toward_the_item_size_at_the_load() {
    let dir = temp_dir("cas-size");
    let items = Items {
        count: 4000,
        short_ttl: 0,
    };
    let (saved, over) = save_then_load(&dir, &items, &["-C", "-I", "1k"], &["-I", "1k"]);
    // One value length per byte, and four key lengths: 8 bytes hold 8 items, give or take.
    assert!(over > 0 && over <= 16, "{over} of {saved} over -I");
    let (saved, over) = save_then_load(&dir, &items, &["-I", "1k"], &["-C", "-I", "1k"]);
    assert!(saved > 0);
    assert_eq!(over, 0);
    fs::remove_dir_all(dir).unwrap();
}

/// Opens for writing the pipe at `path` once the server has opened it to read (until then the
/// open fails with ENXIO), in blocking mode.
fn open_pipe_for_writing(server: &ServerProcess, path: &Path) -> fs::File {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let deadline = Instant::now() + WAIT;
    let pipe = loop {
        match fs::OpenOptions::new()
            .write(true)
            .custom_flags(OFlag::O_NONBLOCK.bits())
            .open(path)
        {
            Ok(pipe) => break pipe,
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENXIO as i32) => {}
            Err(e) => panic!("opening {}: {e}", path.display()),
        }
        assert!(
            Instant::now() < deadline,
            "the server never opened {}:\n{}",
            path.display(),
            server.log_text()
        );
        thread::sleep(Duration::from_millis(20));
    };
    fcntl(pipe.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty())).unwrap();
    pipe
}

/// Clients that connect while the server loads its file wait, and are then served from the
/// loaded cache; SIGUSR1 and SIGUSR2 sent meanwhile are ignored (neither stops nor saves). The
/// load is held in the middle of the file: the file is a pipe that the test fills half, then
/// connects a client that asks for every item and sends the signals, then writes the rest.
#[test]
fn clients_wait_for_the_load_and_user_signals_during_it_are_ignored() {
    let dir = temp_dir("held-load");
    let items = Items {
        count: 2000,
        short_ttl: 0,
    };
    let good = saved_file(&dir, &items);
    let file = dir.join("cache");
    nix::unistd::mkfifo(&file, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let pidfile = dir.join("pid");
    let mut server = start(&file, &["-P", pidfile.to_str().unwrap()]);
    let mut disk = open_pipe_for_writing(&server, &file);
    let half = good.len() / 2;
    disk.write_all(&good[..half]).unwrap();
    // The load waits for the rest of the file: everything below happens during it.
    let mut client = connect(&server);
    client.write_all(&mg_requests(&keys(&items))).unwrap();
    signal(&server, Signal::SIGUSR1);
    signal(&server, Signal::SIGUSR2);
    disk.write_all(&good[half..]).unwrap_or_else(|e| {
        panic!(
            "the load stopped reading its file ({e}):\n{}",
            server.log_text()
        )
    });
    drop(disk);
    let mut found = Vec::new();
    read_found(&mut BufReader::new(client), &mut found);
    let wrong = found
        .iter()
        .enumerate()
        .filter(|(i, f)| {
            f.as_ref()
                .is_none_or(|f| f.value != items.value(*i) || f.flags != items.flags(*i))
        })
        .count();
    let log = wait_for_log(&server, "loaded ");
    // The pid file is written once the signals are handled: one queued during the load would
    // have been acted on by now.
    let deadline = Instant::now() + WAIT;
    while !pidfile.exists() {
        assert!(Instant::now() < deadline, "no pid file:\n{log}");
        thread::sleep(Duration::from_millis(20));
    }
    let restored = stats(&server, "curr_items");
    assert!(server.is_running(), "{}", server.log_text());
    signal(&server, Signal::SIGUSR1);
    let status = server.wait_exit(WAIT).unwrap();
    let log = server.log_text();
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    println!(
        "items saved {}, asked for during the load {}, wrong or missing {wrong}, restored \
         {restored}; SIGUSR1 lines {}, saves {}",
        items.count,
        found.len(),
        count("SIGUSR1 received"),
        count("saved 2000 items")
    );
    assert_eq!(wrong, 0, "a client was served before the load ended");
    assert_eq!(count_in(&log, "loaded "), 2000, "{log}");
    assert_eq!(restored, 2000);
    assert!(status.is_some_and(|s| s.success()), "{status:?}:\n{log}");
    assert_eq!(
        (count("SIGUSR1 received"), count("saved 2000 items")),
        (1, 1),
        "only the SIGUSR1 sent after the load acts, and only its save is made:\n{log}"
    );
    fs::remove_dir_all(dir).unwrap();
}

/// Saves never overlap: a shutdown asked for during a SIGUSR2 save waits for it, then saves.
/// The SIGUSR2 save is held mid-write (its temporary file is a pipe the test stops reading)
/// until the server has stopped listening, just before its final save; then the test reads
/// the pipe to its end. A save that overlapped would write into the same pipe, and the bytes
/// read would not be one whole file. (The held save then fails, since a pipe cannot be synced
/// to disk; the final save, made after it, succeeds.)
#[test]
fn saves_never_overlap() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = temp_dir("overlap");
    let file = dir.join("cache");
    let items = Items {
        count: 5000,
        short_ttl: 0,
    };
    let mut server = start(&file, &[]);
    store_all(&server, &items);
    let temp = dir.join("cache.tmp");
    nix::unistd::mkfifo(&temp, nix::sys::stat::Mode::S_IRWXU).unwrap();
    // Non-blocking, so that opening needs no writer yet and reading never waits.
    let mut disk = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(&temp)
        .unwrap();
    signal(&server, Signal::SIGUSR2);
    let mut first = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + WAIT;
    while first.is_empty() {
        match disk.read(&mut buf) {
            Ok(n) => first.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading the save: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the save never began:\n{}",
            server.log_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
    // Megabytes of items behind a pipe of 64 KiB nobody reads: the save waits mid-write.
    signal(&server, Signal::SIGTERM);
    wait_for_log(&server, "SIGTERM received");
    while TcpStream::connect(server.addr()).is_ok() {
        assert!(Instant::now() < deadline, "the server still listens");
        thread::sleep(Duration::from_millis(20));
    }
    assert!(server.is_running(), "{}", server.log_text());
    // To the end of the file: the pipe reads empty once its writer has closed it.
    loop {
        match disk.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => first.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("reading the save: {e}"),
        }
        assert!(Instant::now() < deadline, "the save never ended");
    }
    drop(disk);
    let status = server.wait_exit(WAIT).unwrap();
    let log = server.log_text();
    assert!(status.is_some_and(|s| s.success()), "{status:?}:\n{log}");
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    let failed = format!(
        "saving the cache to {} failed: Invalid argument",
        file.display()
    );
    assert_eq!((count(&failed), count("saved 5000 items")), (1, 1), "{log}");
    // Both saves wrote a whole file of every item.
    let held = dir.join("held");
    fs::write(&held, &first).unwrap();
    for saved in [&held, &file] {
        let server = start(saved, &[]);
        let (present, mismatches) = check(&server, &items, None);
        let log = stop(server);
        println!(
            "{}: {} bytes, items restored {present}, mismatches {mismatches}",
            saved.display(),
            fs::metadata(saved).unwrap().len()
        );
        assert!(!log.contains("cannot load"), "{log}");
        assert_eq!((present, mismatches), (5000, 0));
    }
    fs::remove_dir_all(dir).unwrap();
}

/// `mg key c` for each key, pipelined: each item's CAS.
fn cas_of(server: &ServerProcess, keys: &[String]) -> Vec<u64> {
    let mut stream = connect(server);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let request: String = keys.iter().map(|k| format!("mg {k} c\r\n")).collect();
    stream.write_all(request.as_bytes()).unwrap();
    keys.iter()
        .map(|key| {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            line.trim_end()
                .strip_prefix("HD c")
                .and_then(|cas| cas.parse().ok())
                .unwrap_or_else(|| panic!("mg {key} c: {line:?}"))
        })
        .collect()
}

/// CAS values are not kept: every loaded item gets a new one, so that a client holding a CAS
/// from before the restart gets EXISTS. Which old CAS an item could meet again depends on the
/// order the load imports the items in; whatever that order, no new CAS may be an old one.
#[test]
fn an_old_cas_gets_exists_after_a_load() {
    let dir = temp_dir("old-cas");
    let file = dir.join("cache");
    let items = Items {
        count: 1000,
        short_ttl: 0,
    };
    let keys = keys(&items);
    let first = start(&file, &[]);
    store_all(&first, &items);
    let old = cas_of(&first, &keys);
    stop(first);
    let second = start(&file, &[]);
    let new = cas_of(&second, &keys);
    let mut stream = connect(&second);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = Vec::new();
    for (key, cas) in keys.iter().zip(&old) {
        request.extend_from_slice(format!("cas {key} 0 0 1 {cas}\r\nx\r\n").as_bytes());
    }
    stream.write_all(&request).unwrap();
    let replies: Vec<String> = keys
        .iter()
        .map(|_| {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            line
        })
        .collect();
    let exists = replies.iter().filter(|r| *r == "EXISTS\r\n").count();
    let (present, mismatches) = check(&second, &items, None);
    println!(
        "items {}, old CAS {}..={}, new CAS {}..={}; cas with the old CAS: {exists} EXISTS",
        items.count,
        old.iter().min().unwrap(),
        old.iter().max().unwrap(),
        new.iter().min().unwrap(),
        new.iter().max().unwrap()
    );
    let reused = new.iter().filter(|cas| old.contains(cas)).count();
    assert_eq!(
        reused, 0,
        "new CAS values that were handed out before the restart"
    );
    assert_eq!(exists, items.count, "replies: {:?}", &replies[..5]);
    assert_eq!((present, mismatches), (1000, 0), "no item was replaced");
    // The new CAS works.
    let mut client = second.connect().unwrap();
    assert_eq!(
        client
            .call(&format!("cas {} 0 0 1 {}\r\nx\r\n", keys[0], new[0]))
            .unwrap(),
        "STORED\r\n"
    );
    drop(second);
    fs::remove_dir_all(dir).unwrap();
}

/// `mg key l` for each key: the seconds since each item's last access.
fn seconds_since_access(server: &ServerProcess, keys: &[&str]) -> Vec<u64> {
    let mut client = server.connect().unwrap();
    keys.iter()
        .map(|key| {
            let reply = client.call(&format!("mg {key} l\r\n")).unwrap();
            reply
                .trim_end()
                .strip_prefix("HD l")
                .and_then(|l| l.parse().ok())
                .unwrap_or_else(|| panic!("mg {key} l: {reply:?}"))
        })
        .collect()
}

/// Last access times come back to the second within what the new process's clock can say: it
/// starts 62 s before the process, so an access less than 62 s before the start is kept, an
/// older one becomes the start minus 62 s, and one after the load (a wall clock set back) the
/// load's time. The file is written here with the access times wanted (a wait of a minute or
/// more would make them otherwise).
#[test]
fn access_times_come_back_within_the_62_seconds_the_clock_reaches_back() {
    use keepcached_server::persist::format::{Header, Record, Writer};
    let dir = temp_dir("access-times");
    let file = dir.join("cache");
    let t0 = unix_now();
    let accesses = [
        ("recent", t0 - 50),
        ("old", t0 - 1000),
        ("future", t0 + 1000),
    ];
    let header = Header {
        saved_at: t0,
        max_bytes: 64 << 20,
        item_size_max: 1 << 20,
        cas_bound: 1,
    };
    let mut writer = Writer::new(Vec::new(), &header).unwrap();
    for (key, last_access) in accesses {
        writer
            .item(&Record {
                key: key.as_bytes(),
                value: b"value",
                flags: 0,
                expires_at: 0,
                last_access,
                fetched: false,
                stale: false,
                binary_key: false,
            })
            .unwrap();
    }
    fs::write(&file, writer.finish().unwrap().0).unwrap();
    let server = start(&file, &[]);
    let since = seconds_since_access(&server, &["recent", "old", "future"]);
    // Whole seconds on both clocks: one of rounding.
    let elapsed = unix_now() - t0 + 1;
    let log = stop(server);
    println!(
        "seconds since access: recent {} (50 s before the start), old {} (1000 s before), \
         future {} (1000 s after); {elapsed} s since the file was written",
        since[0], since[1], since[2]
    );
    assert_eq!(count_in(&log, "loaded "), 3, "{log}");
    assert!(
        (49..=50 + elapsed).contains(&since[0]),
        "an access 50 s before the start is kept: {}",
        since[0]
    );
    assert!(
        (62..=62 + elapsed).contains(&since[1]),
        "an older access becomes the start minus 62 s: {}",
        since[1]
    );
    assert!(
        since[2] <= elapsed,
        "an access after the load becomes the load's time: {}",
        since[2]
    );
    fs::remove_dir_all(dir).unwrap();
}
