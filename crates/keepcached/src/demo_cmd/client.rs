//! The demo's memcached client: the seed's telnet session (text protocol), a reply read whole,
//! every read and write bounded by a timeout so that a dead peer is a failed step, not a hang.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, ensure, Context};

const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects from the calling thread's network namespace.
    pub fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
        Conn::connect_within(addr, TIMEOUT)
    }

    pub fn connect_within(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    /// Sends `request` (lines without their `\r\n`) and returns the reply's lines: everything up
    /// to the line that ends it (`END`, `STORED`, an error...), data blocks included.
    pub fn call(&mut self, request: &[&str]) -> anyhow::Result<Vec<String>> {
        let mut bytes = Vec::new();
        for line in request {
            bytes.extend_from_slice(line.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&bytes)?;
        let mut reply = Vec::new();
        loop {
            let line = self.line()?;
            if let Some(rest) = line.strip_prefix("VALUE ") {
                let len: usize = rest
                    .split(' ')
                    .nth(2)
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("bad reply line {line:?}"))?;
                let mut data = vec![0; len + 2];
                self.reader.read_exact(&mut data)?;
                data.truncate(len);
                reply.push(line);
                reply.push(String::from_utf8_lossy(&data).into_owned());
            } else if line.starts_with("STAT ") {
                reply.push(line);
            } else {
                reply.push(line);
                return Ok(reply);
            }
        }
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("the connection was closed");
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    /// `set KEY 0 0 LEN` with `value`: whether it was stored.
    pub fn set(&mut self, key: &str, value: &str) -> anyhow::Result<bool> {
        let reply = self.call(&[&format!("set {key} 0 0 {}", value.len()), value])?;
        Ok(reply == ["STORED"])
    }

    /// `get KEY`: the value, or None for a miss.
    pub fn get(&mut self, key: &str) -> anyhow::Result<Option<String>> {
        let reply = self.call(&[&format!("get {key}")])?;
        match reply.as_slice() {
            [end] if end == "END" => Ok(None),
            [_, value, end] if end == "END" => Ok(Some(value.clone())),
            other => bail!("get {key}: unexpected reply {other:?}"),
        }
    }

    /// `set KEY 0 0 LEN` for every item, pipelined in one write: how many were stored.
    pub fn set_many(&mut self, items: &[(String, String)]) -> anyhow::Result<usize> {
        let mut bytes = Vec::new();
        for (key, value) in items {
            bytes.extend_from_slice(
                format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()).as_bytes(),
            );
        }
        self.reader.get_mut().write_all(&bytes)?;
        let mut stored = 0;
        for _ in items {
            stored += usize::from(self.line()? == "STORED");
        }
        Ok(stored)
    }

    /// One `get` for all `keys`: the values found, by key.
    pub fn get_many(&mut self, keys: &[String]) -> anyhow::Result<HashMap<String, String>> {
        let reply = self.call(&[&format!("get {}", keys.join(" "))])?;
        let mut found = HashMap::new();
        let mut lines = reply.into_iter();
        while let Some(line) = lines.next() {
            let Some(rest) = line.strip_prefix("VALUE ") else {
                ensure!(line == "END", "get: unexpected reply line {line:?}");
                break;
            };
            let key = rest.split(' ').next().unwrap_or_default().to_owned();
            found.insert(key, lines.next().unwrap_or_default());
        }
        Ok(found)
    }
}
