//! A returning cache server is never read stale across a real network: hosts in network
//! namespaces (root; CI runs it) with Debian's memcached, `keepcached proxy` and
//! `keepcached vrrp` as separate processes. One scenario cuts the main server's link under load
//! behind one proxy; the other is the seed's pair of hosts, each with a memcached, a proxy and
//! VRRP, where the VIP's holder dies while the main server is stopped. The clients run in this
//! process, on threads moved into a client host's namespace. Each scenario prints its counts
//! (stale reads, lost acknowledged writes) and asserts they are zero.

// Each test binary uses only part of the shared helpers.
#[allow(dead_code)]
mod vrrp_topology;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vrrp_topology::{keepcached, root_or_skip, Topology, VIP};

const PROXY_PORT: u16 = 12000;
const WRITERS: usize = 48;
const CHECKERS: usize = 2;
const KEYS_EACH: usize = 8;
/// Generous: a debug build on two busy cores.
const WAIT: Duration = Duration::from_secs(30);

/// Host `hN`'s address.
fn addr_of(host: &str) -> String {
    format!("198.18.0.{}", &host[1..])
}

fn memcached_at(host: &str) -> String {
    format!("{}:11211", addr_of(host))
}

/// Debian's memcached on `host`:11211.
fn start_memcached(t: &mut Topology, host: &str) -> u32 {
    t.spawn(
        host,
        &format!("{host}-memcached.log"),
        &[
            "memcached",
            "-u",
            "root",
            "-l",
            "0.0.0.0",
            "-p",
            "11211",
            "-U",
            "0",
            "-m",
            "64",
        ],
    )
}

/// `keepcached proxy` on `host` with the main and backup pools, fast timeouts and `listen`.
fn start_proxy(t: &mut Topology, host: &str, main: &str, backup: &str, listen: &[String]) -> u32 {
    let listen = listen
        .iter()
        .map(|l| format!("{l:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let toml = format!(
        r#"listen = [{listen}]
freebind = true
threads = 2

[[pools]]
name = "main"
servers = ["{main}"]

[[pools]]
name = "backup"
servers = ["{backup}"]

[backend]
request_timeout_ms = 300
connect_timeout_ms = 200
health_interval_ms = 200
"#
    );
    let config = t.write(&format!("{host}-proxy.toml"), &toml);
    let exe = keepcached();
    t.spawn(
        host,
        &format!("{host}-proxy.log"),
        &[
            exe.to_str().unwrap(),
            "proxy",
            "--config",
            config.to_str().unwrap(),
            "-D",
        ],
    )
}

/// Our VRRP daemon on `host`, tracking the proxy on the host's own address (v3, 100 ms adverts:
/// a dead master is replaced in well under a second).
fn start_vrrp(t: &mut Topology, host: &str, priority: u8) -> u32 {
    let toml = format!(
        r#"[[instance]]
name = "VI_1"
interface = "eth0"
vrid = 51
priority = {priority}
version = 3
advert_interval = 0.1
vips = [{{ address = "{VIP}/32", label = "eth0:2" }}]
track_proxy = [{{ name = "proxy" }}]

[proxy_check.proxy]
address = "{}:{PROXY_PORT}"
interval = 0.2
timeout = 0.5
fall = 3
"#,
        addr_of(host)
    );
    t.start_vrrpd(host, "--config", &toml)
}

/// Bytes the kernel of `host` still holds unsent or unacknowledged towards `dst`, on any socket
/// (also one its process closed): TCP may yet deliver them.
fn queued_towards(t: &Topology, host: &str, dst: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", &t.ns(host), "ss", "-Htn", "state", "all"])
        .args(["dst", dst])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum()
}

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: &str) -> io::Result<Client> {
        let addr: SocketAddr = addr.parse().expect("an address");
        let stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    /// Connects, retrying until `WAIT` has passed (the server is starting, or the VIP moving).
    async fn reach(addr: &str) -> Client {
        let deadline = Instant::now() + WAIT;
        loop {
            match Client::connect(addr).await {
                Ok(client) => return client,
                Err(e) => assert!(Instant::now() < deadline, "{addr} unreachable: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `request` and reads its reply: to `END` for gets and stats, else one line.
    async fn call(&mut self, request: &str) -> io::Result<String> {
        self.stream.write_all(request.as_bytes()).await?;
        let multi = request.starts_with("get") || request.starts_with("stats");
        loop {
            if let Some(end) = complete(&self.buf, multi) {
                let reply = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end);
                return Ok(reply);
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    async fn get(&mut self, key: &str) -> io::Result<Option<String>> {
        let reply = self.call(&format!("get {key}\r\n")).await?;
        Ok(reply
            .strip_prefix("VALUE ")
            .and_then(|rest| rest.split("\r\n").nth(1))
            .map(str::to_string))
    }
}

/// Where the first whole reply in `buf` ends.
fn complete(buf: &[u8], multi: bool) -> Option<usize> {
    let text = std::str::from_utf8(buf).ok()?;
    if multi {
        for end in ["END\r\n", "ERROR\r\n"] {
            if let Some(at) = text.find(end) {
                if at == 0 || text[..at].ends_with("\r\n") {
                    return Some(at + end.len());
                }
            }
        }
        return None;
    }
    text.find("\r\n").map(|at| at + 2)
}

/// `server`'s line of the proxy's `stats backends`, asked at `proxy`.
async fn backend_line(proxy: &str, server: &str) -> String {
    let Ok(mut client) = Client::connect(proxy).await else {
        return String::new();
    };
    let backends = client.call("stats backends\r\n").await.unwrap_or_default();
    let name = format!("/{server} ");
    backends
        .lines()
        .find(|l| l.contains(&name))
        .unwrap_or("")
        .to_owned()
}

/// Waits until the proxy at `proxy` shows `server` in `state`.
async fn await_state(t: &Topology, proxy: &str, server: &str, state: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let line = backend_line(proxy, server).await;
        if line.contains(&format!(" state={state} ")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{proxy} never showed {server} {state}: {line}\n{}",
            t.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Per key, the version of the last acknowledged write, whether it was a delete, and whether a
/// later write is unsettled (sent and not acknowledged: it may have been applied).
#[derive(Default)]
struct Acked {
    keys: Mutex<HashMap<String, (u64, bool, bool)>>,
}

/// Values are written as `v<version>-<padding>`; each writer's versions only grow.
fn version(value: &str) -> u64 {
    value[1..value.find('-').unwrap()].parse().unwrap()
}

/// A read is stale when it returns a value older than the last acknowledged write, or the value
/// of a key acknowledged deleted. A newer value is from a write not yet acknowledged: fine.
fn stale(read: &Option<String>, acked_version: u64, deleted: bool) -> bool {
    read.as_deref()
        .is_some_and(|v| version(v) < acked_version || (deleted && version(v) <= acked_version))
}

#[derive(Default, Debug)]
struct Counts {
    reads: AtomicU64,
    stale: AtomicU64,
    lost: AtomicU64,
    writes: AtomicU64,
}

/// 48 writers (each owning its keys) set and delete through `proxy`, recording every
/// acknowledged write; 2 checkers read the keys continuously and count stale reads and lost
/// writes (a miss after an acknowledged set, with nothing unsettled). A client whose connection
/// fails stops: its last write stays unsettled.
struct Load {
    acked: Arc<Acked>,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(proxy: &str) -> Load {
        let (acked, counts, stop) = (
            Arc::new(Acked::default()),
            Arc::new(Counts::default()),
            Arc::new(AtomicBool::new(false)),
        );
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut client = Client::reach(proxy).await;
            let (acked, counts, stop) = (acked.clone(), counts.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut version = 0u64;
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("k{w}:{}", i % KEYS_EACH);
                    i += 1;
                    version += 1;
                    let delete = i % 7 == 0;
                    if let Some(entry) = acked.keys.lock().unwrap().get_mut(&key) {
                        entry.2 = true;
                    }
                    let request = if delete {
                        format!("delete {key}\r\n")
                    } else {
                        let value = format!("v{version}-xxxxxxxx");
                        format!("set {key} 0 0 {}\r\n{value}\r\n", value.len())
                    };
                    let Ok(reply) = client.call(&request).await else {
                        break;
                    };
                    if ["STORED\r\n", "DELETED\r\n", "NOT_FOUND\r\n"].contains(&reply.as_str()) {
                        acked
                            .keys
                            .lock()
                            .unwrap()
                            .insert(key, (version, delete, false));
                        counts.writes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for c in 0..CHECKERS {
            let mut client = Client::reach(proxy).await;
            let (acked, counts, stop) = (acked.clone(), counts.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("k{}:{}", i % WRITERS, (i / WRITERS) % KEYS_EACH);
                    i += 1;
                    let before = acked.keys.lock().unwrap().get(&key).copied();
                    let Ok(value) = client.get(&key).await else {
                        break;
                    };
                    let settled = before.is_some_and(|b| !b.2)
                        && acked.keys.lock().unwrap().get(&key).copied() == before;
                    counts.reads.fetch_add(1, Ordering::Relaxed);
                    let Some((acked_version, deleted, _)) = before else {
                        continue;
                    };
                    if stale(&value, acked_version, deleted) {
                        counts.stale.fetch_add(1, Ordering::Relaxed);
                    }
                    if value.is_none() && !deleted && settled {
                        counts.lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Load {
            acked,
            counts,
            stop,
            tasks,
        }
    }

    fn writes(&self) -> u64 {
        self.counts.writes.load(Ordering::Relaxed)
    }

    /// Waits until `more` writes were acknowledged from now on.
    async fn await_writes(&self, t: &Topology, more: u64) {
        let wanted = self.writes() + more;
        let deadline = Instant::now() + WAIT;
        while self.writes() < wanted {
            assert!(
                Instant::now() < deadline,
                "load stalled at {} writes\n{}",
                self.writes(),
                t.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the clients; returns what was acknowledged.
    async fn stop(self) -> (HashMap<String, (u64, bool, bool)>, Arc<Counts>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let acked = self.acked.keys.lock().unwrap().clone();
        (acked, self.counts)
    }
}

/// Reads every acknowledged key at `addr`: (stale reads, lost acknowledged writes).
async fn verify(addr: &str, acked: &HashMap<String, (u64, bool, bool)>) -> (u64, u64) {
    let mut client = Client::reach(addr).await;
    let (mut stale_reads, mut lost) = (0, 0);
    for (key, &(acked_version, deleted, unsettled)) in acked {
        let value = client.get(key).await.expect("a reply");
        stale_reads += u64::from(stale(&value, acked_version, deleted));
        lost += u64::from(value.is_none() && !deleted && !unsettled);
    }
    (stale_reads, lost)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The main server's link is cut under load and restored: it misses writes while unreachable,
/// and TCP may deliver what the proxy sent it before the cut long after the link is back.
#[test]
fn a_cut_off_memcached_is_never_read_stale() {
    if !root_or_skip("a_cut_off_memcached_is_never_read_stale") {
        return;
    }
    let mut t = Topology::new(4);
    let (main, backup, proxy_host) = ("h1", "h2", "h3");
    start_memcached(&mut t, main);
    start_memcached(&mut t, backup);
    let (main_addr, backup_addr) = (memcached_at(main), memcached_at(backup));
    start_proxy(
        &mut t,
        proxy_host,
        &main_addr,
        &backup_addr,
        &[format!("0.0.0.0:{PROXY_PORT}")],
    );
    let proxy = format!("{}:{PROXY_PORT}", addr_of(proxy_host));

    let _client_host = t.enter("h4");
    runtime().block_on(async {
        for server in [&main_addr, &backup_addr] {
            await_state(&t, &proxy, server, "up").await;
        }
        let load = Load::start(&proxy).await;
        load.await_writes(&t, 2_000).await;

        t.link(main, false);
        await_state(&t, &proxy, &main_addr, "down").await;
        load.await_writes(&t, 2_000).await;

        println!("cut off: {}", backend_line(&proxy, &main_addr).await);
        t.link(main, true);
        await_state(&t, &proxy, &main_addr, "up").await;
        println!("back: {}", backend_line(&proxy, &main_addr).await);
        load.await_writes(&t, 2_000).await;
        let (acked, counts) = load.stop().await;

        let (main_stale_early, main_lost_early) = verify(&main_addr, &acked).await;
        // What the proxy sent before the cut and TCP still retransmits must not land after
        // the final reads: wait until nothing is queued towards the main server.
        let drain = Instant::now();
        let deadline = drain + WAIT;
        while queued_towards(&t, proxy_host, &addr_of(main)) > 0 {
            assert!(Instant::now() < deadline, "bytes stay queued to {main}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let drained = drain.elapsed();
        let (proxy_stale, proxy_lost) = verify(&proxy, &acked).await;
        let (main_stale, main_lost) = verify(&main_addr, &acked).await;
        println!(
            "link cut: writes={} reads={} stale_reads={} lost_writes={} keys={} \
             queued_bytes_delivered_in={:?} \
             through_the_proxy: stale={proxy_stale} lost={proxy_lost} \
             on_main_alone_at_once: stale={main_stale_early} lost={main_lost_early} \
             on_main_alone_once_nothing_is_queued_to_it: stale={main_stale} lost={main_lost}",
            counts.writes.load(Ordering::Relaxed),
            counts.reads.load(Ordering::Relaxed),
            counts.stale.load(Ordering::Relaxed),
            counts.lost.load(Ordering::Relaxed),
            acked.len(),
            drained,
        );
        assert_eq!(counts.stale.load(Ordering::Relaxed), 0, "stale reads");
        assert_eq!(counts.lost.load(Ordering::Relaxed), 0, "lost writes");
        assert_eq!(
            (main_stale_early, main_lost_early),
            (0, 0),
            "on the main server"
        );
        assert_eq!(
            (proxy_stale, proxy_lost, main_stale, main_lost),
            (0, 0, 0, 0),
            "through the proxy and on the main server, once nothing is queued to it\n{}",
            t.logs()
        );
    });
}

/// The seed's topology: hosts A and B each run a memcached (main on A, backup on B), a proxy on
/// the VIP and VRRP; a client host writes through the VIP. The main server is stopped while
/// proxy A takes writes, then host A's proxy and VRRP die; proxy B, taking over the VIP, must
/// not serve what only proxy A knew to be stale, not at once and not once the main server is
/// back up, and the main server must not hold it either.
#[test]
fn the_vip_holder_dies_while_main_is_stopped_and_nothing_stale_is_read() {
    if !root_or_skip("the_vip_holder_dies_while_main_is_stopped_and_nothing_stale_is_read") {
        return;
    }
    let mut t = Topology::new(3);
    let (a, b) = ("h1", "h2");
    let main_pid = start_memcached(&mut t, a);
    start_memcached(&mut t, b);
    let (main_addr, backup_addr) = (memcached_at(a), memcached_at(b));
    let vip = format!("{VIP}:{PROXY_PORT}");
    let mut proxy_pids = Vec::new();
    for host in [a, b] {
        let own = format!("{}:{PROXY_PORT}", addr_of(host));
        proxy_pids.push(start_proxy(
            &mut t,
            host,
            &main_addr,
            &backup_addr,
            &[vip.clone(), own],
        ));
    }
    let (proxy_a, proxy_b) = (
        format!("{}:{PROXY_PORT}", addr_of(a)),
        format!("{}:{PROXY_PORT}", addr_of(b)),
    );

    let _client_host = t.enter("h3");
    runtime().block_on(async {
        for proxy in [&proxy_a, &proxy_b] {
            for server in [&main_addr, &backup_addr] {
                await_state(&t, proxy, server, "up").await;
            }
        }
        let vrrp_a = start_vrrp(&mut t, a, 100);
        start_vrrp(&mut t, b, 99);
        t.wait_holder(&[a, b], a, WAIT);

        let load = Load::start(&vip).await;
        load.await_writes(&t, 2_000).await;
        t.signal(main_pid, Signal::SIGSTOP);
        await_state(&t, &proxy_a, &main_addr, "down").await;
        load.await_writes(&t, 2_000).await;
        println!("proxy A: {}", backend_line(&proxy_a, &main_addr).await);

        // Host A dies: no goodbye from its VRRP daemon, and its address goes with it.
        t.signal(vrrp_a, Signal::SIGKILL);
        t.signal(proxy_pids[0], Signal::SIGKILL);
        t.drop_vip(a);
        let (acked, counts) = load.stop().await;
        t.wait_holder(&[a, b], b, WAIT);
        t.signal(main_pid, Signal::SIGCONT);

        println!(
            "proxy B at once: {}",
            backend_line(&proxy_b, &main_addr).await
        );
        let (at_once, at_once_lost) = verify(&vip, &acked).await;
        await_state(&t, &proxy_b, &main_addr, "up").await;
        println!(
            "proxy B once up: {}",
            backend_line(&proxy_b, &main_addr).await
        );
        let (once_up, once_up_lost) = verify(&vip, &acked).await;
        let (on_main, main_misses) = verify(&main_addr, &acked).await;
        println!(
            "VIP holder died: writes={} reads={} stale_reads={} lost_writes={} keys={} \
             through_proxy_b_at_once: stale={at_once} lost={at_once_lost} \
             once_main_is_up: stale={once_up} lost={once_up_lost} \
             on_main_alone: stale={on_main} misses={main_misses}",
            counts.writes.load(Ordering::Relaxed),
            counts.reads.load(Ordering::Relaxed),
            counts.stale.load(Ordering::Relaxed),
            counts.lost.load(Ordering::Relaxed),
            acked.len(),
        );
        assert_eq!(counts.stale.load(Ordering::Relaxed), 0, "stale reads");
        assert_eq!(counts.lost.load(Ordering::Relaxed), 0, "lost writes");
        assert_eq!((at_once, at_once_lost), (0, 0), "proxy B at once");
        assert_eq!((once_up, once_up_lost), (0, 0), "proxy B once main is up");
        assert_eq!(on_main, 0, "stale on the main server");
    });
}
