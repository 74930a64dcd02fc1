//! Asking one target for its figures: a memcached-protocol target (`host:port`: a cache server,
//! memcached itself, or a keepcached proxy) over a connection kept open between samples, or a
//! Prometheus endpoint (`http://host:port[/path]`) with one HTTP/1.0 GET per sample.
//!
//! A proxy is told from a server by `stats backends`: a keepcached proxy lists its servers,
//! memcached and our server answer `ERROR`. Every call has a deadline, so one target that hangs
//! costs a sample at most [`TIMEOUT`], and the targets are asked in parallel (`sample_all`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::Serialize;

use super::prometheus;

/// How long a target may take to accept a connection or to answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// A target as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `host:port`, spoken to in the memcached text protocol.
    Memcache(String),
    /// `http://host:port/path`: `authority` is `host:port`, `path` defaults to `/metrics`.
    Metrics { authority: String, path: String },
}

impl Target {
    /// `host:port` or `http://host:port[/path]`; anything else is a usage error's text.
    pub fn parse(text: &str) -> Result<Target, String> {
        if let Some(rest) = text.strip_prefix("http://") {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/metrics"),
            };
            if !has_port(authority) {
                return Err(format!(
                    "{text:?}: a metrics address is http://HOST:PORT[/PATH] (the port is needed)"
                ));
            }
            return Ok(Target::Metrics {
                authority: authority.to_string(),
                path: path.to_string(),
            });
        }
        if text.contains("://") {
            return Err(format!(
                "{text:?}: only http:// metrics endpoints and HOST:PORT memcached addresses are \
                 understood"
            ));
        }
        if !has_port(text) {
            return Err(format!("{text:?}: an address is HOST:PORT"));
        }
        Ok(Target::Memcache(text.to_string()))
    }

    /// The target as the operator wrote it, to name it in the table.
    pub fn name(&self) -> String {
        match self {
            Target::Memcache(addr) => addr.clone(),
            Target::Metrics { authority, path } => format!("http://{authority}{path}"),
        }
    }
}

/// Whether `authority` ends in `:PORT` with a number (an IPv6 literal is `[addr]:port`).
fn has_port(authority: &str) -> bool {
    authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// A cache server's figures, from its `stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerFigures {
    pub version: String,
    pub uptime_s: u64,
    pub items: u64,
    /// Bytes of items held, and the memory limit (`-m`), as memcached counts them.
    pub bytes: u64,
    pub limit_bytes: u64,
    pub get_hits: u64,
    pub get_misses: u64,
    /// `get_hits / (get_hits + get_misses)` since the server started; none before any get.
    pub hit_ratio: Option<f64>,
    pub evictions: u64,
    pub connections: u64,
    /// Requests as memcached counts them (each key of a multi-get): the rate's numerator.
    pub ops: u64,
}

/// A proxy's figures, from `stats` and `stats backends`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProxyFigures {
    pub version: String,
    pub uptime_s: u64,
    /// Whether the proxy served clients lately (a standby proxy on a VRRP backup does not).
    pub serving: bool,
    /// Whether another proxy's serving heartbeat is on the servers (docs/resync.md).
    pub other_proxy_serving: bool,
    pub connections: u64,
    pub get_hits: u64,
    pub get_misses: u64,
    pub hit_ratio: Option<f64>,
    pub ops: u64,
    pub backends: Vec<BackendFigures>,
}

/// One server as a proxy sees it: a line of `stats backends`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BackendFigures {
    pub pool: String,
    pub addr: String,
    /// connecting, up, suspect, warming, down or drained (docs/resync.md).
    pub state: String,
    /// Seconds in that state.
    pub state_s: u64,
    pub requests: u64,
    pub errors: u64,
    pub timeouts: u64,
    /// Average of the answered calls since the proxy started.
    pub avg_latency_us: u64,
    pub missed_keys: u64,
    /// Warm-up progress in percent and its estimated time left, while one runs.
    pub warm_pct: Option<u64>,
    pub warm_eta_s: Option<u64>,
}

/// What one sample of a target found.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    Server(ServerFigures),
    Proxy(ProxyFigures),
    Node(Vec<prometheus::VrrpInstance>),
    Unreachable(String),
}

/// Asks one target, keeping a memcached-protocol connection open for the next sample.
#[derive(Debug)]
pub struct Probe {
    pub target: Target,
    conn: Option<BufReader<TcpStream>>,
}

impl Probe {
    pub fn new(target: Target) -> Probe {
        Probe { target, conn: None }
    }

    /// One sample; a failure drops the connection (the next sample connects again) and is
    /// reported as the target being unreachable, with the reason.
    pub fn sample(&mut self) -> Sample {
        let result = match self.target.clone() {
            Target::Memcache(addr) => self.sample_memcache(&addr),
            Target::Metrics { authority, path } => scrape(&authority, &path).and_then(|text| {
                let instances = prometheus::vrrp_instances(&text);
                if instances.is_empty() {
                    // A server's or a proxy's own endpoint: their figures come from their
                    // client port, which says more (backends, items) than their metrics.
                    Err(format!(
                        "no keepcached_vrrp_state metric at {path}: a metrics address is read \
                         for VRRP; give a server or proxy as HOST:PORT of its client port"
                    ))
                } else {
                    Ok(Sample::Node(instances))
                }
            }),
        };
        result.unwrap_or_else(Sample::Unreachable)
    }

    /// Over the connection kept from the last sample, or a new one; a kept connection that
    /// fails (the target restarted since) is replaced once, so a target that is back is not
    /// shown unreachable for a sample.
    fn sample_memcache(&mut self, addr: &str) -> Result<Sample, String> {
        if let Some(mut conn) = self.conn.take() {
            if let Ok(sample) = ask(&mut conn) {
                self.conn = Some(conn);
                return Ok(sample);
            }
        }
        let mut conn = BufReader::new(connect(addr)?);
        let sample = ask(&mut conn)?;
        self.conn = Some(conn);
        Ok(sample)
    }
}

/// `stats`, then `stats backends` to tell a proxy from a server.
fn ask(conn: &mut BufReader<TcpStream>) -> Result<Sample, String> {
    let general = stats(conn, "stats")?.ok_or("stats: answered ERROR")?;
    Ok(match stats(conn, "stats backends")? {
        None => Sample::Server(server_figures(&general)),
        Some(backends) => Sample::Proxy(proxy_figures(&general, &backends)),
    })
}

/// The longest `STAT` line read, the most lines in one answer, and the largest metrics page.
const MAX_LINE: u64 = 64 * 1024;
const MAX_LINES: usize = 100_000;
const MAX_SCRAPE: u64 = 16 * 1024 * 1024;

fn connect(authority: &str) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .collect();
    let mut last = format!("{authority} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, TIMEOUT) {
            Ok(stream) => {
                let _ = stream.set_read_timeout(Some(TIMEOUT));
                let _ = stream.set_write_timeout(Some(TIMEOUT));
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last)
}

/// Sends a stats command and reads its `STAT name value` lines up to `END`, as name/value
/// pairs; `None` when the target answers `ERROR` (a stats group it does not have).
fn stats(
    conn: &mut BufReader<TcpStream>,
    command: &str,
) -> Result<Option<Vec<(String, String)>>, String> {
    conn.get_mut()
        .write_all(format!("{command}\r\n").as_bytes())
        .map_err(|e| format!("{command}: {e}"))?;
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        // A line longer than any stat line is not a memcached answer: bounded, it ends the
        // read instead of growing without end.
        match conn.by_ref().take(MAX_LINE).read_line(&mut line) {
            Ok(0) => return Err(format!("{command}: the connection was closed")),
            Ok(_) if !line.ends_with('\n') => {
                return Err(format!("{command}: a line longer than {MAX_LINE} bytes"))
            }
            Ok(_) => {}
            Err(e) => return Err(format!("{command}: {e}")),
        }
        if lines.len() >= MAX_LINES {
            return Err(format!("{command}: more than {MAX_LINES} lines"));
        }
        let line = line.trim_end();
        if line == "END" {
            return Ok(Some(lines));
        }
        if line == "ERROR" {
            return Ok(None);
        }
        let Some(rest) = line.strip_prefix("STAT ") else {
            return Err(format!("{command}: unexpected answer {line:?}"));
        };
        let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
        lines.push((name.to_string(), value.to_string()));
    }
}

fn number(stats: &[(String, String)], name: &str) -> u64 {
    stats
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn text(stats: &[(String, String)], name: &str) -> String {
    stats
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

pub fn ratio(hits: u64, misses: u64) -> Option<f64> {
    let total = hits + misses;
    (total > 0).then(|| hits as f64 / total as f64)
}

fn server_figures(stats: &[(String, String)]) -> ServerFigures {
    let n = |name| number(stats, name);
    let (get_hits, get_misses) = (n("get_hits"), n("get_misses"));
    let ops = n("cmd_get")
        + n("cmd_set")
        + n("cmd_touch")
        + n("cmd_flush")
        + n("delete_hits")
        + n("delete_misses")
        + n("incr_hits")
        + n("incr_misses")
        + n("decr_hits")
        + n("decr_misses")
        + n("cas_hits")
        + n("cas_misses")
        + n("cas_badval");
    ServerFigures {
        version: text(stats, "version"),
        uptime_s: n("uptime"),
        items: n("curr_items"),
        bytes: n("bytes"),
        limit_bytes: n("limit_maxbytes"),
        get_hits,
        get_misses,
        hit_ratio: ratio(get_hits, get_misses),
        evictions: n("evictions"),
        connections: n("curr_connections"),
        ops,
    }
}

fn proxy_figures(stats: &[(String, String)], backends: &[(String, String)]) -> ProxyFigures {
    let n = |name| number(stats, name);
    let (get_hits, get_misses) = (n("get_hits"), n("get_misses"));
    let ops = [
        "cmd_get",
        "cmd_set",
        "cmd_delete",
        "cmd_touch",
        "cmd_incr",
        "cmd_decr",
        "cmd_flush",
    ]
    .into_iter()
    .map(n)
    .sum();
    ProxyFigures {
        version: text(stats, "version"),
        uptime_s: n("uptime"),
        serving: n("serving") == 1,
        other_proxy_serving: n("other_proxy_serving") == 1,
        connections: n("curr_connections"),
        get_hits,
        get_misses,
        hit_ratio: ratio(get_hits, get_misses),
        ops,
        backends: backends
            .iter()
            .map(|(name, fields)| backend_figures(name, fields))
            .collect(),
    }
}

/// `STAT <pool>/<addr> state=up state_s=3 requests=.. ...` (crates/proxy/src/stats.rs).
fn backend_figures(name: &str, fields: &str) -> BackendFigures {
    let (pool, addr) = name.split_once('/').unwrap_or(("", name));
    let fields: Vec<(&str, &str)> = fields
        .split(' ')
        .filter_map(|w| w.split_once('='))
        .collect();
    let get = |k: &str| fields.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let n = |k: &str| get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    BackendFigures {
        pool: pool.to_string(),
        addr: addr.to_string(),
        state: get("state").unwrap_or("unknown").to_string(),
        state_s: n("state_s"),
        requests: n("requests"),
        errors: n("errors"),
        timeouts: n("timeouts"),
        avg_latency_us: n("avg_latency_us"),
        missed_keys: n("missed_keys"),
        warm_pct: get("warm_pct").and_then(|v| v.parse().ok()),
        warm_eta_s: get("warm_eta_s").and_then(|v| v.parse().ok()),
    }
}

/// The body of `GET path` on `authority`, over HTTP/1.0 (so the body ends where the connection
/// does, with no chunked encoding to undo).
fn scrape(authority: &str, path: &str) -> Result<String, String> {
    let mut stream = connect(authority)?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: text/plain\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut response = Vec::new();
    (&mut stream)
        .take(MAX_SCRAPE)
        .read_to_end(&mut response)
        .map_err(|e| format!("GET {path}: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: not an HTTP answer"))?;
    let status = head.lines().next().unwrap_or("");
    if status.split(' ').nth(1) != Some("200") {
        return Err(format!("GET {path}: {status}"));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_or_say_what_is_wrong() {
        assert_eq!(
            Target::parse("127.0.0.1:12000"),
            Ok(Target::Memcache("127.0.0.1:12000".into()))
        );
        assert_eq!(
            Target::parse("[::1]:11211"),
            Ok(Target::Memcache("[::1]:11211".into()))
        );
        assert_eq!(
            Target::parse("http://198.18.0.1:9100"),
            Ok(Target::Metrics {
                authority: "198.18.0.1:9100".into(),
                path: "/metrics".into()
            })
        );
        assert_eq!(
            Target::parse("http://host:9100/m").unwrap().name(),
            "http://host:9100/m"
        );
        assert!(Target::parse("localhost")
            .unwrap_err()
            .contains("HOST:PORT"));
        assert!(Target::parse("http://host").unwrap_err().contains("port"));
        assert!(Target::parse("https://host:1").is_err());
    }

    #[test]
    fn a_backend_line_gives_its_figures() {
        let b = backend_figures(
            "main/127.0.0.1:11211",
            "state=warming state_s=3 requests=10 errors=1 timeouts=0 avg_latency_us=250 \
             missed_keys=2 warm_pct=40 warm_eta_s=6",
        );
        assert_eq!(
            (b.pool.as_str(), b.addr.as_str()),
            ("main", "127.0.0.1:11211")
        );
        assert_eq!(b.state, "warming");
        assert_eq!((b.requests, b.errors, b.avg_latency_us), (10, 1, 250));
        assert_eq!((b.warm_pct, b.warm_eta_s), (Some(40), Some(6)));
        let b = backend_figures("backup/h:1", "state=up state_s=1");
        assert_eq!(b.warm_pct, None);
    }

    /// Answers one HTTP request on a loopback port with `status` and `body`; the request line
    /// it got comes back through the join handle.
    fn one_answer(
        status: &'static str,
        body: &'static str,
    ) -> (u16, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut header = String::new();
            while header != "\r\n" {
                header.clear();
                reader.read_line(&mut header).unwrap();
            }
            let answer = format!("HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n\r\n{body}");
            reader.get_mut().write_all(answer.as_bytes()).unwrap();
            request_line
        });
        (port, handle)
    }

    #[test]
    fn a_metrics_endpoint_is_scraped_over_http() {
        let (port, server) = one_answer(
            "200 OK",
            "keepcached_vrrp_state{instance=\"VI_1\",state=\"backup\"} 1\n\
             keepcached_vrrp_priority{instance=\"VI_1\"} 90\n",
        );
        let mut probe = Probe::new(Target::parse(&format!("http://127.0.0.1:{port}")).unwrap());
        let sample = probe.sample();
        assert_eq!(server.join().unwrap(), "GET /metrics HTTP/1.0\r\n");
        let Sample::Node(instances) = sample else {
            panic!("{sample:?}");
        };
        assert_eq!(instances[0].state, "backup");
        assert_eq!(instances[0].priority, Some(90));

        let (port, server) = one_answer("404 Not Found", "no such page");
        let mut probe = Probe::new(Target::parse(&format!("http://127.0.0.1:{port}/m")).unwrap());
        let sample = probe.sample();
        assert_eq!(server.join().unwrap(), "GET /m HTTP/1.0\r\n");
        assert_eq!(
            sample,
            Sample::Unreachable("GET /m: HTTP/1.1 404 Not Found".into())
        );

        let (port, _server) = one_answer("200 OK", "other_metric 1\n");
        let mut probe = Probe::new(Target::parse(&format!("http://127.0.0.1:{port}")).unwrap());
        let Sample::Unreachable(error) = probe.sample() else {
            panic!("a page without VRRP state is not a node");
        };
        assert!(error.contains("no keepcached_vrrp_state"), "{error}");
    }

    #[test]
    fn a_restarted_server_is_sampled_again_at_once() {
        let mut memcached = keepcached_testkit::memcached(&[]).expect("start memcached");
        let mut probe = Probe::new(Target::Memcache(memcached.addr().to_string()));
        assert!(matches!(probe.sample(), Sample::Server(_)));
        memcached.restart().expect("restart memcached");
        // The kept connection died with the old process; the sample takes a new one.
        let sample = probe.sample();
        assert!(matches!(sample, Sample::Server(_)), "{sample:?}");
        memcached.kill();
        let Sample::Unreachable(error) = probe.sample() else {
            panic!("a stopped server is unreachable");
        };
        assert!(error.contains("refused"), "{error}");
    }
}
