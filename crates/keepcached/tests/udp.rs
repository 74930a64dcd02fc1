//! UDP (`-U PORT`): a client that frames requests with memcached's 8-byte header and reassembles
//! multi-datagram replies, run against Debian's memcached and keepcached with the same
//! conversation; every reply, and how it was cut into datagrams, must match.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use keepcached_testkit::mask::mask_stats;
use keepcached_testkit::wire::Target;
use keepcached_testkit::{env, escape, End, ServerProcess};

/// memcached's largest reply datagram, header included.
const MAX_DATAGRAM: usize = 1400;
/// How long to wait for one more datagram before a reply is taken as complete (or absent).
const QUIET: Duration = Duration::from_secs(1);
/// How long the first datagram of a reply is waited for (a request that gets none costs this).
const FIRST: Duration = Duration::from_secs(2);
/// How long a reply message whose datagrams have not all arrived is waited for.
const INCOMPLETE: Duration = Duration::from_secs(10);

/// One reply message: its datagrams' headers and the reassembled payload.
#[derive(Debug, PartialEq, Eq)]
struct Message {
    /// (sequence, total, payload length) of each datagram, in arrival order.
    datagrams: Vec<(u16, u16, usize)>,
    payload: Vec<u8>,
}

impl Message {
    fn render(&self) -> String {
        let parts: Vec<String> = self
            .datagrams
            .iter()
            .map(|(seq, total, len)| format!("{seq}/{total}:{len}"))
            .collect();
        format!("[{}] {}", parts.join(","), escape(&self.payload))
    }
}

struct UdpClient {
    socket: UdpSocket,
    server: SocketAddr,
    next_id: u16,
}

impl UdpClient {
    fn new(port: u16) -> UdpClient {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind client");
        socket.set_read_timeout(Some(QUIET)).expect("timeout");
        UdpClient {
            socket,
            server: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            next_id: 0x1200,
        }
    }

    /// Sends `payload` in one datagram with the given total-datagrams field and returns the
    /// reply messages, each reassembled from its datagrams (a message starts at sequence 0).
    fn request_with_total(&mut self, payload: &[u8], total: u16) -> Vec<Message> {
        let id = self.send(payload, total);
        self.replies(id)
    }

    /// Sends `payload` in one datagram with the given total-datagrams field; its request id.
    fn send(&mut self, payload: &[u8], total: u16) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        let mut datagram = Vec::new();
        for field in [id, 0, total, 0] {
            datagram.extend_from_slice(&field.to_be_bytes());
        }
        datagram.extend_from_slice(payload);
        self.socket.send_to(&datagram, self.server).expect("send");
        id
    }

    /// The reply messages to request `id` that arrive from now on.
    fn replies(&mut self, id: u16) -> Vec<Message> {
        let mut messages: Vec<Message> = Vec::new();
        let mut buf = [0u8; 65536];
        // A reply ends when the server has been quiet for QUIET (FIRST before anything came)
        // with every message it started
        // complete (each datagram says how many its message has); a message still missing
        // datagrams is waited for up to INCOMPLETE, so a slow machine cannot cut a reply short
        // and leave its tail to the next request.
        let incomplete = |messages: &[Message]| {
            messages
                .last()
                .is_some_and(|m| m.datagrams.len() < usize::from(m.datagrams[0].1))
        };
        let started = Instant::now();
        loop {
            let (n, _) = match self.socket.recv_from(&mut buf) {
                Ok(received) => received,
                Err(_) if incomplete(&messages) && started.elapsed() < INCOMPLETE => continue,
                // Nothing yet: a loaded machine may take longer than QUIET to answer at all.
                Err(_) if messages.is_empty() && started.elapsed() < FIRST => continue,
                Err(_) => break,
            };
            let got = &buf[..n];
            assert!(n >= 8, "datagram shorter than its header: {got:?}");
            assert!(n <= MAX_DATAGRAM, "datagram of {n} bytes");
            let field = |i: usize| u16::from_be_bytes([got[i], got[i + 1]]);
            let (rid, seq, total, reserved) = (field(0), field(2), field(4), field(6));
            if rid != id {
                // A datagram of an earlier request, arriving after that request's reply was
                // judged complete (memcached's crawler, for one, can answer a metadump from its
                // own thread, late): not part of this reply. Its own reply was compared
                // without it, so a late reply of ours would still show there.
                assert!(
                    id.wrapping_sub(rid) < 0x8000,
                    "reply {rid} to a request not sent yet (this one is {id})"
                );
                eprintln!("ignoring a late datagram of request {rid} (waiting for {id})");
                continue;
            }
            assert_eq!(reserved, 0, "reserved field");
            if seq == 0 || messages.is_empty() {
                messages.push(Message {
                    datagrams: Vec::new(),
                    payload: Vec::new(),
                });
            }
            let message = messages.last_mut().expect("a message");
            message.datagrams.push((seq, total, n - 8));
            message.payload.extend_from_slice(&got[8..]);
        }
        messages
    }

    fn request(&mut self, payload: &[u8]) -> Vec<Message> {
        self.request_with_total(payload, 1)
    }
}

/// A UDP port nothing uses right now.
fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    socket.local_addr().expect("addr").port()
}

fn binary_version_request() -> Vec<u8> {
    let mut p = vec![0x80, 0x0b];
    p.extend_from_slice(&[0; 22]);
    p
}

/// The conversation: (what it checks, request payload, total-datagrams field).
fn conversation() -> Vec<(&'static str, Vec<u8>, u16)> {
    let big = "x".repeat(5000);
    vec![
        (
            "store a 5000-byte value",
            format!("set big 0 0 5000\r\n{big}\r\n").into_bytes(),
            1,
        ),
        (
            // Padded with a silent store so that the datagram's reply budget (ten times its
            // size, docs/udp.md) covers the 5000-byte reply.
            "a reply in four datagrams",
            format!(
                "set pad 0 0 500 noreply\r\n{}\r\nget big\r\n",
                "p".repeat(500)
            )
            .into_bytes(),
            1,
        ),
        (
            "one message per request",
            b"get a\r\nget b\r\nversion\r\n".to_vec(),
            1,
        ),
        (
            "noreply stays silent",
            b"set k 0 0 1 noreply\r\nx\r\nget k\r\n".to_vec(),
            1,
        ),
        (
            "a request of several datagrams is dropped",
            b"get k\r\n".to_vec(),
            2,
        ),
        (
            "meta commands",
            b"mn\r\nmg k v\r\nms m 2\r\nhi\r\nmg m v\r\n".to_vec(),
            1,
        ),
        ("errors", b"bogus\r\nget\r\n".to_vec(), 1),
        ("binary protocol", binary_version_request(), 1),
        (
            "a metadump is not sent, nor the rest of its datagram run",
            b"lru_crawler metadump all\r\nversion\r\n".to_vec(),
            1,
        ),
        ("delete and incr", b"incr k 1\r\ndelete k\r\n".to_vec(), 1),
    ]
}

fn play(server: &ServerProcess, udp_port: u16) -> Vec<String> {
    let mut client = UdpClient::new(udp_port);
    let mut out: Vec<String> = conversation()
        .into_iter()
        .map(|(what, payload, total)| {
            let replies: Vec<String> = client
                .request_with_total(&payload, total)
                .iter()
                .map(Message::render)
                .collect();
            format!("{what}: {}", replies.join(" | "))
        })
        .collect();
    let mut tcp = server.connect().expect("tcp");
    let stats = tcp.call("stats\r\n").expect("stats");
    out.push(
        String::from_utf8(mask_stats(
            stats.as_bytes(),
            Some(&[
                "curr_connections",
                "total_connections",
                "cmd_get",
                "cmd_set",
                "get_hits",
                "get_misses",
                "curr_items",
            ]),
        ))
        .expect("utf-8"),
    );
    let settings = tcp.call("stats settings\r\n").expect("stats settings");
    out.push(
        String::from_utf8(mask_stats(settings.as_bytes(), Some(&["udpport"])))
            .expect("utf-8")
            .replace(&udp_port.to_string(), "<udp port>"),
    );
    out
}

/// `target` with `-U PORT` and the `extra` flags; the UDP port.
fn start(target: &Target, extra: &[&str]) -> (ServerProcess, u16) {
    // The UDP port is chosen free just before the start; if another process takes it in between,
    // the start fails and is retried with another.
    let mut last = None;
    for _ in 0..5 {
        let port = free_udp_port();
        let udp = ["-U", &port.to_string()].map(String::from);
        let flags: Vec<&str> = udp
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
            .collect();
        match target.start(&flags) {
            Ok(server) => return (server, port),
            Err(e) => last = Some(e),
        }
    }
    panic!("{}: cannot start with UDP: {last:?}", target.label);
}

#[test]
fn udp_replies_match_memcached() {
    if !env::require("udp_replies_match_memcached", false, &["memcached"]) {
        return;
    }
    let (reference, ref_port) = start(&Target::memcached(), &[]);
    let (subject, sub_port) = start(
        &Target::subject_from_env(env!("CARGO_BIN_EXE_keepcached")),
        &[],
    );
    let got_ref = play(&reference, ref_port);
    let got_sub = play(&subject, sub_port);
    // What memcached is documented to do, for the replies that show the framing.
    assert_eq!(
        got_ref[1],
        "a reply in four datagrams: [0/4:1392,1/4:1392,2/4:1392,3/4:849] VALUE big 0 5000\\r\\n<5000 x x>\\r\\nEND\\r\\n"
    );
    assert_eq!(
        got_ref[2],
        "one message per request: [0/1:5] END\\r\\n | [0/1:5] END\\r\\n | [0/1:16] VERSION 1.6.18\\r\\n"
    );
    assert_eq!(got_ref[4], "a request of several datagrams is dropped: ");
    let mut failures = Vec::new();
    for (r, s) in got_ref.iter().zip(&got_sub) {
        if r != s {
            failures.push(format!("memcached:  {r}\nkeepcached: {s}\n"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.concat());
}

#[test]
fn udp_is_off_by_default() {
    let server = Target::keepcached(env!("CARGO_BIN_EXE_keepcached"))
        .start(&[])
        .expect("keepcached");
    // The harness starts servers with `-U 0`, as memcached's own tests do; the default without
    // the flag is checked by the command line's unit tests. Here: nothing answers on UDP.
    let mut tcp = server.connect().expect("tcp");
    let settings = tcp.call("stats settings\r\n").expect("stats settings");
    assert!(settings.contains("STAT udpport 0\r\n"), "{settings}");
    let mut client = UdpClient::new(server.port());
    assert!(client.request(b"version\r\n").is_empty());
}

/// Where keepcached deliberately differs: a get of many keys that hit is one message (memcached
/// 1.6 sends each value as its own message), here cut into 18 datagrams.
#[test]
fn a_multi_key_get_is_one_message() {
    let udp_port = free_udp_port();
    let _server = Target::keepcached(env!("CARGO_BIN_EXE_keepcached"))
        .start(&["-U", &udp_port.to_string()])
        .expect("keepcached -U");
    let keys: Vec<String> = (0..400).map(|i| format!("key{i:03}")).collect();
    let mut client = UdpClient::new(udp_port);
    let stores: String = keys
        .iter()
        .map(|k| format!("set {k} 0 0 40 noreply\r\n{}\r\n", "v".repeat(40)))
        .collect();
    assert!(client.request(stores.as_bytes()).is_empty());
    let messages = client.request(format!("get {}\r\n", keys.join(" ")).as_bytes());
    assert_eq!(messages.len(), 1, "one message");
    let message = &messages[0];
    let expected: String = keys
        .iter()
        .map(|k| format!("VALUE {k} 0 40\r\n{}\r\n", "v".repeat(40)))
        .chain(std::iter::once("END\r\n".to_string()))
        .collect();
    assert_eq!(message.payload, expected.as_bytes());
    assert_eq!(message.datagrams.len(), 18);
    for (i, (seq, total, len)) in message.datagrams.iter().enumerate() {
        assert_eq!((usize::from(*seq), *total), (i, 18));
        assert!(i == 17 || *len == MAX_DATAGRAM - 8);
    }
}

/// docs/udp.md: every datagram stands alone here, so a request cut off at a datagram's end is
/// dropped and the next datagram, from anyone, starts afresh. memcached (one worker thread, so
/// that both datagrams reach the same one) keeps the unfinished `set`, swallows the next
/// client's datagram into its value and answers the first client.
#[test]
fn a_request_cut_at_the_datagrams_end_is_dropped() {
    if !env::require(
        "a_request_cut_at_the_datagrams_end_is_dropped",
        false,
        &["memcached"],
    ) {
        return;
    }
    let payloads = |messages: Vec<Message>| -> Vec<String> {
        messages.iter().map(|m| escape(&m.payload)).collect()
    };
    for target in [
        Target::memcached(),
        Target::subject_from_env(env!("CARGO_BIN_EXE_keepcached")),
    ] {
        let (server, port) = start(&target, &["-t", "1"]);
        let mut first = UdpClient::new(port);
        let mut second = UdpClient::new(port);
        let cut = first.send(b"set k 0 0 10\r\nabc", 1);
        assert_eq!(payloads(first.replies(cut)), Vec::<String>::new());
        let rest = payloads(second.request(b"defghij\r\nget k\r\n"));
        let late = payloads(first.replies(cut));
        let (want_rest, want_late): (&[&str], &[&str]) = if target.label == "memcached" {
            (&[], &["CLIENT_ERROR bad data chunk\\r\\n"])
        } else {
            (&["ERROR\\r\\n", "END\\r\\n"], &[])
        };
        assert_eq!(rest, want_rest, "{}: the second client", target.label);
        assert_eq!(late, want_late, "{}: the first client", target.label);
        // Both run a datagram's whole requests and drop a cut one at its end.
        assert_eq!(
            payloads(first.request(b"get a\r\nget k")),
            ["END\\r\\n"],
            "{}",
            target.label
        );
        assert_eq!(
            payloads(first.request(b"\r\n")),
            ["ERROR\\r\\n"],
            "{}",
            target.label
        );
        let mut tcp = server.connect().expect("tcp");
        assert_eq!(
            tcp.call("get k\r\n").expect("get"),
            "END\r\n",
            "{}",
            target.label
        );
    }
}

/// The first datagram of the reply to `get KEY` sent from a new socket: (sequence, total,
/// payload). The rest of the reply is left to the kernel to drop with the socket.
fn first_reply_datagram(port: u16, key: &str) -> (u16, u16, Vec<u8>) {
    let mut client = UdpClient::new(port);
    let id = client.send(format!("get {key}\r\n").as_bytes(), 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 65536];
    loop {
        assert!(Instant::now() < deadline, "no reply to get {key}");
        let Ok((n, _)) = client.socket.recv_from(&mut buf) else {
            continue;
        };
        let field = |i: usize| u16::from_be_bytes([buf[i], buf[i + 1]]);
        if n >= 8 && field(0) == id {
            return (field(2), field(4), buf[8..n].to_vec());
        }
    }
}

/// docs/udp.md: a reply that would need more than 65535 datagrams, more than the header can
/// count, is answered `SERVER_ERROR object too large for cache`; one of exactly 65535 is sent.
/// memcached sends such a reply anyway, every datagram saying 65535.
#[test]
fn a_reply_beyond_65535_datagrams_is_refused() {
    if !env::require(
        "a_reply_beyond_65535_datagrams_is_refused",
        false,
        &["memcached"],
    ) {
        return;
    }
    // "VALUE big 0 LLLLLLLL\r\n" value "\r\nEND\r\n": 29 bytes around a value of 8 digits.
    let fits = 65535 * (MAX_DATAGRAM - 8) - 29;
    let store = |server: &ServerProcess, len: usize| {
        let mut tcp = server.connect().expect("tcp");
        tcp.set_timeout(Duration::from_secs(60));
        let mut set = format!("set big 0 0 {len}\r\n").into_bytes();
        set.resize(set.len() + len, b'v');
        set.extend_from_slice(b"\r\n");
        assert_eq!(
            tcp.exchange(&set, &End::Sentinel).expect("set").bytes,
            b"STORED\r\n"
        );
    };
    let flags = [
        "-m",
        "1024",
        "-I",
        "128m",
        "-o",
        "udp_reply_limit=100000000",
    ];
    let (server, port) = start(
        &Target::subject_from_env(env!("CARGO_BIN_EXE_keepcached")),
        &flags,
    );
    store(&server, fits);
    let (sequence, total, payload) = first_reply_datagram(port, "big");
    assert_eq!((sequence, total), (0, 65535));
    assert!(
        payload.starts_with(format!("VALUE big 0 {fits}\r\nvvv").as_bytes()),
        "{}",
        escape(&payload)
    );
    store(&server, fits + 1);
    assert_eq!(
        first_reply_datagram(port, "big"),
        (
            0,
            1,
            b"SERVER_ERROR object too large for cache\r\n".to_vec()
        )
    );
    drop(server);

    // memcached has no reply limit to set.
    let (server, port) = start(&Target::memcached(), &flags[..4]);
    store(&server, fits + 1);
    let (sequence, total, payload) = first_reply_datagram(port, "big");
    assert_eq!((sequence, total), (0, 65535), "memcached");
    assert!(
        payload.starts_with(format!("VALUE big 0 {}\r\nvvv", fits + 1).as_bytes()),
        "memcached: {}",
        escape(&payload)
    );
}

/// Where keepcached deliberately differs: one datagram may cause at most ten times its size in
/// reply bytes (at least one full datagram), or `-o udp_reply_limit` bytes. A request whose reply
/// would pass that is answered with an error, and the datagram's later requests are not run.
#[test]
fn a_datagram_reply_is_bounded() {
    let udp_port = free_udp_port();
    let server = Target::keepcached(env!("CARGO_BIN_EXE_keepcached"))
        .start(&["-U", &udp_port.to_string()])
        .expect("keepcached -U");
    let mut tcp = server.connect().expect("connect");
    let value = "v".repeat(2000);
    let stored = tcp
        .call(&format!("set big 0 0 2000\r\n{value}\r\n"))
        .expect("set");
    assert_eq!(stored, "STORED\r\n");
    let mut client = UdpClient::new(udp_port);
    let refused = b"SERVER_ERROR reply exceeds the UDP reply limit\r\n";
    let payloads = |messages: Vec<Message>| -> Vec<Vec<u8>> {
        messages.into_iter().map(|m| m.payload).collect()
    };
    // 2,000 bytes of value for a 17-byte datagram: over the 1,392-byte floor.
    assert_eq!(
        payloads(client.request(b"get big\r\n")),
        vec![refused.to_vec()]
    );
    let mut binary_get = vec![0x80, 0x00, 0, 3, 0, 0, 0, 0, 0, 0, 0, 3];
    binary_get.extend_from_slice(&[0; 12]);
    binary_get.extend_from_slice(b"big");
    let messages = payloads(client.request(&binary_get));
    assert_eq!(messages.len(), 1);
    assert_eq!(&messages[0][..2], &[0x81, 0x00]);
    assert_eq!(&messages[0][6..8], &[0, 3], "status Too large");
    assert!(messages[0].ends_with(b"Too large."));
    // The same get in a datagram of over 200 bytes (misses pad it) is answered.
    let padded = format!("get big{}\r\n", " nokey".repeat(340));
    let messages = payloads(client.request(padded.as_bytes()));
    assert_eq!(messages.len(), 1);
    assert!(messages[0].starts_with(b"VALUE big 0 2000\r\n"));
    drop(server);

    let udp_port = free_udp_port();
    let server = Target::keepcached(env!("CARGO_BIN_EXE_keepcached"))
        .start(&["-U", &udp_port.to_string(), "-o", "udp_reply_limit=3000"])
        .expect("keepcached -U -o udp_reply_limit");
    let mut tcp = server.connect().expect("connect");
    let stored = tcp
        .call(&format!("set big 0 0 2000\r\n{value}\r\n"))
        .expect("set");
    assert_eq!(stored, "STORED\r\n");
    let mut client = UdpClient::new(udp_port);
    let messages = payloads(client.request(b"get big\r\nget big\r\nset after 0 0 1\r\nx\r\n"));
    assert_eq!(messages.len(), 2, "the value, then the refusal");
    assert!(messages[0].starts_with(b"VALUE big 0 2000\r\n"));
    assert_eq!(messages[1], refused.to_vec());
    assert_eq!(
        tcp.call("get after\r\n").expect("get"),
        "END\r\n",
        "not run"
    );
}
