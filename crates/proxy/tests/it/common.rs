//! Helpers for the proxy's integration tests: real backend processes on free loopback ports
//! (killed by pid when dropped, also while a failing test unwinds), the proxy running in-process,
//! and a small text-protocol client with a timeout on every wait.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keepcached_protocol::response::{parse_response, Response};
use keepcached_proxy::{BackendConfig, PoolConfig, ProxyConfig, ReplicationConfig, ResyncConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every wait in a test is bounded by this, so a broken proxy fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A child process (memcached, nutcracker) killed with SIGKILL by pid on drop.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    pub port: u16,
    pub label: String,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends a signal to exactly this process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} {}", self.pid());
    }

    /// SIGKILL and reap now.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process ignores nothing but SIGKILL, which also ends it; SIGCONT first
            // only keeps the kernel from holding it stopped while it is reaped.
            let _ = Command::new("kill")
                .args(["-s", "CONT", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        self.kill();
    }
}

fn wait_listening(process: &mut Process) {
    let deadline = Instant::now() + WAIT;
    let addr: SocketAddr = process.addr().parse().unwrap();
    loop {
        if let Some(Ok(Some(status))) = process.child.as_mut().map(|c| c.try_wait()) {
            panic!("{} exited early: {status}", process.label);
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never listened",
            process.label
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Debian's memcached: `memcached -u root -l 127.0.0.1 -p PORT -U 0` on a free port.
pub fn memcached() -> Process {
    memcached_with(&[])
}

/// [`memcached`] with more flags.
pub fn memcached_with(extra: &[&str]) -> Process {
    for _ in 0..8 {
        if let Some(process) = try_memcached(free_port(), extra) {
            return process;
        }
    }
    panic!("could not start memcached on a free port");
}

/// memcached on a given port (a server restarted where it was).
pub fn memcached_on(port: u16) -> Process {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(process) = try_memcached(port, &[]) {
            return process;
        }
        assert!(Instant::now() < deadline, "port {port} never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn try_memcached(port: u16, extra: &[&str]) -> Option<Process> {
    let child = Command::new("memcached")
        .args([
            "-u",
            "root",
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start memcached");
    let mut process = Process {
        child: Some(child),
        port,
        label: format!("memcached :{port}"),
    };
    std::thread::sleep(Duration::from_millis(30));
    // A port already taken makes memcached exit at once.
    if matches!(process.child.as_mut().unwrap().try_wait(), Ok(Some(_))) {
        process.child = None;
        return None;
    }
    wait_listening(&mut process);
    Some(process)
}

/// keepcached's own server, in this test's runtime on a free loopback port, stopped on drop.
pub struct OwnServer {
    pub port: u16,
    stop: tokio::sync::watch::Sender<bool>,
    _task: JoinHandle<Result<(), std::io::Error>>,
}

impl OwnServer {
    pub async fn start() -> OwnServer {
        let settings = keepcached_server::Settings {
            port: free_port(),
            listen: vec![std::net::Ipv4Addr::LOCALHOST.into()],
            threads: 2,
            ..keepcached_server::Settings::default()
        };
        let port = settings.port;
        let listeners = keepcached_server::Listeners::bind(&settings).expect("bind the server");
        let server = keepcached_server::Server::new(settings);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(keepcached_server::listener::serve(
            server, listeners, stopped,
        ));
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "the server never listened");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        OwnServer {
            port,
            stop,
            _task: task,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// nutcracker with one pool (`hash: md5`, `distribution: ketama`) over `servers`, written as
/// twemproxy expects them (`host:port:weight [name]`).
pub fn nutcracker(servers: &[String]) -> (Process, tempdir::TempDir) {
    let dir = tempdir::TempDir::new("nutcracker");
    let port = free_port();
    let stats_port = free_port();
    let mut yaml = format!(
        "pool:\n  listen: 127.0.0.1:{port}\n  hash: md5\n  distribution: ketama\n  \
         auto_eject_hosts: false\n  timeout: 2000\n  servers:\n"
    );
    for s in servers {
        yaml.push_str(&format!("   - {s}\n"));
    }
    let conf = dir.path.join("nutcracker.yml");
    std::fs::write(&conf, yaml).unwrap();
    let child = Command::new("nutcracker")
        .arg("-c")
        .arg(&conf)
        .args(["-s", &stats_port.to_string(), "-a", "127.0.0.1"])
        .arg("-p")
        .arg(dir.path.join("pid"))
        .arg("-o")
        .arg(dir.path.join("log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nutcracker");
    let mut process = Process {
        child: Some(child),
        port,
        label: format!("nutcracker :{port}"),
    };
    wait_listening(&mut process);
    (process, dir)
}

pub mod tempdir {
    use std::path::PathBuf;

    /// A directory under the system temp dir, removed on drop.
    #[derive(Debug)]
    pub struct TempDir {
        pub path: PathBuf,
    }

    impl TempDir {
        pub fn new(label: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "keepcached-proxy-{label}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            TempDir { path }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A configuration over the given pools with test-friendly timeouts.
pub fn config(pools: &[&[&Process]]) -> ProxyConfig {
    ProxyConfig {
        listen: vec![format!("127.0.0.1:{}", free_port())],
        unix_socket: None,
        max_connections: 1000,
        pools: pools
            .iter()
            .enumerate()
            .map(|(i, servers)| PoolConfig {
                name: format!("pool{i}"),
                servers: servers.iter().map(|s| s.addr()).collect(),
            })
            .collect(),
        backend: BackendConfig {
            request_timeout_ms: 300,
            connect_timeout_ms: 200,
            ..BackendConfig::default()
        },
        replication: ReplicationConfig::default(),
        resync: ResyncConfig::default(),
        drain_timeout_ms: 2_000,
        item_size_max: 1024 * 1024,
        client_reply_budget: 16 * 1024 * 1024,
        freebind: false,
        // More than one, so that requests and their replicas cross worker threads.
        threads: 2,
    }
}

/// The proxy running in this test's runtime; shut down and drained on [`ProxyHandle::stop`].
pub struct ProxyHandle {
    pub addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), keepcached_proxy::ProxyError>>>,
}

impl ProxyHandle {
    pub async fn start(config: ProxyConfig) -> ProxyHandle {
        let addr = config.listen[0].clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(keepcached_proxy::run(config, async {
            let _ = stopped.await;
        }));
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(&addr).await.is_err() {
            assert!(!task.is_finished(), "proxy exited: {:?}", task.await);
            assert!(Instant::now() < deadline, "proxy never listened on {addr}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ProxyHandle {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.addr).await
    }

    /// Waits until `stats backends` shows every server up (an empty server beside a full one
    /// is warmed first).
    pub async fn await_all_up(&self) {
        let mut client = self.client().await;
        let deadline = Instant::now() + WAIT;
        loop {
            let backends = client.call("stats backends\r\n").await;
            if backends
                .lines()
                .all(|l| l == "END" || l.contains(" state=up "))
            {
                return;
            }
            assert!(Instant::now() < deadline, "not all up: {backends}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("proxy drained in time")
            .expect("proxy task")
            .expect("proxy run");
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A text-protocol client; each call sends a request and reads its whole reply.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: &str) -> Client {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends `request` and returns the reply, read until it is complete: up to `END` for the
    /// get family and `stats`, else one line (with its data block).
    pub async fn call(&mut self, request: &str) -> String {
        self.send(request.as_bytes()).await;
        let multi = ["get ", "gets ", "gat ", "gats ", "stats"]
            .iter()
            .any(|p| request.starts_with(p));
        self.read_reply(multi).await
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(WAIT, self.stream.write_all(bytes))
            .await
            .expect("write in time")
            .expect("write");
    }

    /// Reads one reply; `multi` replies end at `END` (or an error line).
    pub async fn read_reply(&mut self, multi: bool) -> String {
        let mut at = 0;
        loop {
            match parse_response(&self.buf[at..]) {
                Ok(parsed) => {
                    at += parsed.consumed;
                    let done = match parsed.response {
                        Response::Value { .. } | Response::Stat { .. } => !multi,
                        _ => true,
                    };
                    if done {
                        let reply = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                        self.buf.drain(..at);
                        return reply;
                    }
                }
                Err(_) => {
                    self.buf.reserve(64 * 1024);
                    let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                        .await
                        .expect("reply in time")
                        .expect("read");
                    assert!(
                        n > 0,
                        "connection closed; had {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                }
            }
        }
    }

    /// `set key 0 0 len\r\nvalue\r\n` and its reply.
    pub async fn set(&mut self, key: &str, value: &str) -> String {
        self.call(&format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()))
            .await
    }

    /// The value of `key`, or `None` on a miss.
    pub async fn get(&mut self, key: &str) -> Option<String> {
        let reply = self.call(&format!("get {key}\r\n")).await;
        value_of(&reply)
    }

    /// A counter of `stats` (of a backend asked directly).
    pub async fn stat(&mut self, name: &str) -> u64 {
        let stats = self.call("stats\r\n").await;
        let prefix = format!("STAT {name} ");
        stats
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
    }

    /// Polls a backend's `curr_connections` until it is at least `wanted` (for up to five
    /// seconds) and returns the last count seen.
    pub async fn await_connections(&mut self, wanted: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.stat("curr_connections").await;
            if now >= wanted || Instant::now() >= deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The data of the first `VALUE` in a reply.
pub fn value_of(reply: &str) -> Option<String> {
    if reply == "END\r\n" {
        return None;
    }
    let mut lines = reply.split("\r\n");
    let header = lines.next()?;
    assert!(header.starts_with("VALUE "), "unexpected reply {reply:?}");
    lines.next().map(str::to_string)
}

/// A unique path for a unix socket or file.
pub fn temp_path(label: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "keepcached-proxy-{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A TCP relay in front of a server: the tests' network fault injector. It forwards bytes both
/// ways, except on the first connection, after [`Relay::arm`], whose bytes towards the server
/// contain the marker: from the marker on, what the client sends there is held back (as a
/// stopped or starved server leaves it in its socket) until [`Relay::release`], then delivered
/// in order, and an end the client made meanwhile (an orderly close or a reset) after it. The
/// server behind it is a real one; the relay only delays bytes.
pub struct Relay {
    pub port: u16,
    shared: std::sync::Arc<RelayShared>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct RelayShared {
    armed: std::sync::Mutex<Option<Vec<u8>>>,
    held: std::sync::Mutex<Vec<u8>>,
    released: tokio::sync::Notify,
    is_released: std::sync::atomic::AtomicBool,
    /// The server closed the held connection (after the held bytes and the client's end).
    finished: std::sync::atomic::AtomicBool,
}

impl Relay {
    /// Relays a free loopback port to `upstream`.
    pub async fn start(upstream: String) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = std::sync::Arc::new(RelayShared::default());
        let task = {
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    tokio::spawn(relay_one(client, server, shared.clone()));
                }
            })
        };
        Relay { port, shared, task }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Holds the first connection that sends `marker` from there on.
    pub fn arm(&self, marker: &[u8]) {
        *self.shared.armed.lock().unwrap() = Some(marker.to_vec());
    }

    /// What is held back so far.
    pub fn held(&self) -> Vec<u8> {
        self.shared.held.lock().unwrap().clone()
    }

    /// Delivers what was held, and the client's end of that connection if it made one.
    pub fn release(&self) {
        self.shared
            .is_released
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.released.notify_waiters();
    }

    /// Whether the server closed the held connection.
    pub fn finished(&self) -> bool {
        self.shared
            .finished
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.release();
    }
}

async fn relay_one(client: TcpStream, server: TcpStream, shared: std::sync::Arc<RelayShared>) {
    use std::sync::atomic::Ordering;
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let held_here = std::sync::atomic::AtomicBool::new(false);
    let towards_server = async {
        let mut buf = vec![0u8; 64 * 1024];
        // The tail of the previous read, so a marker split between reads is found.
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let n = match client_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            if held_here.load(Ordering::SeqCst) {
                shared.held.lock().unwrap().extend_from_slice(chunk);
                continue;
            }
            let found = {
                let mut armed = shared.armed.lock().unwrap();
                let at = armed.as_ref().and_then(|marker| {
                    let mut seen = tail.clone();
                    seen.extend_from_slice(chunk);
                    seen.windows(marker.len())
                        .position(|w| w == &marker[..])
                        .map(|at| at.saturating_sub(tail.len()))
                });
                if at.is_some() {
                    *armed = None;
                }
                at
            };
            match found {
                Some(at) => {
                    held_here.store(true, Ordering::SeqCst);
                    shared.held.lock().unwrap().extend_from_slice(&chunk[at..]);
                    if server_wr.write_all(&chunk[..at]).await.is_err() {
                        break;
                    }
                }
                None => {
                    if server_wr.write_all(chunk).await.is_err() {
                        break;
                    }
                    tail = chunk[chunk.len().saturating_sub(64)..].to_vec();
                }
            }
        }
        if held_here.load(Ordering::SeqCst) {
            loop {
                let released = shared.released.notified();
                if shared.is_released.load(Ordering::SeqCst) {
                    break;
                }
                released.await;
            }
            let held = std::mem::take(&mut *shared.held.lock().unwrap());
            let _ = server_wr.write_all(&held).await;
        }
        let _ = server_wr.shutdown().await;
    };
    let towards_client = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = server_rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
            // A client that reset its end is gone; what the server says is read to its end
            // all the same.
            let _ = client_wr.write_all(&buf[..n]).await;
        }
        let _ = client_wr.shutdown().await;
    };
    tokio::join!(towards_server, towards_client);
    if held_here.load(Ordering::SeqCst) {
        shared.finished.store(true, Ordering::SeqCst);
    }
}
