//! `keepcached node`'s configuration file: the roles of one host in one TOML file.
//!
//! ```toml
//! [server]   # the cache server; keys named after memcached's long options (docs/node.md)
//! [proxy]    # exactly the keys of `keepcached proxy --config FILE`
//! [vrrp]     # exactly the keys of `keepcached vrrp --config FILE`
//! ```
//!
//! Any section may be absent; a node runs the roles its file configures. [`load`] reads and
//! validates the whole file before anything is bound: every problem comes back as a
//! [`Problem`] naming the file, the key (as `section.key`) and why, which the binary prints and
//! answers with exit status 64. The `[server]` section is checked by handing each key, in
//! turn, as its memcached flag to `keepcached server`'s own parser, so both take the same
//! values with the same messages, and a problem is blamed on the key that brought it in.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use keepcached_proxy::ProxyConfig;
use keepcached_vrrp::VrrpConfig;
use serde::{Deserialize, Serialize};

use crate::server_cmd;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// `ADDR:PORT`: every role's Prometheus metrics on one listener (docs/metrics.md). Before
    /// the sections, as TOML needs its top-level keys to be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrrp: Option<VrrpConfig>,
}

/// A memory size as memcached's `-m` and `-I` take it: a number (in the flag's unit: megabytes
/// for `memory_limit`, bytes for `max_item_size`) or a string with a k, m or g suffix.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Size {
    Number(u64),
    Text(String),
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Number(n) => write!(f, "{n}"),
            Size::Text(t) => f.write_str(t),
        }
    }
}

/// `[server]`: memcached's options under their long names (`--memory-limit` is
/// `memory_limit`), defaults as memcached's; `max_connections` is `-c` and `save_file` is `-e`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// `-l`: addresses to listen on; empty: all of them.
    pub listen: Vec<String>,
    /// `-p`: TCP port, 0 for none.
    pub port: u16,
    /// `-U`: UDP port, 0 for none.
    pub udp_port: u16,
    /// `-s`: a unix socket (turns TCP off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_socket: Option<PathBuf>,
    /// `-a`: the unix socket's permissions, octal.
    pub unix_mask: String,
    /// `-m`: memory for items.
    pub memory_limit: Size,
    /// `-I`: the largest item.
    pub max_item_size: Size,
    /// `-t`: worker threads.
    pub threads: usize,
    /// `-c`: simultaneous connections.
    pub max_connections: usize,
    /// `-R`: requests per connection before yielding.
    pub max_reqs_per_event: usize,
    /// `-b`: listen backlog.
    pub listen_backlog: u32,
    /// `-B`: ascii, binary or auto.
    pub protocol: String,
    /// `-e`: the restartable cache's file: loaded at start, saved at shutdown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub save_file: Option<PathBuf>,
    /// `-Y`: ASCII clients authenticate first (user:password lines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_file: Option<PathBuf>,
    /// `-M`
    pub disable_evictions: bool,
    /// `-C`
    pub disable_cas: bool,
    /// `-F`
    pub disable_flush_all: bool,
    /// `-A`: allow the `shutdown` command (which stops the whole node, the clean way).
    pub enable_shutdown: bool,
    /// `-k`
    pub lock_memory: bool,
    /// `-o`: memcached's extended options, one per entry (`"idle_timeout=600"`).
    pub extended: Vec<String>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: Vec::new(),
            port: 11211,
            udp_port: 0,
            unix_socket: None,
            unix_mask: "0700".into(),
            memory_limit: Size::Number(64),
            max_item_size: Size::Text("1m".into()),
            threads: 4,
            max_connections: 1024,
            max_reqs_per_event: 20,
            listen_backlog: 1024,
            protocol: "auto".into(),
            save_file: None,
            auth_file: None,
            disable_evictions: false,
            disable_cas: false,
            disable_flush_all: false,
            enable_shutdown: false,
            lock_memory: false,
            extended: Vec::new(),
        }
    }
}

impl ServerSection {
    /// Each key with the memcached flags it stands for, in the order they are checked: a
    /// problem that needs two keys (`max_item_size` above half of `memory_limit`) is blamed on
    /// the later one.
    fn flags(&self) -> Vec<(&'static str, Vec<String>)> {
        let path = |p: &Path| p.display().to_string();
        let mut keys = vec![
            ("port", vec![format!("--port={}", self.port)]),
            ("udp_port", vec![format!("--udp-port={}", self.udp_port)]),
            ("unix_mask", vec![format!("--unix-mask={}", self.unix_mask)]),
            (
                "memory_limit",
                vec![format!("--memory-limit={}", self.memory_limit)],
            ),
            (
                "max_item_size",
                vec![format!("--max-item-size={}", self.max_item_size)],
            ),
            ("threads", vec![format!("--threads={}", self.threads)]),
            (
                "max_connections",
                vec![format!("--conn-limit={}", self.max_connections)],
            ),
            (
                "max_reqs_per_event",
                vec![format!("--max-reqs-per-event={}", self.max_reqs_per_event)],
            ),
            (
                "listen_backlog",
                vec![format!("--listen-backlog={}", self.listen_backlog)],
            ),
            ("protocol", vec![format!("--protocol={}", self.protocol)]),
        ];
        for addr in &self.listen {
            keys.push(("listen", vec![format!("--listen={addr}")]));
        }
        let mut optional = |key, flag: &str, value: Option<String>| {
            if let Some(value) = value {
                keys.push((key, vec![format!("{flag}={value}")]));
            }
        };
        optional(
            "unix_socket",
            "--unix-socket",
            self.unix_socket.as_deref().map(path),
        );
        optional(
            "save_file",
            "--memory-file",
            self.save_file.as_deref().map(path),
        );
        optional(
            "auth_file",
            "--auth-file",
            self.auth_file.as_deref().map(path),
        );
        for (key, flag, on) in [
            (
                "disable_evictions",
                "--disable-evictions",
                self.disable_evictions,
            ),
            ("disable_cas", "--disable-cas", self.disable_cas),
            (
                "disable_flush_all",
                "--disable-flush-all",
                self.disable_flush_all,
            ),
            ("enable_shutdown", "--enable-shutdown", self.enable_shutdown),
            ("lock_memory", "--lock-memory", self.lock_memory),
        ] {
            if on {
                keys.push((key, vec![flag.to_string()]));
            }
        }
        for option in &self.extended {
            keys.push(("extended", vec![format!("--extended={option}")]));
        }
        keys
    }

    /// The server's plan, as `keepcached server` would make it from the same options.
    fn plan(&self) -> Result<server_cmd::ServerPlan, (String, String)> {
        let mut args = Vec::new();
        let mut plan = None;
        for (key, flags) in self.flags() {
            args.extend(flags);
            match server_cmd::parse(&args) {
                Ok(server_cmd::Parsed::Run(p)) => plan = Some(p),
                Ok(server_cmd::Parsed::Print(_)) => {
                    return Err((key.into(), "not a server option".into()))
                }
                Err(e) => {
                    // clap's messages end in a usage block meant for a command line.
                    let why = e.0.lines().next().unwrap_or_default().trim().to_string();
                    let why = why.strip_prefix("error: ").unwrap_or(&why).to_string();
                    return Err((key.into(), why));
                }
            }
        }
        plan.map(|p| *p)
            .ok_or_else(|| (String::new(), "no options".into()))
    }
}

/// A file that cannot be used: which file, which key, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    /// `section.key`; empty for the file as a whole.
    pub key: String,
    /// The line, when the TOML parser knows it.
    pub line: Option<usize>,
    pub why: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ": line {line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.why)
    }
}

impl std::error::Error for Problem {}

/// A validated node configuration, ready to bind.
#[derive(Debug)]
pub struct Node {
    /// The effective configuration: what `--print-config` shows.
    pub config: NodeConfig,
    pub server: Option<server_cmd::ServerPlan>,
}

/// Reads and validates `path`.
pub fn load(path: &Path) -> Result<Node, Problem> {
    let problem = |key: &str, why: String| Problem {
        path: path.to_path_buf(),
        key: key.to_string(),
        line: None,
        why,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| problem("", format!("cannot read: {e}")))?;
    parse(&text, path)
}

/// Parses and validates a file's text; `path` is for messages.
pub fn parse(text: &str, path: &Path) -> Result<Node, Problem> {
    let problem = |key: String, why: String| Problem {
        path: path.to_path_buf(),
        key,
        line: None,
        why,
    };
    let mut config: NodeConfig = toml::from_str(text).map_err(|e| syntax(text, path, &e))?;
    if config.server.is_none() && config.proxy.is_none() && config.vrrp.is_none() {
        return Err(problem(
            String::new(),
            "nothing to run: configure at least one of [server], [proxy] and [vrrp]".into(),
        ));
    }
    let server = match &config.server {
        Some(section) => Some(
            section
                .plan()
                .map_err(|(key, why)| problem(format!("server.{key}"), why))?,
        ),
        None => None,
    };
    if let Some(proxy) = &mut config.proxy {
        proxy.validate().map_err(|e| problem_from_proxy(path, e))?;
        // The proxy listens on the VIP on every node, held or not, so that it serves the
        // moment the VIP arrives and never needs a restart when it moves.
        if config.vrrp.is_some() {
            proxy.freebind = true;
        }
    }
    if let Some(vrrp) = &config.vrrp {
        vrrp.validate().map_err(|e| match e {
            keepcached_vrrp::ConfError::Invalid { key, why } => problem(format!("vrrp.{key}"), why),
            other => problem("vrrp".into(), other.to_string()),
        })?;
    }
    if let (Some(plan), Some(proxy)) = (&server, &config.proxy) {
        check_ports(plan, proxy).map_err(|(key, why)| problem(key, why))?;
    }
    if let Some(addr) = &config.metrics {
        keepcached_metrics::parse_addr(addr).map_err(|why| problem("metrics".into(), why))?;
    }
    Ok(Node { config, server })
}

fn problem_from_proxy(path: &Path, e: keepcached_proxy::ConfigError) -> Problem {
    let (key, why) = match e {
        keepcached_proxy::ConfigError::Invalid { key, why } => (format!("proxy.{key}"), why),
        other => ("proxy".into(), other.to_string()),
    };
    Problem {
        path: path.to_path_buf(),
        key,
        line: None,
        why,
    }
}

/// The proxy and the server of one node cannot share a port on a shared address (the
/// proxy's default, 0.0.0.0:11211, is the server's): said here rather than as "address in use"
/// after the server has bound.
fn check_ports(plan: &server_cmd::ServerPlan, proxy: &ProxyConfig) -> Result<(), (String, String)> {
    let server = &plan.settings;
    if server.port == 0 || server.unix_socket.is_some() {
        return Ok(());
    }
    for (i, addr) in proxy.listen.iter().enumerate() {
        let Ok(spec) = keepcached_proxy::config::ServerSpec::parse(addr) else {
            continue;
        };
        if spec.port != server.port {
            continue;
        }
        let host: Option<IpAddr> = spec.host.trim_matches(['[', ']']).parse().ok();
        let overlaps = match host {
            Some(ip) => {
                ip.is_unspecified()
                    || server.listen.is_empty()
                    || server.listen.iter().any(|l| *l == ip || l.is_unspecified())
            }
            None => true,
        };
        if overlaps {
            return Err((
                format!("proxy.listen[{i}]"),
                format!(
                    "{addr} is also the cache server's port ([server] port = {}): give the \
                     proxy another port (the seed's is 12000)",
                    server.port
                ),
            ));
        }
    }
    Ok(())
}

/// A TOML error with the key it is about: the table header above the error and the key on
/// its line, found from the error's span.
fn syntax(text: &str, path: &Path, e: &toml::de::Error) -> Problem {
    let why = e.message().trim().to_string();
    let Some(span) = e.span() else {
        return Problem {
            path: path.to_path_buf(),
            key: String::new(),
            line: None,
            why,
        };
    };
    let before = &text[..span.start.min(text.len())];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or_default().trim();
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| {
            l.trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
        });
    let key = match (line.starts_with('['), line.split_once('=')) {
        (true, _) => line.trim_matches(['[', ']']).trim().to_string(),
        (false, Some((key, _))) => match table {
            Some(table) => format!("{table}.{}", key.trim()),
            None => key.trim().to_string(),
        },
        (false, None) => table.unwrap_or_default().to_string(),
    };
    Problem {
        path: path.to_path_buf(),
        key,
        line: Some(line_no),
        why,
    }
}

impl NodeConfig {
    /// The effective configuration as TOML, every default filled in (`--print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text, Path::new("node.toml")).unwrap_err().to_string()
    }

    const PROXY: &str = "[proxy]\nlisten = [\"127.0.0.1:12000\"]\n\
                         pools = [{ name = \"main\", servers = [\"127.0.0.1:11211\"] }]\n";

    #[test]
    fn the_contract_keys_map_onto_memcached_flags() {
        let node = parse(
            "[server]\nlisten = [\"127.0.0.1\"]\nport = 11311\nmemory_limit = \"32m\"\n\
             threads = 2\nmax_connections = 100\n",
            Path::new("node.toml"),
        )
        .unwrap();
        let s = node.server.unwrap().settings;
        assert_eq!(s.port, 11311);
        assert_eq!(s.max_bytes, 32 * 1024 * 1024);
        assert_eq!((s.threads, s.max_connections), (2, 100));
        assert_eq!(s.listen, vec![IpAddr::from([127, 0, 0, 1])]);
        let plain = parse("[server]\nmemory_limit = 16\n", Path::new("n")).unwrap();
        assert_eq!(plain.server.unwrap().settings.max_bytes, 16 * 1024 * 1024);
    }

    #[test]
    fn problems_name_the_file_the_key_and_why() {
        let e = err("[server]\nport = 1\ncolour = 2\n");
        assert!(
            e.starts_with("node.toml: line 3: server.colour: unknown field `colour`"),
            "{e}"
        );
        let e = err("[server]\nthreads = 0\n");
        assert_eq!(
            e,
            "node.toml: server.threads: Number of threads must be greater than 0"
        );
        let e = err("[server]\nmemory_limit = 2\nmax_item_size = \"2m\"\n");
        assert!(e.starts_with("node.toml: server.max_item_size: "), "{e}");
        let e = err("[server]\nport = \"x\"\n");
        assert!(e.starts_with("node.toml: line 2: server.port: "), "{e}");
        let e = err(&PROXY.replace("127.0.0.1:11211", "nohost:x"));
        assert!(
            e.starts_with("node.toml: proxy.pools[0].servers[0]: "),
            "{e}"
        );
        let e = err("[vrrp]\n");
        assert_eq!(e, "node.toml: vrrp.instance: no instance configured");
        assert!(err("").contains("nothing to run"));
        let e = err("[servr]\n");
        assert!(e.contains("servr") && e.contains("unknown field"), "{e}");
    }

    #[test]
    fn the_proxy_may_not_take_the_servers_port() {
        let e = err(&format!("[server]\n{}", PROXY.replace("12000", "11211")));
        assert!(e.starts_with("node.toml: proxy.listen[0]: "), "{e}");
        assert!(parse(&format!("[server]\n{PROXY}"), Path::new("n")).is_ok());
    }

    #[test]
    fn the_effective_config_round_trips() {
        let node = parse(&format!("[server]\nport = 11311\n{PROXY}"), Path::new("n")).unwrap();
        let text = node.config.to_toml();
        assert!(text.contains("memory_limit = 64"), "{text}");
        assert!(text.contains("drain_timeout_ms = 5000"), "{text}");
        let again = parse(&text, Path::new("n")).unwrap();
        assert_eq!(again.config, node.config);
    }
}
