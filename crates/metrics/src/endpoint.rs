//! The HTTP listener: `GET /metrics` (and `HEAD`), nothing else.
//!
//! hyper's HTTP/1 server on the role's tokio runtime: a scrape is one small request per
//! interval, so no router or middleware is needed, only a correct HTTP/1.1 implementation with
//! a header timeout. At most [`MAX_CONNECTIONS`] scrapers are served at once; more wait in the
//! listen backlog. A connection lives at most [`CONNECTION_LIFETIME`], keep-alive included: a
//! client that pipelines requests and never reads its replies would otherwise hold its slot
//! for good, and sixteen of them would shut every scraper out.

use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Scrape connections served at once.
const MAX_CONNECTIONS: usize = 16;
/// A client that has not sent its request headers within this is disconnected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest one scrape connection is kept, however it is used.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// Which text format a scrape is answered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus's classic text format, version 0.0.4: what any scraper reads.
    Text,
    /// OpenMetrics 1.0 text, for a scraper whose `Accept` header asks for it.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names it, else the classic.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The registry's metrics now, in `format`.
pub fn render(registry: &Registry, format: Format) -> String {
    let mut out = String::new();
    // Writing to a String fails only if a collector fails, and ours do not.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!("encoding the metrics failed: {e}");
    }
    match format {
        Format::OpenMetrics => out,
        Format::Text => exposition(&out),
    }
}

/// OpenMetrics text as Prometheus's classic text format: OpenMetrics names a counter family
/// without its `_total` suffix, which the classic format's `# TYPE` line must carry to type
/// its samples; `# UNIT` and `# EOF` do not exist there.
pub fn exposition(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // OpenMetrics writes `# HELP` before `# TYPE`; the help line is held until the type says
    // whether its name takes the suffix.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), kind),
                "gauge" | "histogram" | "summary" => (name.to_string(), kind),
                _ => (name.to_string(), "untyped"),
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Checks a `--metrics` value: `ADDR:PORT` (`[ADDR]:PORT` for IPv6), or `HOST:PORT` that
/// resolves. Done before anything binds, so that a typo is a usage error.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !text.contains(':') {
        return Err(format!("{text:?}: expected ADDR:PORT, e.g. 127.0.0.1:9150"));
    }
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{text:?}: the name resolves to no address")),
        Err(e) => Err(format!("{text:?}: {e}")),
    }
}

/// The metrics listener could not be opened (an address in use, or not on this host).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// A bound metrics listener, not yet serving.
#[derive(Debug)]
pub struct Endpoint {
    listener: StdListener,
    /// [`CONNECTION_LIFETIME`]; shorter in tests.
    lifetime: Duration,
}

impl Endpoint {
    /// Binds `addr` (from [`parse_addr`]); needs no runtime, so a role binds it with its other
    /// sockets, before daemonizing.
    pub fn bind(addr: SocketAddr) -> Result<Endpoint, BindError> {
        let error = |source| BindError { addr, source };
        let listener = StdListener::bind(addr).map_err(error)?;
        listener.set_nonblocking(true).map_err(error)?;
        Ok(Endpoint {
            listener,
            lifetime: CONNECTION_LIFETIME,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `registry` until `shutdown` completes. Must run on a tokio runtime with I/O and
    /// time enabled.
    pub async fn serve(
        self,
        registry: Arc<Registry>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let lifetime = self.lifetime;
        let listener = TcpListener::from_std(self.listener)?;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "metrics listening (GET /metrics)");
        }
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => return Ok(()),
                permit = slots.clone().acquire_owned() => permit.expect("never closed"),
            };
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors or an aborted handshake: the next scrape may work.
                        tracing::debug!("metrics accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(answer(&registry, &request)) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(lifetime, served).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(%peer, "metrics connection ended: {e}"),
                    Err(_) => tracing::debug!(%peer, "metrics connection closed: too old"),
                }
                drop(permit);
            });
        }
    }
}

/// The reply to one HTTP request.
fn answer(registry: &Registry, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "only /metrics is served here\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let accept = request.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let mut response = Response::new(Full::new(Bytes::from(render(registry, format))));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{counter, counters, gauge, Collector, DescriptorEncoder, Histogram};

    #[derive(Debug, Default)]
    struct Sample {
        latency: Histogram,
    }

    impl Collector for Sample {
        fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
            counter(&mut enc, "things", "Things done.", 7)?;
            counters(
                &mut enc,
                "kinds",
                "Things by kind.",
                [(vec![("kind", crate::label_value("a\"b"))], 3)],
            )?;
            gauge(
                &mut enc,
                "memory",
                "Memory held.",
                Some(&crate::Unit::Bytes),
                1024u64,
            )?;
            self.latency.encode(&mut enc, "latency", "How long.")
        }
    }

    fn sample() -> Registry {
        let sample = Sample::default();
        sample.latency.observe(Duration::from_micros(3));
        crate::registry([Box::new(sample) as Box<dyn Collector>])
    }

    /// More clients than [`MAX_CONNECTIONS`] pipeline scrapes and never read their answers:
    /// once their connections are too old they are closed, and a scraper is served again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_that_never_read_do_not_lock_the_scrapers_out() {
        use std::io::{Read, Write};
        let mut endpoint = Endpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.lifetime = Duration::from_millis(500);
        let addr = endpoint.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(endpoint.serve(Arc::new(sample()), async {
            let _ = stopped.await;
        }));
        let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(20_000);
        let stuck: Vec<_> = (0..MAX_CONNECTIONS + 4)
            .map(|_| {
                let mut client = std::net::TcpStream::connect(addr).unwrap();
                let request = request.clone();
                // Blocks once the answers fill both sides' buffers, until the server closes.
                std::thread::spawn(move || {
                    let _ = client.write_all(&request);
                    client
                })
            })
            .collect();
        let scrape = tokio::task::spawn_blocking(move || {
            let mut scraper = std::net::TcpStream::connect(addr).unwrap();
            scraper
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            scraper
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut answer = Vec::new();
            let _ = scraper.read_to_end(&mut answer);
            String::from_utf8_lossy(&answer).into_owned()
        });
        let answer = scrape.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        assert!(answer.contains("keepcached_things_total 7"), "{answer:?}");
        let _ = stop.send(());
        server.await.unwrap().unwrap();
        for client in stuck {
            drop(client.join());
        }
    }

    #[test]
    fn openmetrics_keeps_the_family_name_and_the_eof() {
        let text = render(&sample(), Format::OpenMetrics);
        assert!(
            text.contains("# TYPE keepcached_things counter\n"),
            "{text}"
        );
        assert!(text.contains("keepcached_things_total 7\n"), "{text}");
        assert!(
            text.contains("# UNIT keepcached_memory_bytes bytes\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_classic_format_types_counters_by_their_sample_name() {
        let text = render(&sample(), Format::Text);
        assert!(
            text.contains("# HELP keepcached_things_total Things done.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE keepcached_things_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("keepcached_kinds_total{kind=\"a\\\"b\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE keepcached_memory_bytes gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("keepcached_latency_seconds_bucket{le=\"0.000002\"} 0\n")
                && text.contains("keepcached_latency_seconds_bucket{le=\"0.000004\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("keepcached_latency_seconds_bucket{le=\"+Inf\"} 1\n"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }

    #[test]
    fn accept_headers_choose_the_format() {
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
    }

    #[test]
    fn addresses_need_a_port() {
        assert_eq!(
            parse_addr("127.0.0.1:9150").unwrap(),
            "127.0.0.1:9150".parse().unwrap()
        );
        assert!(parse_addr("[::1]:9150").is_ok());
        assert!(parse_addr("localhost:9150").is_ok());
        assert!(parse_addr("127.0.0.1").unwrap_err().contains("ADDR:PORT"));
        assert!(parse_addr("127.0.0.1:http").is_err());
    }
}
