//! UDP (`-U`): memcached's framed datagrams.
//!
//! Every datagram starts with an 8-byte frame header, all fields 16-bit big-endian:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-------------------------------+-------------------------------+
//! |          request id           |        sequence number        |
//! +-------------------------------+-------------------------------+
//! |  datagrams in this message    |        reserved (zero)        |
//! +-------------------------------+-------------------------------+
//! |  payload ...                                                  |
//! ```
//!
//! A request is one datagram (a message of several datagrams is dropped, as memcached does) whose
//! payload holds one or more requests: text and meta, or binary when the payload starts with the
//! binary magic byte. Each request's reply is its own message, cut into datagrams of at most
//! [`MAX_DATAGRAM`] bytes, header included, numbered from 0 and carrying the request's id.
//!
//! Unlike memcached, whose UDP "connections" keep parser state from one datagram to the next
//! (so one client's unfinished `set` swallows the next client's datagram), every datagram here
//! stands alone: an unfinished request at its end is dropped.
//!
//! UDP is off by default: an open UDP memcached is a traffic amplifier (docs/udp.md). Unlike
//! memcached, what one datagram may make us send is bounded ([`reply_budget`]): a request whose
//! reply would pass the budget is answered with an error instead, and the datagram's remaining
//! requests are not run. A multi-key get is measured in the cache before any value is copied,
//! so the memory a datagram costs does not grow with what it names either.

use std::io;
use std::sync::Arc;

use keepcached_cache::ReadOptions;
use keepcached_protocol::binary::{self, parse_binary, BinaryOutcome, Status, REQUEST_MAGIC};
use keepcached_protocol::{parse_command, Command, Keys, Parsed, Request, Verb};
use tokio::net::UdpSocket;

use crate::binary::BinaryState;
use crate::connection::Registration;
use crate::execute::{Next, Session};
use crate::stats::Counters;
use crate::Server;

pub const HEADER_LEN: usize = 8;
/// memcached's largest reply datagram, frame header included.
pub const MAX_DATAGRAM: usize = 1400;
/// Reply bytes per datagram.
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - HEADER_LEN;
/// The largest datagram UDP over IPv4 can carry; requests are read into a buffer this large so
/// none is cut.
const MAX_REQUEST: usize = 65_536;

/// The frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub request_id: u16,
    pub sequence: u16,
    pub total: u16,
    pub reserved: u16,
}

impl Header {
    pub fn read(datagram: &[u8]) -> Option<Header> {
        let field = |i: usize| {
            Some(u16::from_be_bytes([
                *datagram.get(i)?,
                *datagram.get(i + 1)?,
            ]))
        };
        Some(Header {
            request_id: field(0)?,
            sequence: field(2)?,
            total: field(4)?,
            reserved: field(6)?,
        })
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        for field in [self.request_id, self.sequence, self.total, self.reserved] {
            out.extend_from_slice(&field.to_be_bytes());
        }
    }
}

/// A reply that would need more datagrams than the header can count is replaced by this.
const REPLY_TOO_LARGE: &[u8] = b"SERVER_ERROR object too large for cache\r\n";

/// The answer to a text or meta request whose reply would pass the datagram's reply budget
/// (memcached has no such limit, hence no text of its own for it).
pub const OVER_REPLY_LIMIT: &[u8] = b"SERVER_ERROR reply exceeds the UDP reply limit\r\n";

/// Without `-o udp_reply_limit`, a datagram may cause this many times its own size in reply
/// bytes: an open UDP port amplifies at most tenfold (memcached: 238,000-fold for a 253-byte
/// `get` of one 1 MB value named 60 times).
pub const REPLY_FACTOR: usize = 10;

/// The reply bytes (frame headers not counted) a request datagram of `datagram_len` bytes may
/// cause: `-o udp_reply_limit`, or [`REPLY_FACTOR`] times its size but at least one full reply
/// datagram, so a short `get` of a small value is always answered.
pub fn reply_budget(limit: Option<usize>, datagram_len: usize) -> usize {
    limit.unwrap_or_else(|| (REPLY_FACTOR * datagram_len).max(MAX_PAYLOAD))
}

/// The exact size of a text get's reply, measured in the cache without copying a value or
/// leaving a trace on the items (no fetch, no LRU bump).
fn get_reply_len(server: &Server, keys: &Keys<'_>, with_cas: bool, now: u32) -> usize {
    let digits = |n: u64| n.checked_ilog10().unwrap_or(0) as usize + 1;
    let peek = ReadOptions {
        bump: false,
        vivify: false,
    };
    let values: usize = keys
        .iter()
        .map(|key| {
            server
                .cache
                .read(key, peek, now, |item| {
                    let view = item.view();
                    let len = view.value.len();
                    let cas = if with_cas { 1 + digits(view.cas) } else { 0 };
                    // "VALUE key flags bytes [cas]\r\n" data "\r\n"
                    6 + key.len()
                        + 1
                        + digits(view.flags.into())
                        + 1
                        + digits(len as u64)
                        + cas
                        + 2
                        + len
                        + 2
                })
                .hit()
                .unwrap_or(0)
        })
        .sum();
    values + b"END\r\n".len()
}

/// Cuts one reply into framed datagrams and hands each to `send`.
pub fn frame_reply(request_id: u16, reply: &[u8], mut send: impl FnMut(&[u8])) {
    let reply = if reply.len().div_ceil(MAX_PAYLOAD) > usize::from(u16::MAX) {
        REPLY_TOO_LARGE
    } else {
        reply
    };
    let total = reply.len().div_ceil(MAX_PAYLOAD).max(1);
    let mut datagram = Vec::with_capacity(MAX_DATAGRAM.min(HEADER_LEN + reply.len()));
    for sequence in 0..total {
        datagram.clear();
        Header {
            request_id,
            sequence: sequence as u16,
            total: total as u16,
            reserved: 0,
        }
        .write(&mut datagram);
        let start = sequence * MAX_PAYLOAD;
        datagram.extend_from_slice(&reply[start..reply.len().min(start + MAX_PAYLOAD)]);
        send(&datagram);
    }
}

/// Executes the requests of one datagram; each reply (the framed datagrams of one message) goes
/// to `send`. Nothing is answered to a datagram too short for a header and a request, or to one
/// announcing more than one datagram.
pub fn handle_datagram(
    server: &Server,
    datagram: &[u8],
    counters: &mut Counters,
    mut send: impl FnMut(&[u8]),
) {
    counters.bytes_read += datagram.len() as u64;
    let Some(header) = Header::read(datagram) else {
        return;
    };
    if datagram.len() == HEADER_LEN || header.total != 1 {
        return;
    }
    let mut input = &datagram[HEADER_LEN..];
    let binary = input[0] == REQUEST_MAGIC;
    let mut binary_state = BinaryState::default();
    let mut reply = Vec::new();
    let mut budget = reply_budget(server.settings.udp_reply_limit, datagram.len());
    let mut refused = false;
    while !input.is_empty() {
        let mut session = Session {
            server,
            out: &mut reply,
            counters: &mut *counters,
            conn_id: 0,
        };
        let (consumed, next) = if binary {
            let Ok(parsed) = parse_binary(input, &server.limits) else {
                break;
            };
            let consumed = parsed.consumed;
            let header = match &parsed.outcome {
                BinaryOutcome::Request(r) => Some(r.header),
                _ => None,
            };
            let next = session.execute_binary(parsed, &mut binary_state);
            // One binary request returns at most one item, so its reply is measured after it
            // is built.
            if let (Some(header), true) = (header, reply.len() > budget) {
                reply.clear();
                binary::error(&mut reply, &header, Status::TooLarge);
                refused = true;
            }
            (consumed, next)
        } else {
            let Ok(parsed) = parse_command(input, &server.limits) else {
                break;
            };
            let consumed = parsed.consumed();
            if let Command::Text(Parsed {
                outcome: Ok(Request::LruCrawler { args }),
                ..
            }) = &parsed
            {
                let mut words = args.iter();
                if words.next() == Some(b"metadump".as_slice()) && words.next().is_some() {
                    // memcached's crawler cannot write a dump to UDP: it sends nothing and the
                    // rest of the datagram is not run. A dump of every key is no UDP reply.
                    break;
                }
            }
            let over = match &parsed {
                Command::Text(Parsed {
                    outcome: Ok(Request::Get { keys, verb, .. }),
                    ..
                }) => {
                    let with_cas = matches!(verb, Verb::Gets | Verb::Gats);
                    get_reply_len(server, keys, with_cas, server.clock.now()) > budget
                }
                _ => false,
            };
            let next = if over {
                Next::Continue
            } else {
                session.execute_command(parsed)
            };
            if over || reply.len() > budget {
                reply.clear();
                reply.extend_from_slice(OVER_REPLY_LIMIT);
                refused = true;
            }
            (consumed, next)
        };
        input = &input[consumed..];
        budget = budget.saturating_sub(reply.len());
        if !reply.is_empty() {
            frame_reply(header.request_id, &reply, |d| {
                counters.bytes_written += d.len() as u64;
                send(d);
            });
            reply.clear();
        }
        if refused {
            break;
        }
        match next {
            Next::Continue => {}
            Next::Close => break,
            Next::Swallow(n) => input = &input[n.min(input.len())..],
        }
    }
}

/// Binds a UDP socket (before the runtime starts, like the TCP listeners).
pub fn bind(addr: std::net::SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Serves one UDP socket until the task is dropped. Several of these read the same socket (one
/// per worker thread, each through its own descriptor, as memcached has), so datagrams are
/// handled in parallel; each shows in `stats conns`.
pub async fn serve(server: Arc<Server>, socket: std::net::UdpSocket, registration: Registration) {
    // Registered here, on the worker that runs this task, so its wake-ups stay on that thread.
    let Ok(socket) = UdpSocket::from_std(socket) else {
        return;
    };
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut replies: Vec<Vec<u8>> = Vec::new();
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            // An ICMP error from an earlier reply's destination surfaces here; it concerns that
            // peer only.
            continue;
        };
        let mut counters = Counters::default();
        handle_datagram(&server, &buf[..n], &mut counters, |d| {
            replies.push(d.to_vec());
        });
        server.stats.merge(&counters);
        for datagram in replies.drain(..) {
            // A reply the kernel cannot queue is lost, as any UDP datagram may be; the client
            // retries by its request id.
            let _ = socket.send_to(&datagram, peer).await;
        }
        registration.entry.touch(server.clock.now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagrams(reply: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        frame_reply(0x0102, reply, |d| out.push(d.to_vec()));
        out
    }

    #[test]
    fn replies_are_cut_at_1392_bytes() {
        let reply = vec![b'x'; MAX_PAYLOAD * 2 + 10];
        let out = datagrams(&reply);
        assert_eq!(out.len(), 3);
        assert_eq!(&out[0][..8], &[1, 2, 0, 0, 0, 3, 0, 0]);
        assert_eq!(&out[2][..8], &[1, 2, 0, 2, 0, 3, 0, 0]);
        assert_eq!(out[0].len(), MAX_DATAGRAM);
        assert_eq!(out[2].len(), HEADER_LEN + 10);
        assert_eq!(
            datagrams(b"END\r\n"),
            vec![b"\x01\x02\0\0\0\x01\0\0END\r\n".to_vec()]
        );
        assert_eq!(datagrams(&vec![b'y'; MAX_PAYLOAD]).len(), 1);
    }

    #[test]
    fn header_fields() {
        let h = Header::read(&[0, 7, 0, 1, 0, 1, 0, 0, b'x']).unwrap();
        assert_eq!(
            h,
            Header {
                request_id: 7,
                sequence: 1,
                total: 1,
                reserved: 0
            }
        );
        assert_eq!(Header::read(&[0; 7]), None);
    }
}
