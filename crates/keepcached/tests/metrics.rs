//! The `--metrics` endpoint of every role, scraped over HTTP as Prometheus would: two cache
//! servers and a proxy on loopback, and (root: CI) a VRRP daemon in a network namespace.
//! Counters move with the traffic, a killed backend shows as down, and every metric the
//! Grafana dashboard (examples/grafana) queries exists in some role's scrape.

// Each test binary uses only part of the shared helpers.
#[allow(dead_code)]
mod vrrp_topology;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use keepcached_testkit::{free_port, keepcached_proxy, keepcached_server, Client, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_keepcached");
const WAIT: Duration = Duration::from_secs(30);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/grafana/keepcached-dashboard.json"
);

/// `GET path` with `accept`; the status line, the headers and the body.
fn get(addr: SocketAddr, path: &str, accept: &str) -> (String, String, String) {
    request(addr, "GET", path, accept)
}

fn request(addr: SocketAddr, method: &str, path: &str, accept: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to the metrics endpoint {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read the response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

/// The metrics in Prometheus's classic text format.
fn scrape(addr: SocketAddr) -> String {
    let (status, headers, body) = get(addr, "/metrics", "text/plain");
    assert_eq!(status, "HTTP/1.1 200 OK", "{headers}\n{body}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    body
}

/// The value of the series written exactly `series` (name and labels), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}

/// Polls `addr` until `series` satisfies `ok`; the last scrape.
fn wait_for(addr: SocketAddr, series: &str, ok: impl Fn(f64) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = scrape(addr);
        if value(&text, series).is_some_and(&ok) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "after {WAIT:?}, {series} is {:?}:\n{text}",
            value(&text, series)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The metric names a scrape declares (`# TYPE`) or has samples of, with a histogram's
/// `_bucket`, `_sum` and `_count` series.
fn names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split(' ');
            let (name, kind) = (words.next().unwrap(), words.next().unwrap_or(""));
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// Every `keepcached_…` name in the dashboard's PromQL expressions (every `expr` field).
fn dashboard_names() -> BTreeSet<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match v {
                        serde_json::Value::String(expr) if key == "expr" => out.push(expr.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(DASHBOARD).expect("the dashboard");
    let json: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    walk(&json, &mut exprs);
    assert!(
        exprs.len() >= 10,
        "the dashboard has {} queries",
        exprs.len()
    );
    let mut names = BTreeSet::new();
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("keepcached_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

/// A free loopback address for a metrics listener.
fn metrics_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().expect("free port")))
}

/// `keepcached server` with `--metrics`; a metrics port taken meanwhile is tried again.
fn server() -> (ServerProcess, SocketAddr) {
    for _ in 0..5 {
        let metrics = metrics_addr();
        let flag = format!("--metrics={metrics}");
        match keepcached_server(Path::new(BIN), &[&flag]) {
            Ok(server) => return (server, metrics),
            Err(e) if e.to_string().contains("in use") => continue,
            Err(e) => panic!("start keepcached server: {e}"),
        }
    }
    panic!("no free metrics port after 5 attempts");
}

/// `keepcached proxy -D` in front of `main` and `backup`, with `--metrics` (testkit's process,
/// killed on drop).
struct Proxy {
    /// Held for its drop, which ends the process.
    _process: ServerProcess,
    addr: SocketAddr,
    metrics: SocketAddr,
}

impl Proxy {
    fn start(main: &ServerProcess, backup: &ServerProcess) -> Proxy {
        let metrics = metrics_addr();
        let (main, backup) = (main.addr().to_string(), backup.addr().to_string());
        let flag = format!("--metrics={metrics}");
        let process = keepcached_proxy(Path::new(BIN), &["-s", &main, "-b", &backup, &flag])
            .expect("start keepcached proxy");
        Proxy {
            addr: process.addr(),
            _process: process,
            metrics,
        }
    }
}

fn call(addr: SocketAddr, request: &str) -> String {
    Client::connect(addr)
        .expect("connect")
        .call(request)
        .unwrap_or_else(|e| panic!("{request:?}: {e}"))
}

#[test]
fn counters_move_with_traffic_and_a_killed_backend_shows_down() {
    let ((mut main, main_metrics), (backup, backup_metrics)) = (server(), server());
    let proxy = Proxy::start(&main, &backup);
    let get_hits = r#"keepcached_server_hits_total{command="get"}"#;
    let gets = r#"keepcached_server_commands_total{command="get"}"#;
    // (The proxy's own checks read the servers too: server counts are compared before and
    // after the requests sent straight to a server, below.)
    let before = scrape(main_metrics);
    assert_eq!(
        value(&before, "keepcached_server_memory_limit_bytes"),
        Some(64.0 * 1024.0 * 1024.0)
    );

    assert_eq!(call(proxy.addr, "set k 0 0 2\r\nhi\r\n"), "STORED\r\n");
    assert_eq!(
        call(proxy.addr, "get k\r\n"),
        "VALUE k 0 2\r\nhi\r\nEND\r\n"
    );
    assert_eq!(call(proxy.addr, "get nothing\r\n"), "END\r\n");

    // The proxy counted the client's commands.
    let p = scrape(proxy.metrics);
    assert_eq!(
        value(&p, r#"keepcached_proxy_commands_total{command="set"}"#),
        Some(1.0),
        "{p}"
    );
    assert_eq!(
        value(&p, r#"keepcached_proxy_commands_total{command="get"}"#),
        Some(2.0)
    );
    assert_eq!(value(&p, "keepcached_proxy_get_hits_total"), Some(1.0));
    assert_eq!(value(&p, "keepcached_proxy_get_misses_total"), Some(1.0));
    let main_up = format!(
        r#"keepcached_proxy_backend_state{{pool="main",backend="{}",state="up"}}"#,
        main.addr()
    );
    assert_eq!(value(&p, &main_up), Some(1.0), "{p}");

    // The set reached both servers; each counts it and holds the item.
    // A server adds a batch's counts to its totals just after writing the batch's replies:
    // a scrape right after the reply may come first, so each figure is waited for.
    for metrics in [main_metrics, backup_metrics] {
        let s = wait_for(
            metrics,
            r#"keepcached_server_commands_total{command="set"}"#,
            |n| n == 1.0,
        );
        assert_eq!(value(&s, "keepcached_server_items"), Some(1.0), "{s}");
        assert!(value(&s, "keepcached_server_memory_used_bytes").unwrap() > 0.0);
    }
    // A server no proxy checks counts exactly what it is sent: a set, a hit and a miss, and
    // the latency histogram counts the three reads that got replies.
    let (lone, lone_metrics) = server();
    let latency = "keepcached_server_request_duration_seconds_count";
    let s = scrape(lone_metrics);
    assert_eq!(value(&s, gets), Some(0.0), "{s}");
    assert_eq!(value(&s, latency), Some(0.0), "{s}");
    assert_eq!(call(lone.addr(), "set k 0 0 2\r\nhi\r\n"), "STORED\r\n");
    assert_eq!(
        call(lone.addr(), "get k\r\n"),
        "VALUE k 0 2\r\nhi\r\nEND\r\n"
    );
    assert_eq!(call(lone.addr(), "get other\r\n"), "END\r\n");
    let s = wait_for(lone_metrics, latency, |n| n >= 3.0);
    assert_eq!(value(&s, get_hits), Some(1.0), "{s}");
    assert_eq!(value(&s, gets), Some(2.0), "{s}");
    assert_eq!(
        value(&s, r#"keepcached_server_misses_total{command="get"}"#),
        Some(1.0)
    );
    assert_eq!(value(&s, latency), Some(3.0), "{s}");
    assert_eq!(
        value(
            &s,
            r#"keepcached_server_request_duration_seconds_bucket{le="+Inf"}"#
        ),
        Some(3.0)
    );
    // `stats reset` zeroes the counters, in the metrics too; the items stay.
    assert!(call(lone.addr(), "stats reset\r\n").starts_with("RESET"));
    let s = scrape(lone_metrics);
    assert_eq!(value(&s, gets), Some(0.0), "{s}");
    assert_eq!(value(&s, "keepcached_server_items"), Some(1.0), "{s}");

    // The main server dies: the proxy marks it down and says so.
    main.kill();
    let main_down = main_up.replace(r#"state="up""#, r#"state="down""#);
    let deadline = Instant::now() + WAIT;
    loop {
        // Writes find the dead server; its failures mark it down.
        let _ = call(proxy.addr, "set k 0 0 2\r\nho\r\n");
        let p = scrape(proxy.metrics);
        if value(&p, &main_down) == Some(1.0) {
            assert_eq!(value(&p, &main_up), Some(0.0), "{p}");
            let errors = format!(
                r#"keepcached_proxy_backend_errors_total{{pool="main",backend="{}"}}"#,
                main.addr()
            );
            assert!(value(&p, &errors).unwrap() > 0.0, "{p}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed server is not down:\n{p}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// `keepcached proxy -D` over the pools `main` and `backup` from a TOML file with `extra`
/// appended (its `[backend]` or `[resync]`), with `--metrics`; the file is removed on drop.
struct FileProxy {
    process: ServerProcess,
    metrics: SocketAddr,
    file: std::path::PathBuf,
}

impl FileProxy {
    fn start(main: &ServerProcess, backup: &ServerProcess, extra: &str) -> FileProxy {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let file = std::env::temp_dir().join(format!(
            "keepcached-metrics-proxy-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(
            &file,
            format!(
                "[[pools]]\nname = \"main\"\nservers = [\"{}\"]\n\
                 [[pools]]\nname = \"backup\"\nservers = [\"{}\"]\n{extra}",
                main.addr(),
                backup.addr()
            ),
        )
        .unwrap();
        let metrics = metrics_addr();
        let flag = format!("--metrics={metrics}");
        let process =
            keepcached_proxy(Path::new(BIN), &["--config", file.to_str().unwrap(), &flag])
                .expect("start keepcached proxy");
        FileProxy {
            process,
            metrics,
            file,
        }
    }

    /// A scrape, once the endpoint (bound just after the proxy's port) accepts.
    fn scrape(&self) -> String {
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect_timeout(&self.metrics, Duration::from_millis(100)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the metrics endpoint never listened"
            );
            thread::sleep(Duration::from_millis(20));
        }
        scrape(self.metrics)
    }
}

impl Drop for FileProxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The sample lines (not `#` lines) of a scrape whose name starts with `prefix`.
fn samples<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// docs/metrics.md: until the proxy serves (it first contacts every server) its scrape is
/// empty. The main server is stopped, so the first contact waits for its `stats` (up to the
/// 5 s request timeout) and the proxy does not serve yet; once it answers, the proxy serves and
/// its first scrape already shows every server's state, none of them `connecting`.
#[test]
fn the_proxy_scrape_is_empty_until_it_serves() {
    let ((main, _), (backup, _)) = (server(), server());
    main.signal(nix::sys::signal::Signal::SIGSTOP).unwrap();
    let proxy = FileProxy::start(&main, &backup, "[backend]\nrequest_timeout_ms = 5000\n");
    let text = proxy.scrape();
    assert_eq!(
        samples(&text, "keepcached_proxy_"),
        Vec::<&str>::new(),
        "before the first contact ended:\n{text}"
    );
    // No client has been served: the proxy's port accepts (it is bound) but nothing answers.
    let mut client = proxy.process.connect().expect("connect to the proxy");
    client.set_timeout(Duration::from_millis(300));
    assert!(
        client.call("version\r\n").is_err(),
        "served during the first contact"
    );
    assert_eq!(samples(&proxy.scrape(), "keepcached_proxy_").len(), 0);

    main.signal(nix::sys::signal::Signal::SIGCONT).unwrap();
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = proxy.scrape();
        if !samples(&text, "keepcached_proxy_").is_empty() {
            break text;
        }
        assert!(Instant::now() < deadline, "the proxy never showed:\n{text}");
        thread::sleep(Duration::from_millis(20));
    };
    for (pool, server) in [("main", &main), ("backup", &backup)] {
        let state = |state: &str| {
            format!(
                r#"keepcached_proxy_backend_state{{pool="{pool}",backend="{}",state="{state}"}}"#,
                server.addr()
            )
        };
        assert_eq!(value(&text, &state("up")), Some(1.0), "{text}");
        assert_eq!(value(&text, &state("connecting")), Some(0.0), "{text}");
    }
    let mut client = proxy.process.connect().expect("connect to the proxy");
    assert!(client.call("version\r\n").unwrap().starts_with("VERSION "));
}

/// docs/metrics.md: the warm-up gauges have a series only for a server that is warming now.
/// The main server restarts empty beside a backup holding 600 items, copied at 200 a second:
/// its series appear while it warms (and the backup's never), and are gone once it is up.
#[test]
fn warmup_gauges_have_series_only_while_a_server_warms() {
    let ((mut main, _), (backup, _)) = (server(), server());
    let proxy = FileProxy::start(&main, &backup, "[resync]\nwarmup_items_per_sec = 200\n");
    let mut client = proxy.process.connect().expect("connect to the proxy");
    for i in 0..600 {
        assert_eq!(
            client.call(&format!("set w{i} 0 0 1\r\nx\r\n")).unwrap(),
            "STORED\r\n"
        );
    }
    let warmup = "keepcached_proxy_backend_warmup_";
    let text = proxy.scrape();
    assert!(!samples(&text, "keepcached_proxy_").is_empty(), "{text}");
    assert_eq!(samples(&text, warmup), Vec::<&str>::new(), "{text}");

    main.restart().expect("restart the main server");
    let main_label = format!(r#"{{pool="main",backend="{}"}}"#, main.addr());
    let state = |state: &str| {
        format!(
            r#"keepcached_proxy_backend_state{{pool="main",backend="{}",state="{state}"}}"#,
            main.addr()
        )
    };
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = proxy.scrape();
        if value(&text, &state("warming")) == Some(1.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "never warming:\n{text}");
        thread::sleep(Duration::from_millis(20));
    };
    let series = samples(&text, warmup);
    for gauge in [
        "listed_keys",
        "source_keys",
        "copied_keys",
        "copied_bytes",
        "progress_ratio",
    ] {
        let name = format!("{warmup}{gauge}{main_label}");
        assert!(value(&text, &name).is_some(), "no {name}:\n{text}");
    }
    assert_eq!(series.len(), 5, "only the warming server's:\n{text}");
    assert!(
        value(&text, &format!("{warmup}source_keys{main_label}")).unwrap() >= 600.0,
        "{text}"
    );

    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = proxy.scrape();
        if value(&text, &state("up")) == Some(1.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "never up again:\n{text}");
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(samples(&text, warmup), Vec::<&str>::new(), "{text}");
}

#[test]
fn the_endpoint_speaks_http_as_a_scraper_expects() {
    let (_server, metrics) = server();
    let (status, headers, body) = get(
        metrics,
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{headers}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE keepcached_server_evictions counter\n"));
    let (status, _, _) = get(metrics, "/", "*/*");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, headers, _) = request(metrics, "POST", "/metrics", "*/*");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(
        headers.to_ascii_lowercase().contains("allow: get, head"),
        "{headers}"
    );
    let (status, _, body) = request(metrics, "HEAD", "/metrics", "*/*");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, "", "HEAD has no body");
}

/// The listener is bound before `-d` daemonizes: a port in use fails in the foreground.
#[test]
fn a_metrics_address_in_use_fails_before_daemonizing() {
    let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let taken = taken.local_addr().unwrap();
    let port = free_port().unwrap().to_string();
    let out = Command::new(BIN)
        .args([
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
        ])
        .arg(format!("--metrics={taken}"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(71),
        "EX_OSERR, as for the server's own port"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics") && err.contains("in use"), "{err}");
}

/// Parses stdin with the official Prometheus client's parser (Debian's python3-prometheus-client),
/// the classic one or the strict OpenMetrics one; prints `families samples`.
const PARSE: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families as text
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
parse = om if sys.argv[1] == "openmetrics" else text
families = list(parse(sys.stdin.read()))
print(len(families), sum(len(f.samples) for f in families))
"#;

/// Debian's python, which has Debian's modules (a python3 earlier in PATH may not).
const PYTHON: &str = "/usr/bin/python3";

#[test]
fn both_formats_parse_with_the_prometheus_client() {
    if !keepcached_testkit::env::require(
        "both_formats_parse_with_the_prometheus_client",
        false,
        &[PYTHON],
    ) {
        return;
    }
    let ((main, main_metrics), (backup, _)) = (server(), server());
    let proxy = Proxy::start(&main, &backup);
    assert_eq!(call(proxy.addr, "set k 0 0 2\r\nhi\r\n"), "STORED\r\n");
    for addr in [main_metrics, proxy.metrics] {
        for (format, accept) in [
            ("text", "text/plain"),
            ("openmetrics", "application/openmetrics-text; version=1.0.0"),
        ] {
            let (status, _, body) = get(addr, "/metrics", accept);
            assert_eq!(status, "HTTP/1.1 200 OK");
            let mut python = Command::new(PYTHON)
                .args(["-c", PARSE, format])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("python3");
            python
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
            let out = python.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{format} from {addr} does not parse: {}\n{body}",
                String::from_utf8_lossy(&out.stderr)
            );
            let counts = String::from_utf8_lossy(&out.stdout);
            let families: usize = counts.split(' ').next().unwrap().parse().unwrap();
            assert!(families >= 20, "{format} from {addr}: {counts}");
        }
    }
}

#[test]
fn a_bad_metrics_address_is_a_usage_error() {
    for role in [
        &["server", "-u", "root", "--metrics", "localhost"][..],
        &[
            "proxy",
            "-s",
            "127.0.0.1:11211",
            "--metrics",
            "127.0.0.1:notaport",
        ],
    ] {
        let out = Command::new(BIN).args(role).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{role:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--metrics"), "{role:?}: {err}");
    }
}

#[test]
fn every_metric_the_dashboard_queries_exists() {
    if !vrrp_topology::root_or_skip("every_metric_the_dashboard_queries_exists") {
        return;
    }
    let ((main, main_metrics), (backup, _)) = (server(), server());
    let proxy = Proxy::start(&main, &backup);
    assert_eq!(call(proxy.addr, "set k 0 0 2\r\nhi\r\n"), "STORED\r\n");

    let mut t = vrrp_topology::Topology::new(1);
    let config = t.write("h1.toml", &vrrp_topology::v3_instance(100));
    let vrrp_metrics: SocketAddr = "198.18.0.1:9150".parse().unwrap();
    let flag = format!("--metrics={vrrp_metrics}");
    t.spawn(
        "h1",
        "h1-vrrpd.log",
        &[BIN, "vrrp", "--config", config.to_str().unwrap(), &flag],
    );
    let vrrp = {
        let _inside = t.enter("h1");
        let master = r#"keepcached_vrrp_state{instance="VI_1",state="master"}"#;
        let text = wait_until(vrrp_metrics, master, 1.0, &t);
        for state in ["backup", "fault", "init"] {
            let series = format!(r#"keepcached_vrrp_state{{instance="VI_1",state="{state}"}}"#);
            assert_eq!(value(&text, &series), Some(0.0), "{text}");
        }
        assert_eq!(
            value(&text, r#"keepcached_vrrp_vips_held{instance="VI_1"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(&text, r#"keepcached_vrrp_priority{instance="VI_1"}"#),
            Some(100.0)
        );
        assert!(
            value(
                &text,
                r#"keepcached_vrrp_transitions_total{instance="VI_1"}"#
            )
            .unwrap()
                >= 1.0
        );
        // A master advertises every 0.1 s.
        wait_for(
            vrrp_metrics,
            r#"keepcached_vrrp_adverts_sent_total{instance="VI_1"}"#,
            |n| n >= 3.0,
        )
    };
    assert!(t.has_vip("h1"), "{}", t.logs());

    let mut scraped = names(&scrape(main_metrics));
    scraped.extend(names(&scrape(proxy.metrics)));
    scraped.extend(names(&vrrp));
    let wanted = dashboard_names();
    let missing: Vec<_> = wanted.difference(&scraped).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no role serves: {missing:?}"
    );
    eprintln!(
        "the dashboard's {} metric names all exist in the scrapes",
        wanted.len()
    );
}

/// Scrapes `addr` (from inside a namespace that reaches it) until `series` is `want`.
fn wait_until(addr: SocketAddr, series: &str, want: f64, t: &vrrp_topology::Topology) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .ok()
            .map(|_| scrape(addr));
        if let Some(text) = text.filter(|text| value(text, series) == Some(want)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is not {want} after {WAIT:?}:\n{}",
            t.logs()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Two daemons: the backup counts the master's adverts; the master stops and the backup's
/// state flips to master, with one more transition and the VIP held.
#[test]
fn vrrp_state_flips_on_failover() {
    if !vrrp_topology::root_or_skip("vrrp_state_flips_on_failover") {
        return;
    }
    let mut t = vrrp_topology::Topology::new(2);
    let mut pids = Vec::new();
    for (host, priority) in [("h1", 100), ("h2", 99)] {
        let config = t.write(
            &format!("{host}.toml"),
            &vrrp_topology::v3_instance(priority),
        );
        let flag = format!("--metrics=198.18.0.{}:9150", &host[1..]);
        pids.push(t.spawn(
            host,
            &format!("{host}-vrrpd.log"),
            &[BIN, "vrrp", "--config", config.to_str().unwrap(), &flag],
        ));
    }
    let (h1, h2): (SocketAddr, SocketAddr) = (
        "198.18.0.1:9150".parse().unwrap(),
        "198.18.0.2:9150".parse().unwrap(),
    );
    let state = |s: &str| format!(r#"keepcached_vrrp_state{{instance="VI_1",state="{s}"}}"#);
    let received = r#"keepcached_vrrp_adverts_accepted_total{instance="VI_1"}"#;
    let transitions = r#"keepcached_vrrp_transitions_total{instance="VI_1"}"#;
    let vips = r#"keepcached_vrrp_vips_held{instance="VI_1"}"#;
    let inside = t.enter("h1");
    wait_until(h1, &state("master"), 1.0, &t);
    let backup = wait_until(h2, &state("backup"), 1.0, &t);
    assert_eq!(value(&backup, vips), Some(0.0), "{backup}");
    let before = value(&backup, transitions).unwrap();
    // The backup counts the master's adverts (10 a second).
    wait_for(h2, received, |n| n >= 5.0);
    let total = r#"keepcached_vrrp_adverts_received_total{instance="VI_1"}"#;
    let backup = scrape(h2);
    assert!(value(&backup, total).unwrap() >= value(&backup, received).unwrap());
    drop(inside);

    t.signal(pids[0], nix::sys::signal::Signal::SIGTERM);
    let inside = t.enter("h2");
    let master = wait_until(h2, &state("master"), 1.0, &t);
    assert_eq!(value(&master, &state("backup")), Some(0.0), "{master}");
    assert_eq!(value(&master, transitions), Some(before + 1.0), "{master}");
    assert_eq!(value(&master, vips), Some(1.0), "{master}");
    drop(inside);
    assert!(t.has_vip("h2"), "{}", t.logs());
}

/// `keepcached node` with a top-level `metrics` key: one endpoint serves the node's server
/// and proxy; a bad value is refused (64) naming the key.
#[test]
fn a_node_serves_every_role_on_one_endpoint() {
    let dir = std::env::temp_dir().join(format!("keepcached-metrics-node-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (server_port, proxy_port) = (free_port().unwrap(), free_port().unwrap());
    let metrics = metrics_addr();
    let config = dir.join("node.toml");
    let toml = |metrics: &str| {
        format!(
            "metrics = \"{metrics}\"\n\
             [server]\nlisten = [\"127.0.0.1\"]\nport = {server_port}\nmemory_limit = \"16m\"\n\
             [proxy]\nlisten = [\"127.0.0.1:{proxy_port}\"]\nthreads = 1\n\
             pools = [{{ name = \"main\", servers = [\"127.0.0.1:{server_port}\"] }}]\n"
        )
    };
    std::fs::write(&config, toml("127.0.0.1")).unwrap();
    let out = Command::new(BIN)
        .args(["node", "--check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("metrics") && err.contains("ADDR:PORT"),
        "{err}"
    );

    std::fs::write(&config, toml(&metrics.to_string())).unwrap();
    let mut node = Command::new(BIN)
        .args(["node", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start keepcached node");
    struct Kill<'a>(&'a mut Child, &'a Path);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(self.1);
        }
    }
    let _node = Kill(&mut node, &dir);
    let proxy = SocketAddr::from((Ipv4Addr::LOCALHOST, proxy_port));
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect_timeout(&proxy, Duration::from_millis(100)).is_err() {
        assert!(Instant::now() < deadline, "the node's proxy never listened");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(call(proxy, "set k 0 0 2\r\nhi\r\n"), "STORED\r\n");
    wait_for(
        metrics,
        r#"keepcached_proxy_commands_total{command="set"}"#,
        |n| n == 1.0,
    );
    // Each role counts on its own threads: the server's count may be published a moment after
    // the proxy passed its reply on.
    wait_for(
        metrics,
        r#"keepcached_server_commands_total{command="set"}"#,
        |n| n == 1.0,
    );
    // The node's server measures latency when metrics are on.
    let text = wait_for(
        metrics,
        "keepcached_server_request_duration_seconds_count",
        |n| n >= 1.0,
    );
    let up = format!(
        r#"keepcached_proxy_backend_state{{pool="main",backend="127.0.0.1:{server_port}",state="up"}}"#
    );
    assert_eq!(value(&text, &up), Some(1.0), "{text}");
}
