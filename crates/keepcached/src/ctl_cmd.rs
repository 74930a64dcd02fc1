//! `keepcached ctl`: the operator's commands to a running proxy, over its own port (the same
//! port, and the same access, as the clients').
//!
//! ```text
//! keepcached ctl [--proxy HOST:PORT] backends              each server's state, as a table
//! keepcached ctl [--proxy HOST:PORT] drain|hold|warm|up SERVER
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;

use crate::UsageError;

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(
    name = "keepcached ctl",
    about = "operator commands to a running keepcached proxy"
)]
struct Cli {
    /// The proxy to talk to.
    #[arg(long, short = 'p', default_value = "127.0.0.1:12000")]
    proxy: String,
    /// `backends`, or `drain|hold|warm|up SERVER` (SERVER as `host:port` or `pool/host:port`).
    #[arg(required = true, num_args = 1..=2)]
    command: Vec<String>,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(cli) = crate::parse_command::<Cli>("keepcached ctl", args)? else {
        return Ok(());
    };
    let request =
        match cli.command.as_slice() {
            [what] if what == "backends" => "stats backends\r\n".to_string(),
            [verb, server] if ["drain", "hold", "warm", "up"].contains(&verb.as_str()) => {
                format!("backend {verb} {server}\r\n")
            }
            _ => return Err(UsageError(
                "usage: keepcached ctl [--proxy HOST:PORT] backends | drain|hold|warm|up SERVER"
                    .into(),
            )
            .into()),
        };
    let addr = cli
        .proxy
        .to_socket_addrs()
        .with_context(|| format!("proxy address {}", cli.proxy))?
        .next()
        .with_context(|| format!("proxy address {} resolves to nothing", cli.proxy))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .with_context(|| format!("cannot connect to the proxy at {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!("the proxy closed the connection");
        }
        let line = line.trim_end().to_string();
        let last = !line.starts_with("STAT ");
        lines.push(line);
        if last {
            break;
        }
    }
    let last = lines.pop().unwrap_or_default();
    if !lines.is_empty() {
        print!("{}", backends_table(&lines));
    }
    match last.as_str() {
        "OK" | "END" => Ok(()),
        other => bail!("the proxy answered: {other}"),
    }
}

/// `STAT <pool>/<addr> state=.. k=v ...` lines as a table: one row per server, the fields the
/// operator reads first, then the rest as they came.
pub(crate) fn backends_table(lines: &[String]) -> String {
    let mut out = format!(
        "{:<32} {:<10} {:>8} {:>8} {:>8}  details\n",
        "server", "state", "for_s", "missed", "warm%"
    );
    for line in lines {
        let mut words = line.split(' ').skip(1);
        let name = words.next().unwrap_or("");
        let fields: Vec<(&str, &str)> = words.filter_map(|w| w.split_once('=')).collect();
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| *key == k)
                .map_or("-", |(_, v)| *v)
        };
        let rest: Vec<String> = fields
            .iter()
            .filter(|(k, _)| !["state", "state_s", "missed_keys", "warm_pct"].contains(k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push_str(&format!(
            "{:<32} {:<10} {:>8} {:>8} {:>8}  {}\n",
            name,
            get("state"),
            get("state_s"),
            get("missed_keys"),
            get("warm_pct"),
            rest.join(" ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_as_a_table() {
        let table = backends_table(&[
            "STAT main/127.0.0.1:11211 state=warming state_s=3 missed_keys=0 warm_pct=40 errors=1"
                .into(),
        ]);
        let row = table.lines().nth(1).unwrap();
        assert!(row.starts_with("main/127.0.0.1:11211"), "{table}");
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1..5], ["warming", "3", "0", "40"]);
        assert_eq!(cells[5], "errors=1");
    }
}
