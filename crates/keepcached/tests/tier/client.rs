//! A memcached text-protocol client: a request and its reply (`call`), or a pipeline (written
//! to `stream`, each reply taken with `read`). It fails with an `io::Error` instead of panicking,
//! so that a load client can stop when its connection is cut; a test that expects every reply
//! unwraps.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keepcached_protocol::response::{parse_response, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects within a second.
    pub async fn connect(addr: &str) -> io::Result<Client> {
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
    pub async fn reach(addr: &str) -> Client {
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
    pub async fn call(&mut self, request: &str) -> io::Result<String> {
        self.stream.write_all(request.as_bytes()).await?;
        let multi = request.starts_with("get") || request.starts_with("stats");
        self.read(multi).await
    }

    /// Reads the next reply of a pipeline (`multi`: one that ends at `END`), within `WAIT`.
    pub async fn read(&mut self, multi: bool) -> io::Result<String> {
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

    pub async fn set(&mut self, key: &str, value: &str) -> io::Result<String> {
        self.call(&format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()))
            .await
    }

    /// The value of `key`, `None` on a miss.
    /// An error line (`SERVER_ERROR …`) is an `io::Error`: it is not a miss.
    pub async fn get(&mut self, key: &str) -> io::Result<Option<String>> {
        self.get_or_error(key).await?.map_err(io::Error::other)
    }

    /// The value of `key` (`None` on a miss), or the error line the server answered with.
    pub async fn get_or_error(&mut self, key: &str) -> io::Result<Result<Option<String>, String>> {
        let reply = self.call(&format!("get {key}\r\n")).await?;
        if ["ERROR", "CLIENT_ERROR", "SERVER_ERROR"]
            .iter()
            .any(|e| reply.starts_with(e))
        {
            return Ok(Err(reply));
        }
        Ok(Ok(reply
            .strip_prefix("VALUE ")
            .and_then(|rest| rest.split("\r\n").nth(1))
            .map(str::to_string)))
    }
}

/// Where the first whole reply in `buf` ends, read with the project's own reply parser: a get
/// or `stats` (`multi`) ends at `END` or at an error line, anything else after one reply.
fn complete(buf: &[u8], multi: bool) -> Option<usize> {
    let mut at = 0;
    loop {
        let parsed = parse_response(&buf[at..]).ok()?;
        at += parsed.consumed;
        if !(multi
            && matches!(
                parsed.response,
                Response::Value { .. } | Response::Stat { .. }
            ))
        {
            return Some(at);
        }
    }
}
