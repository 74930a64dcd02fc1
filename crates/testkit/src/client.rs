//! A blocking TCP client for wire tests: send raw bytes, read until the reply is complete.
//!
//! A text reply has no length prefix, so "complete" depends on the request. The robust way used
//! here is a sentinel: the request is followed by `version\r\n`, whose `VERSION ...\r\n` answer
//! memcached and keepcached both send after everything the request produced. The sentinel's line
//! is then stripped. Requests that close the connection are read until EOF, and requests that
//! leave the server waiting for more bytes are read until the connection goes quiet. Every read
//! has a deadline, so a server that never answers turns into a visible `<timeout>` marker.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longest wait for a whole reply. Generous because CI runs debug builds on 2 busy cores; a
/// correct server answers in microseconds, so this only costs time when a reply is missing.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// The request appended after a case when [`End::Sentinel`] is used.
pub const SENTINEL: &[u8] = b"version\r\n";

/// How the reader knows a reply is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Append [`SENTINEL`], read up to its `VERSION` line, strip it.
    Sentinel,
    /// The server is expected to close the connection: read until EOF.
    Closed,
    /// Read until nothing arrives for this long (the server is left waiting for more input).
    Quiet(Duration),
    /// Read until the reply ends with these bytes (a reply whose terminator is known).
    Suffix(Vec<u8>),
}

/// What a read produced and why it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    /// The server closed the connection (EOF or reset).
    pub closed: bool,
    /// The deadline passed before the reply was complete.
    pub timed_out: bool,
}

impl Reply {
    /// The reply escaped for messages, with `<closed>` / `<timeout>` appended when the reader
    /// stopped for that reason; comparing these strings compares how the replies ended too.
    pub fn render(&self, end: &End) -> String {
        let mut s = escape(&self.bytes);
        if self.closed && *end != End::Closed {
            s.push_str("<closed>");
        }
        if !self.closed && *end == End::Closed {
            s.push_str("<still open>");
        }
        if self.timed_out && !matches!(end, End::Quiet(_)) {
            s.push_str("<timeout>");
        }
        s
    }
}

#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    timeout: Duration,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Client {
            stream,
            timeout: REPLY_TIMEOUT,
        })
    }

    /// Wraps an already connected stream (e.g. one opened to observe the accept behaviour).
    pub fn from_stream(stream: TcpStream) -> io::Result<Client> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Client {
            stream,
            timeout: REPLY_TIMEOUT,
        })
    }

    /// Changes the deadline of later reads (e.g. for a `stats` after a large load).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Writes all bytes (one write call where the kernel allows, so they arrive as one read).
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends `request` (plus the sentinel for [`End::Sentinel`]) and reads the reply.
    pub fn exchange(&mut self, request: &[u8], end: &End) -> io::Result<Reply> {
        let sentinels = match end {
            End::Sentinel => {
                let mut bytes = request.to_vec();
                bytes.extend_from_slice(SENTINEL);
                self.send_tolerant(&bytes)?;
                1 + count_version_commands(request)
            }
            _ => {
                self.send_tolerant(request)?;
                0
            }
        };
        let mut reply = self.read_reply(end, sentinels)?;
        if *end == End::Sentinel && !reply.closed && !reply.timed_out {
            strip_last_line(&mut reply.bytes);
        }
        Ok(reply)
    }

    /// Sends a text request and returns its reply as a string; an error unless the reply was
    /// complete and the connection stays open. For tests that drive a server, not compare it.
    pub fn call(&mut self, request: &str) -> io::Result<String> {
        let reply = self.exchange(request.as_bytes(), &End::Sentinel)?;
        if reply.closed || reply.timed_out {
            return Err(io::Error::other(format!(
                "incomplete reply to {:?}: {}",
                request,
                reply.render(&End::Sentinel)
            )));
        }
        String::from_utf8(reply.bytes).map_err(|e| io::Error::other(e.to_string()))
    }

    /// The figure `name` of `stats` asked on this connection; an error when it is not there.
    pub fn stat(&mut self, name: &str) -> io::Result<u64> {
        let stats = self.call("stats\r\n")?;
        stats
            .lines()
            .find_map(|line| {
                let value = line.strip_prefix("STAT ")?.strip_prefix(name)?;
                value.strip_prefix(' ')?.trim().parse().ok()
            })
            .ok_or_else(|| io::Error::other(format!("no {name} in {stats}")))
    }

    /// A server may close the connection while a request is being written (e.g. after a line
    /// that is too long); what it sent before closing is still read afterwards.
    fn send_tolerant(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.send(bytes) {
            Err(e) if is_closed(&e) => Ok(()),
            other => other,
        }
    }

    /// Reads until the reply is complete per `end` or the deadline passes.
    pub fn read_reply(&mut self, end: &End, sentinels: usize) -> io::Result<Reply> {
        let deadline = Instant::now() + self.timeout;
        let mut reply = Reply {
            bytes: Vec::new(),
            closed: false,
            timed_out: false,
        };
        let mut buf = [0u8; 64 * 1024];
        loop {
            let complete = match end {
                End::Sentinel => ends_with_versions(&reply.bytes, sentinels),
                End::Suffix(suffix) => reply.bytes.ends_with(suffix),
                _ => false,
            };
            if complete {
                return Ok(reply);
            }
            let now = Instant::now();
            if now >= deadline {
                reply.timed_out = true;
                return Ok(reply);
            }
            let wait = match end {
                End::Quiet(quiet) => (*quiet).min(deadline - now),
                _ => deadline - now,
            };
            self.stream.set_read_timeout(Some(wait))?;
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    reply.closed = true;
                    return Ok(reply);
                }
                Ok(n) => reply.bytes.extend_from_slice(&buf[..n]),
                Err(e) if is_closed(&e) => {
                    reply.closed = true;
                    return Ok(reply);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if matches!(end, End::Quiet(_)) {
                        reply.timed_out = Instant::now() >= deadline;
                        return Ok(reply);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
    )
}

/// How many `version` commands a request holds: each adds one `VERSION` line to the reply, and
/// the reader must not mistake one of them for the sentinel's.
fn count_version_commands(request: &[u8]) -> usize {
    request
        .split(|&b| b == b'\n')
        .filter(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            line.split(|&b| b == b' ').find(|t| !t.is_empty()) == Some(b"version".as_slice())
        })
        .count()
}

fn ends_with_versions(bytes: &[u8], wanted: usize) -> bool {
    if wanted == 0 || !bytes.ends_with(b"\r\n") {
        return false;
    }
    let last_start = bytes[..bytes.len() - 2]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    if !bytes[last_start..].starts_with(b"VERSION ") {
        return false;
    }
    let lines = bytes
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"VERSION "))
        .count();
    lines >= wanted
}

fn strip_last_line(bytes: &mut Vec<u8>) {
    let body = &bytes[..bytes.len().saturating_sub(2)];
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    bytes.truncate(start);
}

/// Bytes as a readable one-line string: printable ASCII as is, `\r` `\n` `\t` `\\` escaped,
/// anything else as `\xNN`. Long runs of one byte are shortened so a 1 MB value stays readable.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let run = bytes[i..].iter().take_while(|&&c| c == b).count();
        if run > 32 {
            out.push_str(&format!("<{run} x {}>", escape_byte(b)));
            i += run;
            continue;
        }
        out.push_str(&escape_byte(b));
        i += 1;
    }
    out
}

fn escape_byte(b: u8) -> String {
    match b {
        b'\r' => "\\r".into(),
        b'\n' => "\\n".into(),
        b'\t' => "\\t".into(),
        b'\\' => "\\\\".into(),
        0x20..=0x7e => (b as char).to_string(),
        _ => format!("\\x{b:02x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_version_commands_by_first_token() {
        assert_eq!(
            count_version_commands(b"version\r\nget a\r\n version\r\n"),
            2
        );
        assert_eq!(count_version_commands(b"versions\r\nVERSION\r\n"), 0);
    }

    #[test]
    fn sentinel_detection_needs_all_version_lines() {
        assert!(ends_with_versions(b"END\r\nVERSION 1.6.18\r\n", 1));
        assert!(!ends_with_versions(b"VERSION 1.6.18\r\n", 2));
        assert!(!ends_with_versions(b"VERSION 1.6.18\r\nEND\r\n", 1));
        assert!(!ends_with_versions(b"VERSION 1.6", 1));
    }

    #[test]
    fn strips_only_the_sentinel_line() {
        let mut b = b"STORED\r\nVERSION 1.6.18\r\n".to_vec();
        strip_last_line(&mut b);
        assert_eq!(b, b"STORED\r\n");
        let mut b = b"VERSION x\r\n".to_vec();
        strip_last_line(&mut b);
        assert!(b.is_empty());
    }

    #[test]
    fn escape_is_readable() {
        assert_eq!(escape(b"OK\r\n\x01"), "OK\\r\\n\\x01");
        assert_eq!(escape(&[b'a'; 40]), "<40 x a>");
    }
}
