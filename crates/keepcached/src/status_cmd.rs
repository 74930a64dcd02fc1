//! `keepcached status`: the state of a tier at a glance.
//!
//! ```text
//! keepcached status [--json | --watch] [--interval SECS] [ADDR...]
//! ```
//!
//! Each ADDR is `host:port` (a cache server, memcached, or a keepcached proxy, told apart by
//! `stats backends`) or `http://host:port[/path]` (a node's Prometheus endpoint, read for its
//! VRRP state and priority). With no ADDR, the tier `keepcached up` starts by default. One
//! sample of every target ([`probe`]) becomes a [`Report`], printed as a table, as JSON, or
//! redrawn live with history ([`watch`]). An unreachable target is a row of its own, not an
//! error: the command exits 0 when every target answered and [`UNREACHABLE_EXIT`] otherwise.

mod probe;
mod prometheus;
mod watch;

use std::fmt::Write as _;

use clap::Parser;
use serde::Serialize;

pub use probe::{BackendFigures, Probe, ProxyFigures, Sample, ServerFigures, Target};
pub use prometheus::VrrpInstance;

use crate::UsageError;

/// The exit status when a target did not answer (documented in docs/status.md).
pub const UNREACHABLE_EXIT: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "keepcached status",
    about = "the state of a keepcached tier at a glance: VRRP nodes, proxies and their \
             backends, cache servers"
)]
struct Cli {
    /// Print the report as JSON, for scripts.
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    /// Redraw the report live in the terminal, with history; q or Ctrl-C quits.
    #[arg(long)]
    watch: bool,
    /// Seconds between two samples with --watch.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    interval: f64,
    /// HOST:PORT of a server or proxy, or http://HOST:PORT[/PATH] of a metrics endpoint.
    /// Default: the tier `keepcached up` starts (servers 127.0.0.1:11211 and :11212, proxy
    /// 127.0.0.1:12000).
    #[arg(value_name = "ADDR")]
    addrs: Vec<String>,
}

/// The targets with no ADDR given: `keepcached up`'s default tier.
const DEFAULT_TARGETS: [&str; 3] = ["127.0.0.1:12000", "127.0.0.1:11211", "127.0.0.1:11212"];

/// Runs the command; `Ok(false)` when a target was unreachable.
pub fn run(args: &[String]) -> anyhow::Result<bool> {
    let Some(cli) = crate::parse_command::<Cli>("keepcached status", args)? else {
        return Ok(true);
    };
    if !(cli.interval.is_finite() && (0.1..=3600.0).contains(&cli.interval)) {
        return Err(UsageError(format!(
            "--interval {}: between 0.1 and 3600 seconds",
            cli.interval
        ))
        .into());
    }
    let addrs: Vec<String> = if cli.addrs.is_empty() {
        DEFAULT_TARGETS.iter().map(|a| a.to_string()).collect()
    } else {
        cli.addrs
    };
    let targets = addrs
        .iter()
        .map(|a| Target::parse(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(UsageError)?;
    let mut probes: Vec<Probe> = targets.into_iter().map(Probe::new).collect();
    if cli.watch {
        if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            return Err(UsageError(
                "--watch draws on a terminal and stdout is not one; --json is for scripts".into(),
            )
            .into());
        }
        let interval = std::time::Duration::from_secs_f64(cli.interval);
        watch::run(&mut probes, interval)?;
        return Ok(true);
    }
    let samples = sample_all(&mut probes);
    let report = Report::new(&probes, &samples);
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(report.unreachable.is_empty())
}

/// One sample of every probe, taken in parallel so that targets that time out cost one
/// timeout together, not one each.
pub fn sample_all(probes: &mut [Probe]) -> Vec<Sample> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = probes
            .iter_mut()
            .map(|probe| scope.spawn(move || probe.sample()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Sample::Unreachable("the probe panicked".into()))
            })
            .collect()
    })
}

/// What one sample of every target found, sorted by kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// VRRP nodes (metrics endpoints).
    pub nodes: Vec<Node>,
    /// For each VRRP instance the nodes report, which of them is master (holds the VIP): none
    /// while a failover runs, two in a split brain.
    pub vip: Vec<VipHolder>,
    pub proxies: Vec<Entry<ProxyFigures>>,
    pub servers: Vec<Entry<ServerFigures>>,
    pub unreachable: Vec<Unreachable>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub target: String,
    pub instances: Vec<VrrpInstance>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VipHolder {
    pub instance: String,
    pub masters: Vec<String>,
}

/// A target's name with its figures (flattened in JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry<T> {
    pub target: String,
    #[serde(flatten)]
    pub figures: T,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unreachable {
    pub target: String,
    pub error: String,
}

impl Report {
    pub fn new(probes: &[Probe], samples: &[Sample]) -> Report {
        let mut report = Report::default();
        for (probe, sample) in probes.iter().zip(samples) {
            let target = probe.target.name();
            match sample.clone() {
                Sample::Server(figures) => report.servers.push(Entry { target, figures }),
                Sample::Proxy(figures) => report.proxies.push(Entry { target, figures }),
                Sample::Node(instances) => report.nodes.push(Node { target, instances }),
                Sample::Unreachable(error) => {
                    report.unreachable.push(Unreachable { target, error })
                }
            }
        }
        for node in &report.nodes {
            for instance in &node.instances {
                let holder = match report
                    .vip
                    .iter_mut()
                    .find(|v| v.instance == instance.instance)
                {
                    Some(holder) => holder,
                    None => {
                        report.vip.push(VipHolder {
                            instance: instance.instance.clone(),
                            masters: Vec::new(),
                        });
                        report.vip.last_mut().expect("pushed above")
                    }
                };
                if instance.state == "master" {
                    holder.masters.push(node.target.clone());
                }
            }
        }
        report
    }

    /// The report as the text tables `status` prints.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if !self.nodes.is_empty() {
            out.push_str("VRRP\n");
            out.push_str(&columns(&NODE_HEADER, &self.node_rows()));
            for line in self.vip_lines() {
                let _ = writeln!(out, "{line}");
            }
            out.push('\n');
        }
        for proxy in &self.proxies {
            let _ = writeln!(out, "PROXY {}", proxy_line(proxy));
            out.push_str(&columns(
                &BACKEND_HEADER,
                &proxy
                    .figures
                    .backends
                    .iter()
                    .map(backend_row)
                    .collect::<Vec<_>>(),
            ));
            out.push('\n');
        }
        if !self.servers.is_empty() {
            out.push_str("SERVERS\n");
            out.push_str(&columns(
                &SERVER_HEADER,
                &self.servers.iter().map(server_row).collect::<Vec<_>>(),
            ));
            out.push('\n');
        }
        if !self.unreachable.is_empty() {
            out.push_str("UNREACHABLE\n");
            let rows: Vec<Vec<String>> = self
                .unreachable
                .iter()
                .map(|u| vec![u.target.clone(), u.error.clone()])
                .collect();
            out.push_str(&columns(&["target", "error"], &rows));
            out.push('\n');
        }
        out
    }

    fn node_rows(&self) -> Vec<Vec<String>> {
        self.nodes
            .iter()
            .flat_map(|node| {
                node.instances.iter().map(|i| {
                    vec![
                        node.target.clone(),
                        i.instance.clone(),
                        i.state.clone(),
                        opt(i.priority),
                        opt(i.transitions),
                        opt(i.vips_held),
                    ]
                })
            })
            .collect()
    }

    /// `VIP of VI_1: held by NODE` (or by nobody, or by two nodes).
    fn vip_lines(&self) -> Vec<String> {
        self.vip
            .iter()
            .map(|v| match v.masters.as_slice() {
                [] => format!("VIP of {}: held by no node (no master)", v.instance),
                [one] => format!("VIP of {}: held by {one}", v.instance),
                many => format!(
                    "VIP of {}: claimed by {} nodes (split brain): {}",
                    v.instance,
                    many.len(),
                    many.join(", ")
                ),
            })
            .collect()
    }
}

const NODE_HEADER: [&str; 6] = [
    "node",
    "instance",
    "state",
    "priority",
    "transitions",
    "VIPs held",
];

const BACKEND_HEADER: [&str; 8] = [
    "  backend",
    "state",
    "for",
    "latency",
    "errors",
    "timeouts",
    "missed",
    "warm-up",
];

const SERVER_HEADER: [&str; 8] = [
    "server",
    "items",
    "memory used/limit",
    "hit ratio",
    "evictions",
    "conns",
    "uptime",
    "version",
];

fn proxy_line(proxy: &Entry<ProxyFigures>) -> String {
    let f = &proxy.figures;
    let up = f.backends.iter().filter(|b| b.state == "up").count();
    format!(
        "{}  {}  backends up {up}/{}  hit ratio {}  conns {}  uptime {}",
        proxy.target,
        match (f.serving, f.other_proxy_serving) {
            (true, _) => "serving",
            (false, true) => "standby (another proxy serves)",
            (false, false) => "idle",
        },
        f.backends.len(),
        percent(f.hit_ratio),
        f.connections,
        duration(f.uptime_s),
    )
}

fn backend_row(b: &BackendFigures) -> Vec<String> {
    let warm = match (b.warm_pct, b.warm_eta_s) {
        (Some(pct), Some(eta)) if pct < 100 => format!("{pct}% eta {}", duration(eta)),
        (Some(pct), _) => format!("{pct}%"),
        (None, _) => "-".into(),
    };
    vec![
        format!("  {}/{}", b.pool, b.addr),
        b.state.clone(),
        duration(b.state_s),
        format!("{}us", b.avg_latency_us),
        b.errors.to_string(),
        b.timeouts.to_string(),
        b.missed_keys.to_string(),
        warm,
    ]
}

fn server_row(server: &Entry<ServerFigures>) -> Vec<String> {
    let f = &server.figures;
    vec![
        server.target.clone(),
        f.items.to_string(),
        format!("{} / {}", size(f.bytes), size(f.limit_bytes)),
        percent(f.hit_ratio),
        f.evictions.to_string(),
        f.connections.to_string(),
        duration(f.uptime_s),
        f.version.clone(),
    ]
}

/// Rows under a header, each column as wide as its widest cell.
fn columns<S: AsRef<str>>(header: &[S], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.as_ref().len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (cell, width) in cells.zip(&widths) {
            let _ = write!(text, "{cell:<width$}  ");
        }
        text.trim_end().to_string() + "\n"
    };
    let mut out = line(&mut header.iter().map(|h| h.as_ref()));
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

fn opt(value: Option<u64>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

pub fn percent(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0))
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(state: &str) -> Sample {
        Sample::Node(vec![VrrpInstance {
            instance: "VI_1".into(),
            state: state.into(),
            priority: Some(100),
            transitions: Some(1),
            vips_held: None,
        }])
    }

    fn probes(names: &[&str]) -> Vec<Probe> {
        names
            .iter()
            .map(|n| Probe::new(Target::parse(n).unwrap()))
            .collect()
    }

    #[test]
    fn the_vip_holder_is_the_master_and_a_split_brain_shows() {
        let probes = probes(&["http://a:1", "http://b:1"]);
        let report = Report::new(&probes, &[node("master"), node("backup")]);
        assert_eq!(report.vip[0].masters, ["http://a:1/metrics"]);
        assert!(report
            .table()
            .contains("VIP of VI_1: held by http://a:1/metrics"));
        let report = Report::new(&probes, &[node("master"), node("master")]);
        assert!(report.table().contains("split brain"), "{}", report.table());
        let report = Report::new(&probes, &[node("backup"), node("fault")]);
        assert!(report.table().contains("held by no node"));
    }

    #[test]
    fn the_table_lines_up_and_names_unreachable_targets() {
        let probes = probes(&["127.0.0.1:1", "127.0.0.1:2"]);
        let server = ServerFigures {
            items: 12,
            bytes: 3 << 20,
            limit_bytes: 64 << 20,
            hit_ratio: Some(0.75),
            ..ServerFigures::default()
        };
        let report = Report::new(
            &probes,
            &[
                Sample::Server(server),
                Sample::Unreachable("connection refused".into()),
            ],
        );
        let table = report.table();
        let row = table
            .lines()
            .find(|l| l.starts_with("127.0.0.1:1 "))
            .unwrap();
        assert!(row.contains("3.0 MiB / 64.0 MiB"), "{table}");
        assert!(row.contains("75.0%"), "{table}");
        let header = table.lines().find(|l| l.starts_with("server")).unwrap();
        assert_eq!(
            header.find("items"),
            row.find(" 12 ").map(|i| i + 1),
            "{table}"
        );
        assert!(table.contains("UNREACHABLE\ntarget"), "{table}");
        assert!(table.contains("127.0.0.1:2  connection refused"), "{table}");
    }

    #[test]
    fn sizes_and_durations_read_at_a_glance() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(3661), "1h1m");
        assert_eq!(duration(90000), "1d1h");
        assert_eq!(percent(None), "-");
    }
}
