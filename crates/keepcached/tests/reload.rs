//! `keepcached proxy --config FILE` and SIGHUP: servers and pools added and removed while
//! clients write and read through the proxy (docs/proxy.md "SIGHUP"). Real memcached servers,
//! the proxy binary, and the stale-read load of resync.rs: an added server is not read before it
//! holds what it should, a removed one is let go (its connections close), a server that takes
//! back keys it held before is not read stale, and what cannot be done safely waits for a
//! restart.

mod tier;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use keepcached_testkit::ServerProcess as Server;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tier::client::Client;
use tier::load::{version, Ack, Counts, Load};
use tier::WAIT;

const BIN: &str = env!("CARGO_BIN_EXE_keepcached");

/// The scenarios run one at a time: each loads both cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn memcached() -> Server {
    keepcached_testkit::memcached(&[]).expect("start memcached")
}

/// The proxy binary with a configuration file the test rewrites, and its log.
struct Proxy {
    child: Child,
    addr: String,
    file: PathBuf,
    log: PathBuf,
}

impl Proxy {
    /// `keepcached proxy -D --config FILE`, FILE holding `pools` (name, servers).
    async fn start(pools: &[(&str, Vec<&Server>)]) -> Proxy {
        let port = keepcached_testkit::free_port().expect("free port");
        let tag = format!("keepcached-reload-{}-{port}", std::process::id());
        let (file, log) = (
            std::env::temp_dir().join(format!("{tag}.toml")),
            std::env::temp_dir().join(format!("{tag}.log")),
        );
        let addr = format!("127.0.0.1:{port}");
        write_config(&file, &addr, pools);
        let out = std::fs::File::create(&log).expect("proxy log");
        let child = Command::new(BIN)
            .args(["proxy", "-D", "--config"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("proxy log"))
            .stderr(out)
            .spawn()
            .expect("start keepcached proxy");
        let proxy = Proxy {
            child,
            addr,
            file,
            log,
        };
        let deadline = Instant::now() + WAIT;
        while Client::connect(&proxy.addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "proxy never listened: {}",
                proxy.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy
    }

    /// Rewrites the file and sends SIGHUP; waits until the proxy logged that it reloaded.
    async fn reload(&self, pools: &[(&str, Vec<&Server>)]) {
        write_config(&self.file, &self.addr, pools);
        self.hangup("configuration reloaded").await;
    }

    /// Sends SIGHUP and waits until the log holds `logged` once more than before.
    async fn hangup(&self, logged: &str) {
        let before = self.log_text().matches(logged).count();
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        kill(pid, Signal::SIGHUP).expect("SIGHUP");
        let deadline = Instant::now() + WAIT;
        while self.log_text().matches(logged).count() <= before {
            assert!(
                Instant::now() < deadline,
                "no {logged:?} after SIGHUP: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many warm-ups of `server` finished.
    fn warmed(&self, server: &Server) -> usize {
        let addr = server.addr().to_string();
        self.log_text()
            .lines()
            .filter(|l| l.contains("warm-up finished") && l.contains(&addr))
            .count()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn client(&self) -> Client {
        Client::reach(&self.addr).await
    }

    async fn backends(&self) -> String {
        self.client()
            .await
            .call("stats backends\r\n")
            .await
            .expect("stats backends")
    }

    /// `server`'s line of `stats backends` (empty when it has none).
    async fn line(&self, server: &Server) -> String {
        let name = format!("/{} ", server.addr());
        let backends = self.backends().await;
        backends
            .lines()
            .find(|l| l.contains(&name))
            .unwrap_or("")
            .to_string()
    }

    async fn await_state(&self, server: &Server, state: &str) {
        let deadline = Instant::now() + WAIT * 2;
        while !self.line(server).await.contains(&format!("state={state} ")) {
            assert!(
                Instant::now() < deadline,
                "{} never {state}: {}\n{}",
                server.addr(),
                self.backends().await,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The proxy's configuration file: listening on `addr`, these pools, a fast health check.
fn write_config(file: &std::path::Path, addr: &str, pools: &[(&str, Vec<&Server>)]) {
    let mut text = format!(
        "listen = [\"{addr}\"]\nthreads = 2\ndrain_timeout_ms = 2000\n\
         [backend]\nhealth_interval_ms = 200\n"
    );
    for (name, servers) in pools {
        let servers: Vec<String> = servers
            .iter()
            .map(|s| format!("\"{}\"", s.addr()))
            .collect();
        text.push_str(&format!(
            "[[pools]]\nname = \"{name}\"\nservers = [{}]\n",
            servers.join(", ")
        ));
    }
    std::fs::write(file, text).expect("write the configuration");
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
        if std::thread::panicking() {
            eprintln!("the proxy's log is kept: {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A memcached `stats` figure, read on a new connection.
async fn stat(server: &Server, name: &str) -> u64 {
    stat_on(&mut Client::reach(&server.addr().to_string()).await, name).await
}

/// A memcached `stats` figure, read on `client`'s connection.
async fn stat_on(client: &mut Client, name: &str) -> u64 {
    let stats = client.call("stats\r\n").await.expect("stats");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("STAT {name} ")))
        .unwrap_or_else(|| panic!("no {name} in {stats}"))
        .trim()
        .parse()
        .expect("a number")
}

/// Reads of the load's keys (`k<writer>:<n>`) `server` answered so far, from memcached's
/// per-prefix figures (`stats detail on` before the server is used): the proxies' own items
/// (`keepcached:…`, read on every server that takes writes) are another prefix.
async fn load_key_gets(server: &Server) -> u64 {
    let dump = Client::reach(&server.addr().to_string())
        .await
        .call("stats detail dump\r\n")
        .await
        .expect("stats detail dump");
    dump.lines()
        .filter_map(|l| l.strip_prefix("PREFIX k"))
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "get")?;
            words.get(at + 1)?.parse::<u64>().ok()
        })
        .sum()
}

/// Gives every key the load writes an old value (version 0) on `server`: read through the proxy
/// before the server was flushed, it would be a stale read. Returns the connection it used.
async fn plant_old_values(server: &Server) -> Client {
    let mut client = Client::reach(&server.addr().to_string()).await;
    for w in 0..tier::load::WRITERS {
        for n in 0..tier::load::KEYS_EACH {
            let reply = client.set(&format!("k{w}:{n}"), "v0-old").await.unwrap();
            assert_eq!(reply, "STORED\r\n");
        }
    }
    client
}

/// Whether `value` (read for a key whose last acknowledged write is `ack`) is that write.
fn as_acknowledged(value: &Option<String>, ack: &Ack) -> bool {
    ack.unsettled
        || match value {
            Some(v) => !ack.deleted && version(v) >= ack.version,
            None => ack.deleted,
        }
}

/// Keys not as acknowledged, read through `addr` (the proxy, or one server alone).
async fn mismatches(addr: &str, acked: &std::collections::HashMap<String, Ack>) -> u64 {
    let mut client = Client::reach(addr).await;
    let mut wrong = 0;
    for (key, ack) in acked {
        let value = client.get(key).await.unwrap();
        wrong += u64::from(!as_acknowledged(&value, ack));
    }
    wrong
}

fn assert_clean(counts: &Counts, what: &str) {
    assert_eq!(
        counts.stale.load(Ordering::Relaxed),
        0,
        "{what}: stale reads"
    );
    assert_eq!(
        counts.lost.load(Ordering::Relaxed),
        0,
        "{what}: lost writes"
    );
    assert_eq!(
        counts.failed.load(Ordering::Relaxed),
        0,
        "{what}: clients cut off"
    );
}

/// The load met no stale read, lost write or cut-off client through the reloads, and every
/// acknowledged write reads back as acknowledged through the proxy and from `main` alone
/// (`main_alone` names that check).
async fn assert_acknowledged(
    counts: &Counts,
    acked: &std::collections::HashMap<String, Ack>,
    proxy: &Proxy,
    main: &Server,
    main_alone: &str,
) {
    assert_clean(counts, "through the reloads");
    assert_eq!(mismatches(&proxy.addr, acked).await, 0, "through the proxy");
    assert_eq!(
        mismatches(&main.addr().to_string(), acked).await,
        0,
        "{main_alone}"
    );
}

/// Polls `server`'s `curr_connections` (read on a new connection each time) until it is
/// `baseline`, the figure read on one client's connection before the proxy knew the server.
async fn await_connections(server: &Server, baseline: u64, log: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = stat(server, "curr_connections").await;
        if now == baseline {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} still has {now} connections (baseline {baseline}): {}",
            server.addr(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server added to the main pool under write load is flushed (it holds old values of the
/// keys), warmed from the backup pool and not read before; removed again, the server that takes
/// its keys back (it still holds the values they had before they moved) is flushed and warmed
/// too, and the removed one's connections close; added once more, it is flushed and warmed
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_added_and_removed_by_sighup_is_never_read_stale() {
    let _serial = SERIAL.lock().await;
    let (main, backup, added) = (memcached(), memcached(), memcached());
    // The baseline is read on the probe's own connection: one client connection, as each
    // later reading (on a new connection, once the probe is gone) counts. A reading on a new
    // connection right after closing the probe could count it still open.
    let mut probe = plant_old_values(&added).await;
    assert_eq!(probe.call("stats detail on\r\n").await.unwrap(), "OK\r\n");
    let baseline = stat_on(&mut probe, "curr_connections").await;
    drop(probe);
    let proxy = Proxy::start(&[("main", vec![&main]), ("backup", vec![&backup])]).await;
    proxy.await_state(&main, "up").await;
    proxy.await_state(&backup, "up").await;
    let load = Load::start(&proxy.addr).await;
    load.await_writes(2_000, WAIT * 2, || proxy.log_text())
        .await;

    proxy
        .reload(&[("main", vec![&main, &added]), ("backup", vec![&backup])])
        .await;
    let log = proxy.log_text();
    assert!(
        log.contains("server added") && log.contains(&added.addr().to_string()),
        "{log}"
    );
    assert!(!log.contains("needs a restart"), "{log}");
    // Until it is up, not one read of a client's key reached it: each sample of its reads is
    // taken before the proxy is seen to hold it out of reads.
    let mut samples = 0;
    loop {
        let gets = load_key_gets(&added).await;
        let line = proxy.line(&added).await;
        assert!(!line.is_empty(), "{}", proxy.backends().await);
        if line.contains("state=up ") {
            break;
        }
        assert_eq!(gets, 0, "read before it was warmed: {line}");
        samples += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    load.await_writes(2_000, WAIT * 2, || proxy.log_text())
        .await;
    // Up, it serves its share of the keys.
    let deadline = Instant::now() + WAIT;
    while load_key_gets(&added).await == 0 {
        assert!(Instant::now() < deadline, "never read once up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let moved = stat(&added, "curr_items").await;

    proxy
        .reload(&[("main", vec![&main]), ("backup", vec![&backup])])
        .await;
    let log = proxy.log_text();
    assert!(log.contains("server removed"), "{log}");
    assert!(log.contains("server takes over keys"), "{log}");
    assert!(
        !proxy.backends().await.contains(&added.addr().to_string()),
        "{}",
        proxy.backends().await
    );
    await_connections(&added, baseline, || proxy.log_text()).await;
    proxy.await_state(&main, "up").await;
    load.await_writes(2_000, WAIT * 2, || proxy.log_text())
        .await;
    let (acked, counts) = load.stop().await;
    println!("added and removed: {counts} samples_before_up={samples} items_on_added={moved}");
    assert_acknowledged(
        &counts,
        &acked,
        &proxy,
        &main,
        "on the main server alone, after it took its keys back",
    )
    .await;

    // Added again, the server still holds the values its keys had when it was removed, older
    // than what was acknowledged since: it is flushed and warmed again, and what it holds
    // then is as acknowledged.
    let settings = |text: String| {
        text.lines()
            .find(|l| l.starts_with("STAT pool_main "))
            .unwrap_or("")
            .to_string()
    };
    proxy
        .reload(&[("main", vec![&main, &added]), ("backup", vec![&backup])])
        .await;
    proxy.await_state(&added, "up").await;
    assert_eq!(proxy.warmed(&added), 2, "{}", proxy.log_text());
    let pools = settings(
        proxy
            .client()
            .await
            .call("stats settings\r\n")
            .await
            .unwrap(),
    );
    assert_eq!(
        pools,
        format!("STAT pool_main {},{}", main.addr(), added.addr())
    );
    let mut direct = Client::reach(&added.addr().to_string()).await;
    let mut old = 0;
    for (key, ack) in &acked {
        let value = direct.get(key).await.unwrap();
        old += u64::from(value.is_some() && !as_acknowledged(&value, ack));
    }
    assert_eq!(old, 0, "old values on the server added again");
    assert_eq!(
        mismatches(&proxy.addr, &acked).await,
        0,
        "through the proxy at the end"
    );
}

/// A backup pool added to a one-pool proxy under load is warmed before it is read, then removed
/// again; a server added to the only pool, a server added to the backup pool while the main
/// server is down, and a broken file change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_is_added_and_removed_and_what_cannot_be_done_safely_waits() {
    let _serial = SERIAL.lock().await;
    let (main, backup, other) = (memcached(), memcached(), memcached());
    // Read on the planting connection, as in the test above.
    let mut probe = plant_old_values(&backup).await;
    let baseline = stat_on(&mut probe, "curr_connections").await;
    drop(probe);
    let proxy = Proxy::start(&[("main", vec![&main])]).await;
    proxy.await_state(&main, "up").await;
    let load = Load::start(&proxy.addr).await;
    load.await_writes(2_000, WAIT * 2, || proxy.log_text())
        .await;

    // One pool: the keys that would move to `other` have no replica to be read from meanwhile.
    proxy.reload(&[("main", vec![&main, &other])]).await;
    let log = proxy.log_text();
    assert!(log.contains("servers and pools not changed"), "{log}");
    assert!(log.contains("needs a restart"), "{log}");
    assert!(
        proxy.line(&other).await.is_empty(),
        "{}",
        proxy.backends().await
    );

    proxy
        .reload(&[("main", vec![&main]), ("backup", vec![&backup])])
        .await;
    proxy.await_state(&backup, "up").await;
    assert_eq!(proxy.warmed(&backup), 1, "{}", proxy.log_text());
    load.await_writes(2_000, WAIT * 2, || proxy.log_text())
        .await;
    // The main server stopped: a change to the backup pool would leave the keys that move
    // with no replica that holds them.
    main.signal(Signal::SIGSTOP).expect("SIGSTOP");
    proxy.await_state(&main, "down").await;
    let refused = proxy
        .log_text()
        .matches("servers and pools not changed")
        .count();
    proxy
        .reload(&[("main", vec![&main]), ("backup", vec![&backup, &other])])
        .await;
    assert_eq!(
        proxy
            .log_text()
            .matches("servers and pools not changed")
            .count(),
        refused + 1,
        "{}",
        proxy.log_text()
    );
    assert!(
        proxy.line(&other).await.is_empty(),
        "{}",
        proxy.backends().await
    );
    main.signal(Signal::SIGCONT).expect("SIGCONT");
    proxy.await_state(&main, "up").await;
    load.await_writes(2_000, WAIT * 2, || proxy.log_text())
        .await;

    std::fs::write(&proxy.file, "[[pools]\nnot toml").expect("write");
    proxy.hangup("configuration not reloaded").await;
    assert!(proxy.line(&backup).await.contains("state=up "));

    proxy.reload(&[("main", vec![&main])]).await;
    assert!(
        proxy.line(&backup).await.is_empty(),
        "{}",
        proxy.backends().await
    );
    await_connections(&backup, baseline, || proxy.log_text()).await;
    load.await_writes(2_000, WAIT * 2, || proxy.log_text())
        .await;
    let (acked, counts) = load.stop().await;
    println!("pool added and removed: {counts}");
    assert_acknowledged(&counts, &acked, &proxy, &main, "on the main server alone").await;
    assert_eq!(
        stat(&other, "total_items").await,
        0,
        "the refused server was written"
    );
}
