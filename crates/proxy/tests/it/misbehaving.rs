//! A server that sends a reply nobody asked for: a relay in front of memcached (so the proxy's
//! health checks see a real server) adds one stray reply, on command, before the reply to the
//! next meta request it carries. The client that asked gets an error, never the stray value;
//! the connection is closed and counted; the next request is answered right.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{config, memcached, Client, ProxyHandle, WAIT};

/// The relay and its one pending stray reply.
struct Relay {
    addr: String,
    stray: Arc<Mutex<Option<&'static [u8]>>>,
}

impl Relay {
    async fn start(server: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay");
        let addr = listener.local_addr().expect("relay address").to_string();
        let stray: Arc<Mutex<Option<&'static [u8]>>> = Arc::default();
        let pending = stray.clone();
        tokio::spawn(async move {
            while let Ok((proxy_side, _)) = listener.accept().await {
                let Ok(server_side) = TcpStream::connect(&server).await else {
                    continue;
                };
                let (mut proxy_rd, mut proxy_wr) = proxy_side.into_split();
                let (mut server_rd, mut server_wr) = server_side.into_split();
                // Set when this connection carried a meta request: the stray goes before the
                // reply that follows, on this connection only (not on a health check's).
                let meta = Arc::new(AtomicBool::new(false));
                let seen = meta.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(n @ 1..) = proxy_rd.read(&mut buf).await {
                        if buf[..n].starts_with(b"mg ") {
                            seen.store(true, Ordering::SeqCst);
                        }
                        if server_wr.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                let pending = pending.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(n @ 1..) = server_rd.read(&mut buf).await {
                        if meta.swap(false, Ordering::SeqCst) {
                            let stray = pending.lock().take();
                            if let Some(stray) = stray {
                                let _ = proxy_wr.write_all(stray).await;
                            }
                        }
                        if proxy_wr.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Relay { addr, stray }
    }
}

/// `bad_replies=` of the one server in `stats backends`.
async fn bad_replies(client: &mut Client) -> u64 {
    let backends = client.call("stats backends\r\n").await;
    let at = backends
        .find("bad_replies=")
        .expect("bad_replies in stats backends")
        + 12;
    backends[at..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{backends}"))
}

/// Asks until the server answers `request` with `expected` again (its connection was closed
/// and its supervisor checks who it is before it is read).
async fn until_answered(client: &mut Client, request: &str, expected: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = client.call(request).await;
        if reply == expected {
            return;
        }
        assert!(
            reply.starts_with("SERVER_ERROR"),
            "{request:?}: {reply:?} while recovering"
        );
        assert!(
            Instant::now() < deadline,
            "never answered {request:?} again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_reply_is_never_passed_on() {
    let a = memcached();
    let relay = Relay::start(a.addr()).await;
    let mut cfg = config(&[&[&a]]);
    cfg.pools[0].servers = vec![relay.addr.clone()];
    let proxy = ProxyHandle::start(cfg).await;
    let mut client = proxy.client().await;
    let mut admin = proxy.client().await;
    let deadline = Instant::now() + WAIT;
    while client.set("k1", "v1").await != "STORED\r\n" {
        assert!(Instant::now() < deadline, "the server never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until_answered(&mut client, "mg k1 v\r\n", "VA 2\r\nv1\r\n").await;
    let before = bad_replies(&mut admin).await;
    // A stray value before the reply to: an mg without a token (caught at the batch's sync
    // point), one with the client's token, a quiet miss (whose reply is only the proxy's `mn`).
    let cases = [
        ("mg k1 v\r\n", "VA 2\r\nv1\r\n"),
        ("mg k1 v Oab\r\n", "VA 2 Oab\r\nv1\r\n"),
        ("mg nothere v q\r\nmn\r\n", "MN\r\n"),
    ];
    for (n, (request, expected)) in cases.into_iter().enumerate() {
        *relay.stray.lock() = Some(b"VA 2\r\nzz\r\n");
        client.send(request.as_bytes()).await;
        let mut reply = client.read_reply(false).await;
        if request.ends_with("mn\r\n") && !reply.starts_with("MN") {
            reply.push_str(&client.read_reply(false).await);
        }
        assert!(
            !reply.contains("zz"),
            "{request:?}: the stray value passed: {reply:?}"
        );
        assert!(reply.starts_with("SERVER_ERROR"), "{request:?}: {reply:?}");
        assert!(reply.contains("out of step"), "{request:?}: {reply:?}");
        assert_eq!(bad_replies(&mut admin).await, before + n as u64 + 1);
        until_answered(&mut client, request, expected).await;
    }
    proxy.stop().await;
}
