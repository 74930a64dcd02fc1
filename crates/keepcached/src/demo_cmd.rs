//! `keepcached demo` (root): the seed's two-host tier built in network namespaces, and the
//! seed's test section played against it as a transcript, each step with its time and its
//! check.
//!
//! ```text
//!   web         198.18.111.10    the client (the seed's telnet host)
//!   memcached1  198.18.111.11    cache server :11211, proxy VIP:12000, VRRP priority 100
//!   memcached2  198.18.111.12    cache server :11211, proxy VIP:12000, VRRP priority 99
//!   VIP         198.18.111.100   held by the VRRP master
//! ```
//!
//! The steps: a `set` through the VIP, the value read on both servers directly (replication),
//! memcached1's node stopped with SIGTERM while a client writes continuously (the VIP moves,
//! writes go on; failed operations counted, no acknowledged write lost), a key rewritten while
//! memcached1 is down, memcached1 restarted (its server comes back from its save file with the
//! old value: the proxies flush and warm it, and no read through the VIP is stale meanwhile),
//! then every key read back through the VIP and on the returned server alone.
//!
//! Exit status: 0 when every step's check passed; 1 when one failed (its number and name are
//! printed); 77 (EX_NOPERM) when not run as root; 64 for arguments; 128 + N when stopped by
//! signal N (SIGINT, SIGTERM or SIGHUP), after cleaning up. Everything it creates is removed on
//! every one of these paths, and a run that was killed (SIGKILL) is cleaned up by the next.

mod client;
mod interrupt;
mod topology;
mod transcript;
mod writer;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use nix::sys::signal::Signal;

use client::Conn;
use interrupt::{check_interrupt, pause, wait_for};
use topology::Topology;
use transcript::Transcript;
use writer::{verify, Writer};

const WEB: &str = "web";
const WEB_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 111, 10);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 111, 100);
const SERVER_PORT: u16 = 11211;
const PROXY_PORT: u16 = 12000;
/// The working set loaded before the failover: keys `item:<n>`, 100-byte values.
const WORKING_SET: usize = 10_000;
/// Keys per pipelined write or multi-get.
const BATCH: usize = 500;
/// Exit status without root: sysexits.h's EX_NOPERM.
const EX_NOPERM: u8 = 77;
const EX_USAGE: u8 = 64;

/// One of the seed's cache hosts.
#[derive(Debug, Clone, Copy)]
struct Host {
    name: &'static str,
    addr: Ipv4Addr,
    priority: u8,
}

const MEMCACHED1: Host = Host {
    name: "memcached1",
    addr: Ipv4Addr::new(198, 18, 111, 11),
    priority: 100,
};
const MEMCACHED2: Host = Host {
    name: "memcached2",
    addr: Ipv4Addr::new(198, 18, 111, 12),
    priority: 99,
};
const HOSTS: [Host; 2] = [MEMCACHED1, MEMCACHED2];

impl Host {
    fn server(&self) -> SocketAddr {
        SocketAddrV4::new(self.addr, SERVER_PORT).into()
    }

    /// The proxy's own address (it also listens on the VIP): where `stats backends` is asked.
    fn proxy(&self) -> SocketAddr {
        SocketAddrV4::new(self.addr, PROXY_PORT).into()
    }
}

fn vip() -> SocketAddr {
    SocketAddrV4::new(VIP, PROXY_PORT).into()
}

const USAGE: &str = "\
usage: keepcached demo

Builds the two-host tier (hosts web, memcached1, memcached2, a bridge and the VIP
198.18.111.100) in network namespaces named kcdemo<pid>-*, plays the failover runbook
and prints what happens. Needs root and iproute2. Exit status: 0 every check passed,
1 a check failed (named), 77 not root, 128+N stopped by signal N (cleaned up first).
";

pub fn run(args: &[String]) -> ExitCode {
    match args {
        [] => {}
        [h] if h == "-h" || h == "--help" => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprint!("keepcached demo: takes no arguments\n{USAGE}");
            return ExitCode::from(EX_USAGE);
        }
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "keepcached demo: needs root (it creates network namespaces, a bridge and a VIP); \
             try: sudo keepcached demo"
        );
        return ExitCode::from(EX_NOPERM);
    }
    if let Err(e) = interrupt::watch_signals() {
        eprintln!("keepcached demo: {e:#}");
        return ExitCode::FAILURE;
    }
    let mut transcript = Transcript::new();
    let result = play(&mut transcript);
    transcript.finish(result)
}

/// The demo from start to teardown. The topology is removed by its `Drop` when a step fails or
/// panics; on success, the last step removes it and checks that nothing is left.
fn play(tx: &mut Transcript) -> anyhow::Result<()> {
    let leftovers = topology::remove_leftovers()?;
    let mut demo = Demo::build(tx, &leftovers)?;
    let result = demo.runbook(tx);
    if result.is_err() && !interrupt::interrupted() {
        demo.show_logs();
    }
    result?;
    tx.begin("tear down: stop both nodes, delete the namespaces");
    for host in HOSTS {
        if let Some(node) = demo.nodes.remove(host.name) {
            let statuses = node.stop(&mut demo.t)?;
            tx.say(format!("{}: {statuses}", host.name));
        }
    }
    let prefix = demo.t.prefix().to_string();
    let removed = demo.t.teardown(Duration::from_secs(5))?;
    tx.say(format!("removed {}", removed.join(" ")));
    let left: Vec<String> = topology::namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    ensure!(left.is_empty(), "namespaces left: {}", left.join(" "));
    tx.ok(format!("no namespace named {prefix}-* is left"));
    Ok(())
}

/// One host's roles, running as one `keepcached node` from a generated file: the seed's
/// memcached, magent and keepalived of that host.
#[derive(Debug)]
struct Node {
    pid: u32,
}

impl Node {
    fn start(t: &mut Topology, host: Host) -> anyhow::Result<Node> {
        let exe = std::env::current_exe().context("locating keepcached")?;
        let exe = exe.to_str().context("keepcached's path is not UTF-8")?;
        let config = t.dir.join(format!("{}.toml", host.name));
        let save_file = t.dir.join(format!("{}-cache.dat", host.name));
        std::fs::write(&config, node_toml(host, &save_file))
            .with_context(|| format!("writing {}", config.display()))?;
        let config = config.to_str().context("the scratch path is not UTF-8")?;
        let pid = t.spawn(host.name, host.name, &[exe, "node", "--config", config])?;
        Ok(Node { pid })
    }

    fn describe(&self, t: &Topology, host: Host) -> String {
        format!(
            "keepcached node --config {} (pid {})",
            t.dir.join(format!("{}.toml", host.name)).display(),
            self.pid
        )
    }

    /// Asks the node to stop (SIGTERM), without waiting.
    fn terminate(&self, t: &Topology) {
        t.signal(self.pid, Signal::SIGTERM);
    }

    /// How the node exited, if it has (while it should not have).
    fn exited(&self, t: &mut Topology) -> Option<String> {
        t.exited(self.pid)
            .map(|status| format!("node (pid {}) exited: {status}", self.pid))
    }

    /// Stops the node (SIGTERM, then SIGKILL after 10 s) and says how it exited; fails unless
    /// it exited 0 by itself.
    fn stop(self, t: &mut Topology) -> anyhow::Result<String> {
        let (status, killed) = t.stop(self.pid, Duration::from_secs(10))?;
        ensure!(!killed, "the node did not stop within 10 s of SIGTERM");
        ensure!(status.success(), "the node did not stop cleanly: {status}");
        Ok(format!("node {status}"))
    }
}

/// The seed's host as a node file. `[server]`: `memcached -m 32m -p 11211`, restartable
/// (`-e`). `[proxy]`: the seed's magent line (`-n 51200 -l VIP -p 12000 -s memcached1 -b
/// memcached2`), listening on the VIP before this host holds it and on the host's own address,
/// where the demo asks for `stats backends`. `[vrrp]`: the seed's keepalived.conf (VI_1, vrid
/// 51, PASS 1111, advert 1 s, the VIP labelled ens32:2); the node tracks its proxy and server
/// in-process, where the seed ran a script.
fn node_toml(host: Host, save_file: &std::path::Path) -> String {
    format!(
        r#"[server]
listen = ["{addr}", "127.0.0.1"]
port = {SERVER_PORT}
memory_limit = "32m"
save_file = {save_file:?}

[proxy]
listen = ["{VIP}:{PROXY_PORT}", "{addr}:{PROXY_PORT}"]
freebind = true
max_connections = 51200
pools = [
  {{ name = "main", servers = ["{m1}"] }},
  {{ name = "backup", servers = ["{m2}"] }},
]

[vrrp]
[[vrrp.instance]]
name = "VI_1"
interface = "{iface}"
vrid = 51
priority = {priority}
advert_interval = 1
auth_pass = "1111"
vips = [{{ address = "{VIP}/32", label = "{iface}:2" }}]
"#,
        addr = host.addr,
        m1 = MEMCACHED1.server(),
        m2 = MEMCACHED2.server(),
        iface = topology::INTERFACE,
        priority = host.priority,
    )
}

#[derive(Debug)]
struct Demo {
    t: Topology,
    nodes: HashMap<&'static str, Node>,
}

impl Demo {
    fn build(tx: &mut Transcript, leftovers: &[String]) -> anyhow::Result<Demo> {
        tx.begin("build the hosts: network namespaces, a bridge, addresses");
        if !leftovers.is_empty() {
            tx.say(format!(
                "removed what a killed demo left: {}",
                leftovers.join(" ")
            ));
        }
        let t = Topology::build(&[
            (WEB, WEB_ADDR),
            (MEMCACHED1.name, MEMCACHED1.addr),
            (MEMCACHED2.name, MEMCACHED2.addr),
        ])?;
        tx.say(format!(
            "{:<11} {:<15} the client (the seed's telnet host)",
            WEB, WEB_ADDR
        ));
        for h in HOSTS {
            tx.say(format!(
                "{:<11} {:<15} cache server :{SERVER_PORT}, proxy on the VIP :{PROXY_PORT}, VRRP priority {}",
                h.name, h.addr, h.priority
            ));
        }
        tx.say(format!("{:<11} {:<15} held by the VRRP master", "VIP", VIP));
        tx.ok(format!("namespaces {}-*, bridge br0", t.prefix()));
        Ok(Demo {
            t,
            nodes: HashMap::new(),
        })
    }

    fn runbook(&mut self, tx: &mut Transcript) -> anyhow::Result<()> {
        self.start_nodes(tx)?;
        self.set_through_vip(tx)?;
        self.get_on_both_servers(tx)?;
        self.load_working_set(tx)?;
        let writer = Writer::start(self.t.ns(WEB))?;
        let stopped_at = self.stop_memcached1(tx, &writer)?;
        self.writes_go_on(tx)?;
        let acked = self.failover_counts(tx, writer, stopped_at)?;
        self.restart_memcached1(tx)?;
        self.read_back(tx, &acked)
    }

    /// A connection from the client host.
    fn web(&self, addr: SocketAddr) -> anyhow::Result<Conn> {
        let _inside = self.t.enter(WEB)?;
        Conn::connect(addr)
    }

    /// A telnet session from `web`, shown as the seed shows it.
    fn telnet(
        &self,
        tx: &Transcript,
        addr: SocketAddr,
        requests: &[&[&str]],
    ) -> anyhow::Result<Vec<Vec<String>>> {
        tx.say(format!("web$ telnet {} {}", addr.ip(), addr.port()));
        let mut conn = self.web(addr)?;
        let mut replies = Vec::new();
        for request in requests {
            for line in *request {
                tx.say(format!("> {line}"));
            }
            let reply = conn.call(request)?;
            for line in &reply {
                tx.say(format!("< {line}"));
            }
            replies.push(reply);
        }
        Ok(replies)
    }

    /// Which cache hosts hold the VIP.
    fn holders(&self) -> Vec<&'static str> {
        HOSTS
            .iter()
            .filter(|h| self.t.has_vip(h.name, VIP))
            .map(|h| h.name)
            .collect()
    }

    /// `server`'s state in the `stats backends` of the proxy at `proxy` (None: no answer).
    fn backend(&self, proxy: SocketAddr, server: SocketAddr) -> Option<BackendLine> {
        let mut conn = self.web(proxy).ok()?;
        let lines = conn.call(&["stats backends"]).ok()?;
        let name = format!("/{server} ");
        lines
            .iter()
            .find(|l| l.contains(&name))
            .map(|l| BackendLine(l.clone()))
    }

    /// `keepcached ctl --proxy ADDR backends`, run from web.
    fn ctl_backends(&self, tx: &Transcript, proxy: SocketAddr) -> anyhow::Result<()> {
        let mut conn = self.web(proxy)?;
        let lines = conn.call(&["stats backends"])?;
        let stats: Vec<String> = lines
            .into_iter()
            .filter(|l| l.starts_with("STAT "))
            .collect();
        tx.say(format!("web$ keepcached ctl --proxy {proxy} backends"));
        tx.say(crate::ctl_cmd::backends_table(&stats));
        Ok(())
    }

    /// Fails when a role of a running host has exited.
    fn nodes_alive(&mut self) -> anyhow::Result<()> {
        for host in HOSTS {
            if let Some(node) = self.nodes.get(host.name) {
                if let Some(died) = node.exited(&mut self.t) {
                    bail!("{}'s {died}", host.name);
                }
            }
        }
        Ok(())
    }

    fn start_nodes(&mut self, tx: &mut Transcript) -> anyhow::Result<()> {
        tx.begin("start memcached1 and memcached2 (server, proxy, VRRP each); wait for the VIP");
        for host in HOSTS {
            let node = Node::start(&mut self.t, host)?;
            tx.say(format!("{}: {}", host.name, node.describe(&self.t, host)));
            self.nodes.insert(host.name, node);
        }
        for host in HOSTS {
            for server in HOSTS {
                wait_for(
                    &format!("{}'s proxy seeing {}'s server up", host.name, server.name),
                    Duration::from_secs(10),
                    || {
                        self.nodes_alive()?;
                        Ok(self
                            .backend(host.proxy(), server.server())
                            .filter(|b| b.state() == "up"))
                    },
                )?;
            }
        }
        tx.event("both proxies see both servers up; VRRP electing (Master_Down_Interval 3.6 s)");
        wait_for(
            "the VIP on memcached1 alone",
            Duration::from_secs(15),
            || {
                self.nodes_alive()?;
                Ok((self.holders() == [MEMCACHED1.name]).then_some(()))
            },
        )?;
        tx.ok(format!(
            "VIP {VIP} on memcached1 (VRRP MASTER, priority 100)"
        ));
        Ok(())
    }

    fn set_through_vip(&self, tx: &mut Transcript) -> anyhow::Result<()> {
        tx.begin("distributed write: set test through the VIP (the seed's telnet session)");
        let replies = self.telnet(tx, vip(), &[&["set test 0 0 5", "nihao"], &["get test"]])?;
        ensure!(replies[0] == ["STORED"], "set answered {:?}", replies[0]);
        ensure!(
            replies[1] == ["VALUE test 0 5", "nihao", "END"],
            "get answered {:?}",
            replies[1]
        );
        tx.ok("STORED, and read back through the VIP");
        Ok(())
    }

    fn get_on_both_servers(&self, tx: &mut Transcript) -> anyhow::Result<()> {
        tx.begin("get test directly on each cache server");
        for host in HOSTS {
            let replies = self.telnet(tx, host.server(), &[&["get test"]])?;
            ensure!(
                replies[0] == ["VALUE test 0 5", "nihao", "END"],
                "{} answered {:?}",
                host.name,
                replies[0]
            );
        }
        tx.ok("both servers hold test = nihao: the proxy replicated the write");
        Ok(())
    }

    fn load_working_set(&self, tx: &mut Transcript) -> anyhow::Result<()> {
        tx.begin(
            "load a working set through the VIP, so that a returning server has something to miss",
        );
        let mut conn = self.web(vip())?;
        let mut stored = 0;
        for batch in working_set().chunks(BATCH) {
            check_interrupt()?;
            stored += conn.set_many(batch)?;
        }
        tx.say(format!(
            "web: {stored} of {WORKING_SET} sets of 100-byte values stored through the VIP, pipelined"
        ));
        ensure!(
            stored == WORKING_SET,
            "{} sets not stored",
            WORKING_SET - stored
        );
        for host in HOSTS {
            let held = self.count_working_set(host.server())?;
            tx.say(format!("{}'s server holds {held} of them", host.name));
            ensure!(
                held == WORKING_SET,
                "{}'s server holds {held} of {WORKING_SET}",
                host.name
            );
        }
        tx.ok(format!("{WORKING_SET} keys on both servers"));
        Ok(())
    }

    /// How many of the working set's keys `addr` holds with their values.
    fn count_working_set(&self, addr: SocketAddr) -> anyhow::Result<usize> {
        let mut conn = self.web(addr)?;
        let mut held = 0;
        for batch in working_set().chunks(BATCH) {
            check_interrupt()?;
            let keys: Vec<String> = batch.iter().map(|(k, _)| k.clone()).collect();
            let found = conn.get_many(&keys)?;
            held += batch
                .iter()
                .filter(|(k, v)| found.get(k) == Some(v))
                .count();
        }
        Ok(held)
    }

    /// SIGTERM to memcached1's node while `writer` writes: returns when it was sent.
    fn stop_memcached1(&mut self, tx: &mut Transcript, writer: &Writer) -> anyhow::Result<Instant> {
        tx.begin("fault: stop memcached1 (SIGTERM) while web writes through the VIP");
        wait_for("the client's first writes", Duration::from_secs(5), || {
            Ok((writer.acked() >= 100).then_some(()))
        })?;
        tx.say(format!(
            "web: writing keys failover:0..99 through the VIP, one connection ({} acknowledged so far)",
            writer.acked()
        ));
        let node = self
            .nodes
            .remove(MEMCACHED1.name)
            .context("memcached1 is not running")?;
        let sent = Instant::now();
        node.terminate(&self.t);
        tx.event(format!("memcached1$ kill -TERM {}", node.pid));
        let moved = wait_for(
            "the VIP on memcached2 alone",
            Duration::from_secs(10),
            || Ok((self.holders() == [MEMCACHED2.name]).then(Instant::now)),
        )?;
        let took = moved - sent;
        tx.event(format!(
            "VIP {VIP} now on memcached2, {:.3}s after the SIGTERM",
            took.as_secs_f64()
        ));
        tx.figure(format!(
            "VIP moved to memcached2 {:.3}s after memcached1's SIGTERM",
            took.as_secs_f64()
        ));
        let at_move = writer.acked();
        wait_for(
            "a write acknowledged through the VIP after it moved",
            Duration::from_secs(10),
            || Ok((writer.acked() > at_move).then_some(())),
        )?;
        let again = sent.elapsed().as_secs_f64();
        tx.event(format!(
            "web: writes acknowledged again, {again:.3}s after the SIGTERM"
        ));
        tx.figure(format!(
            "the client's writes acknowledged again {again:.3}s after the SIGTERM"
        ));
        let statuses = node.stop(&mut self.t)?;
        tx.say(format!("memcached1 stopped: {statuses}"));
        tx.say(format!("memcached2$ ip a | grep {}:2", topology::INTERFACE));
        for line in self.t.addr_lines(MEMCACHED2.name, VIP) {
            tx.say(format!("    {line}"));
        }
        tx.ok(format!(
            "VIP on memcached2 after {:.3}s; memcached1's node exited cleanly",
            took.as_secs_f64()
        ));
        Ok(sent)
    }

    fn writes_go_on(&self, tx: &mut Transcript) -> anyhow::Result<()> {
        tx.begin("writes still work: rewrite test through the VIP while memcached1 is down");
        let replies = self.telnet(tx, vip(), &[&["set test 0 0 7", "zaijian"], &["get test"]])?;
        ensure!(replies[0] == ["STORED"], "set answered {:?}", replies[0]);
        ensure!(
            replies[1] == ["VALUE test 0 7", "zaijian", "END"],
            "get answered {:?}",
            replies[1]
        );
        // The proxy records the write memcached1 missed (`missed_keys`) and keeps the server out
        // of reads of that key: `suspect` until its failures mark it `down`.
        let out = wait_for(
            "memcached2's proxy recording memcached1's missed write",
            Duration::from_secs(5),
            || {
                Ok(self
                    .backend(MEMCACHED2.proxy(), MEMCACHED1.server())
                    .filter(|b| {
                        ["down", "suspect"].contains(&b.state())
                            && b.field("missed_keys").is_some_and(|n| n != "0")
                    }))
            },
        )?;
        tx.say(format!(
            "memcached2's proxy: memcached1's server {}",
            out.summary()
        ));
        tx.ok("served by memcached2's proxy, which records what memcached1 missed");
        Ok(())
    }

    /// Lets the writer go on after the failover, stops it, and checks every key it had
    /// acknowledged through the VIP. Returns the acknowledged values.
    fn failover_counts(
        &self,
        tx: &mut Transcript,
        writer: Writer,
        stopped_at: Instant,
    ) -> anyhow::Result<HashMap<String, u64>> {
        tx.begin("count the client's operations across the failover");
        let at_move = writer.acked();
        wait_for(
            "200 writes acknowledged after the VIP moved",
            Duration::from_secs(10),
            || Ok((writer.acked() >= at_move + 200).then_some(())),
        )?;
        let report = writer.stop()?;
        tx.say(format!(
            "web: {} writes acknowledged, {} failed; longest wait between two acknowledged \
             writes {:.3}s",
            report.ok,
            report.failed,
            report.longest_pause.as_secs_f64()
        ));
        for f in &report.first_failures {
            let since = f.at.saturating_duration_since(stopped_at).as_secs_f64();
            tx.say(format!("  failed {since:.3}s after the SIGTERM: {}", f.why));
        }
        if report.failed > writer::SHOWN as u64 {
            tx.say(format!(
                "  ... and {} more",
                report.failed - writer::SHOWN as u64
            ));
        }
        // Failures belong to the failover: none before the SIGTERM, and none among the last
        // 100 writes, which all came after the VIP moved. They come in order, so the first
        // and the latest tell.
        if let Some(first) = report.first_failures.first() {
            ensure!(
                first.at >= stopped_at,
                "a client operation failed before the SIGTERM: {}",
                first.why
            );
        }
        if let Some(latest) = report.latest_failure() {
            ensure!(
                latest.acked_before + 100 <= report.ok,
                "a client operation failed among the last 100, after the failover: {}",
                latest.why
            );
        }
        let mut conn = self.web(vip())?;
        let (stale, lost) = verify(&mut conn, &report.acked)?;
        tx.say(format!(
            "read back through the VIP: {} keys, {stale} stale, {lost} lost",
            report.acked.len()
        ));
        ensure!(
            (stale, lost) == (0, 0),
            "{stale} stale and {lost} lost of the acknowledged writes"
        );
        tx.figure(format!(
            "client operations during the failover: {} failed, {} acknowledged, longest wait {:.3}s",
            report.failed,
            report.ok,
            report.longest_pause.as_secs_f64()
        ));
        tx.ok(format!(
            "{} failed operations, all during the failover; 0 acknowledged writes lost",
            report.failed
        ));
        Ok(report.acked)
    }

    /// memcached1 returns: its server loads its save file (holding test = nihao, from before
    /// the rewrite); meanwhile `test` is read through the VIP continuously, and the backend
    /// states and the VIP's holder are shown as they change.
    fn restart_memcached1(&mut self, tx: &mut Transcript) -> anyhow::Result<()> {
        tx.begin(
            "repair: restart memcached1; read test through the VIP until it is back in service",
        );
        let node_logs: Vec<(Host, std::path::PathBuf, usize)> = HOSTS
            .iter()
            .map(|h| {
                let path = self.t.log_path(h.name);
                let len = std::fs::read_to_string(&path).map_or(0, |s| s.len());
                (*h, path, len)
            })
            .collect();
        let node = Node::start(&mut self.t, MEMCACHED1)?;
        tx.say(format!(
            "memcached1: {}",
            node.describe(&self.t, MEMCACHED1)
        ));
        self.nodes.insert(MEMCACHED1.name, node);
        let server_log = self.t.log_path(MEMCACHED1.name);
        let loaded = wait_for(
            "memcached1's server loading its save file",
            Duration::from_secs(10),
            || {
                self.nodes_alive()?;
                let log = std::fs::read_to_string(&server_log).unwrap_or_default();
                Ok(log
                    .lines()
                    .find(|l| l.contains(" loaded ") && l.contains(" items "))
                    .map(str::to_owned))
            },
        )?;
        let loaded = loaded
            .split_once("persist: ")
            .map_or(loaded.as_str(), |(_, l)| l);
        tx.event(format!(
            "memcached1's server: {}",
            loaded.split("; ").next().unwrap_or(loaded)
        ));
        tx.say("(its save file holds test = nihao, from before the rewrite)");

        let mut reads = ReadCounts::default();
        let mut conn: Option<Conn> = None;
        let mut last_states: HashMap<&str, String> = HashMap::new();
        let mut last_holders = self.holders();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            check_interrupt()?;
            self.nodes_alive()?;
            if conn.is_none() {
                conn = self.web(vip()).ok();
            }
            match conn.as_mut().map(|c| c.get("test")) {
                Some(Ok(Some(v))) if v == "zaijian" => reads.good += 1,
                Some(Ok(Some(v))) => {
                    reads.stale += 1;
                    tx.event(format!("STALE read through the VIP: test = {v}"));
                }
                Some(Ok(None)) => {
                    reads.missed += 1;
                    tx.event("test missing through the VIP");
                }
                Some(Err(_)) | None => {
                    reads.failed += 1;
                    conn = None;
                }
            }
            let holders = self.holders();
            if holders != last_holders {
                tx.event(format!("VIP now on {}", list(&holders)));
                last_holders = holders;
            }
            let mut all_up = true;
            for host in HOSTS {
                let line = self.backend(host.proxy(), MEMCACHED1.server());
                let state = line
                    .as_ref()
                    .map_or("(no answer)", |l| l.state())
                    .to_owned();
                all_up &= state == "up";
                if last_states.get(host.name) != Some(&state) {
                    let detail = line.map(|l| l.summary()).unwrap_or(state.clone());
                    tx.event(format!(
                        "{}'s proxy: memcached1's server {detail}",
                        host.name
                    ));
                    last_states.insert(host.name, state);
                }
            }
            if all_up && last_holders == [MEMCACHED1.name] && reads.good > 0 {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "memcached1 not back in service within 30 s (VIP on {}, states {last_states:?})",
                list(&last_holders)
            );
            pause(Duration::from_millis(50))?;
        }
        let needle = format!("backend={}", MEMCACHED1.server());
        for (host, path, from) in node_logs {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = log
                .get(from..)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(&needle))
                .collect();
            if !lines.is_empty() {
                tx.say(format!("{}'s proxy logged:", host.name));
                for line in lines {
                    let text = line.split_once(": ").map_or(line, |(_, t)| t);
                    tx.say(format!("  {}", text.replace(&format!(" {needle}"), "")));
                }
            }
        }
        tx.say(format!(
            "reads of test through the VIP meanwhile: {} zaijian, {} stale, {} missing, {} failed \
             (connection refused or reset while the VIP moved back)",
            reads.good, reads.stale, reads.missed, reads.failed
        ));
        ensure!(
            (reads.stale, reads.missed) == (0, 0),
            "{} stale and {} missing reads of test through the VIP",
            reads.stale,
            reads.missed
        );
        tx.figure(format!(
            "reads through the VIP while memcached1 returned: {} stale, {} missing ({} answered)",
            reads.stale, reads.missed, reads.good
        ));
        tx.ok("memcached1's server repaired and up in both proxies, VIP back on memcached1, 0 stale reads");
        Ok(())
    }

    /// The key rewritten while memcached1 was down, and every key the client wrote across the
    /// failover, read on memcached1's server alone and through the VIP.
    fn read_back(&self, tx: &mut Transcript, acked: &HashMap<String, u64>) -> anyhow::Result<()> {
        tx.begin("read back: the repaired server alone, and through the VIP");
        for host in HOSTS {
            tx.say(format!("{}'s proxy:", host.name));
            self.ctl_backends(tx, host.proxy())?;
        }
        let replies = self.telnet(tx, MEMCACHED1.server(), &[&["get test"]])?;
        ensure!(
            replies[0] == ["VALUE test 0 7", "zaijian", "END"],
            "memcached1's server answered {:?} (its save file had nihao)",
            replies[0]
        );
        let held = self.count_working_set(MEMCACHED1.server())?;
        tx.say(format!(
            "the working set on memcached1's server alone: {held} of {WORKING_SET} keys"
        ));
        ensure!(
            held == WORKING_SET,
            "memcached1's server holds {held} of the {WORKING_SET} working-set keys"
        );
        let mut stale_total = 0;
        for (name, addr) in [
            ("memcached1's server alone", MEMCACHED1.server()),
            ("the VIP", vip()),
        ] {
            let mut conn = self.web(addr)?;
            let (stale, lost) = verify(&mut conn, acked)?;
            tx.say(format!(
                "{} failover keys on {name}: {stale} stale, {lost} lost",
                acked.len()
            ));
            ensure!(
                (stale, lost) == (0, 0),
                "{stale} stale and {lost} lost keys on {name}"
            );
            stale_total += stale;
        }
        tx.figure(format!(
            "stale reads: {stale_total} (the repaired server alone and through the VIP)"
        ));
        tx.ok(
            "test = zaijian on the repaired server, not its saved nihao; working set whole; \
             0 stale reads",
        );
        Ok(())
    }

    /// On a failure: the end of each role's log, on stderr.
    fn show_logs(&self) {
        let Ok(entries) = std::fs::read_dir(&self.t.dir) else {
            return;
        };
        let mut logs: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for path in logs {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- {} (last 20 lines)", path.display());
            for line in &lines[lines.len().saturating_sub(20)..] {
                eprintln!("{line}");
            }
        }
    }
}

fn working_set() -> Vec<(String, String)> {
    (0..WORKING_SET)
        .map(|n| (format!("item:{n}"), format!("{n:0>100}")))
        .collect()
}

fn list(hosts: &[&str]) -> String {
    if hosts.is_empty() {
        "no host".into()
    } else {
        hosts.join(" and ")
    }
}

#[derive(Debug, Default)]
struct ReadCounts {
    good: u64,
    stale: u64,
    missed: u64,
    failed: u64,
}

/// One `STAT <pool>/<server> state=... k=v ...` line of `stats backends`.
#[derive(Debug, Clone)]
struct BackendLine(String);

impl BackendLine {
    fn field(&self, key: &str) -> Option<&str> {
        self.0
            .split(' ')
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }

    fn state(&self) -> &str {
        self.field("state").unwrap_or("?")
    }

    /// The state and what explains it.
    fn summary(&self) -> String {
        let mut out = self.state().to_string();
        let details: Vec<String> = [
            "missed_keys",
            "restarts",
            "needs_flush",
            "cold",
            "marked_by_other",
            "warm_pct",
            "warm_copied",
        ]
        .iter()
        .filter_map(|k| self.field(k).map(|v| format!("{k}={v}")))
        .filter(|kv| !kv.ends_with("=0"))
        .collect();
        if !details.is_empty() {
            out.push_str(&format!(" ({})", details.join(" ")));
        }
        out
    }
}
