//! The demo's hosts: one network namespace per host, each with an `ens32` (the seed's interface
//! name) joined to a bridge that lives in a namespace of its own (the LAN), all made with
//! iproute2's `ip`.
//!
//! Everything is named `kcdemo<pid>-<host>`, the pid being the demo's own: two demos never
//! collide, and a later demo can tell a dead run's leftovers (its pid is gone) from a live run's.
//! Every link lives inside these namespaces, so deleting them removes the links too; nothing is
//! added to the machine's own namespace. The processes the demo starts run in their own process
//! group (a Ctrl-C at the terminal reaches the demo alone, which then stops them in order), and
//! [`Topology`]'s `Drop` ends them by pid and deletes the namespaces, also on an error or a
//! panic.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// What every namespace and scratch directory of a demo starts with.
pub const PREFIX: &str = "kcdemo";

/// The LAN's namespace, holding the bridge.
const LAN: &str = "lan";
/// Each host's interface, as in the seed's keepalived.conf.
pub const INTERFACE: &str = "ens32";

/// A process the demo started, with how to stop it.
#[derive(Debug)]
struct Started {
    child: Child,
    host: String,
}

#[derive(Debug)]
pub struct Topology {
    /// `kcdemo<pid>`.
    prefix: String,
    /// Namespaces (by host name) this demo created or was creating, removed in reverse.
    hosts: Vec<String>,
    started: Vec<Started>,
    /// Node configurations and logs.
    pub dir: PathBuf,
    torn_down: bool,
}

/// Runs `ip ARGS`, failing with its message.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Topology {
    /// The namespaces for `hosts` (name, address in a /24), all on one bridge.
    pub fn build(hosts: &[(&str, Ipv4Addr)]) -> anyhow::Result<Topology> {
        let prefix = format!("{PREFIX}{}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        // A new directory only root can enter: one that exists already (another user may have
        // made it for a pid they guessed, with links to files root would write through) is
        // refused, not reused.
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&dir)
            .with_context(|| {
                format!(
                    "creating {} (a new, private directory; remove it if a previous demo left it)",
                    dir.display()
                )
            })?;
        let mut t = Topology {
            prefix,
            hosts: Vec::new(),
            started: Vec::new(),
            dir,
            torn_down: false,
        };
        // Each name is recorded before it is made, so that a failure half way (or a panic)
        // still removes what exists.
        t.hosts.push(LAN.into());
        let lan = t.ns(LAN);
        ip(&["netns", "add", &lan])?;
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lan, "link", "set", "br0", "up"])?;
        for (host, addr) in hosts {
            t.hosts.push(host.to_string());
            let ns = t.ns(host);
            ip(&["netns", "add", &ns])?;
            // The bridge's end of the cable is named after the host it leads to.
            ip(&[
                "-n", &lan, "link", "add", host, "type", "veth", "peer", "name", INTERFACE,
                "netns", &ns,
            ])?;
            ip(&["-n", &lan, "link", "set", host, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                INTERFACE,
            ])?;
            ip(&["-n", &ns, "link", "set", INTERFACE, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(t)
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Starts `argv` in `host`'s namespace, its output appended to `DIR/<log>.log`.
    /// (`ip netns exec` execs the program, so the pid returned is the program's own.)
    pub fn spawn(&mut self, host: &str, log: &str, argv: &[&str]) -> anyhow::Result<u32> {
        let log = self.log_path(log);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} on {host}", argv.join(" ")))?;
        let pid = child.id();
        self.started.push(Started {
            child,
            host: host.into(),
        });
        Ok(pid)
    }

    pub fn log_path(&self, log: &str) -> PathBuf {
        self.dir.join(format!("{log}.log"))
    }

    /// Sends `signal` to `pid`, a process this topology started.
    pub fn signal(&self, pid: u32, signal: Signal) {
        if self.started.iter().any(|s| s.child.id() == pid) {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }

    /// Whether the process `pid` (one this topology started) has exited, and how.
    pub fn exited(&mut self, pid: u32) -> Option<ExitStatus> {
        let started = self.started.iter_mut().find(|s| s.child.id() == pid)?;
        started.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM to `pid` and waits up to `grace` for it to exit, then kills it.
    /// Returns how it exited and whether it had to be killed.
    pub fn stop(&mut self, pid: u32, grace: Duration) -> anyhow::Result<(ExitStatus, bool)> {
        let index = self
            .started
            .iter()
            .position(|s| s.child.id() == pid)
            .context("not a process of the demo")?;
        let started = self.started.remove(index);
        stop_child(started.child, grace)
    }

    /// Whether `host`'s interface carries `addr`/32 (a VIP).
    pub fn has_vip(&self, host: &str, addr: Ipv4Addr) -> bool {
        ip(&["-n", &self.ns(host), "-4", "addr", "show", "dev", INTERFACE])
            .is_ok_and(|out| out.contains(&format!("inet {addr}/32 ")))
    }

    /// The lines of `ip a` on `host` that show `addr`, as the seed's `ip a | grep` shows them.
    pub fn addr_lines(&self, host: &str, addr: Ipv4Addr) -> Vec<String> {
        let out = ip(&["-n", &self.ns(host), "-4", "addr", "show", "dev", INTERFACE]);
        out.unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("inet {addr}/")))
            .map(|l| l.trim().to_owned())
            .collect()
    }

    /// Moves the calling thread into `host`'s network namespace: the sockets it creates from now
    /// on are that host's (a socket keeps its namespace for life). The guard moves it back.
    pub fn enter(&self, host: &str) -> anyhow::Result<NetnsGuard> {
        enter_namespace(&self.ns(host))
    }

    /// Stops every process (SIGTERM, SIGKILL after `grace`), deletes the namespaces and the
    /// scratch directory. Returns what was removed, or what could not be.
    pub fn teardown(&mut self, grace: Duration) -> anyhow::Result<Vec<String>> {
        self.torn_down = true;
        // Every process is told at once, then waited for: a host's roles shut down in parallel.
        for s in &self.started {
            let _ = kill(Pid::from_raw(s.child.id() as i32), Signal::SIGTERM);
        }
        for s in self.started.drain(..) {
            let pid = s.child.id();
            if let Err(e) = stop_child(s.child, grace) {
                eprintln!("keepcached demo: stopping pid {pid} on {}: {e}", s.host);
            }
        }
        let mut removed = Vec::new();
        let mut failed = Vec::new();
        for host in self.hosts.drain(..).rev() {
            let ns = format!("{}-{host}", self.prefix);
            match delete_namespace(&ns) {
                Ok(true) => removed.push(ns),
                Ok(false) => {}
                Err(e) => failed.push(format!("{ns}: {e}")),
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if !failed.is_empty() {
            bail!("could not remove {}", failed.join("; "));
        }
        Ok(removed)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if !self.torn_down {
            if let Err(e) = self.teardown(Duration::from_secs(2)) {
                eprintln!("keepcached demo: cleaning up: {e}");
            }
        }
    }
}

/// SIGTERM (again: harmless), wait up to `grace`, then SIGKILL.
fn stop_child(mut child: Child, grace: Duration) -> anyhow::Result<(ExitStatus, bool)> {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, false));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return Ok((child.wait()?, true));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Ends whatever still runs in namespace `ns` (by pid: only processes inside a namespace of the
/// demo's), then deletes it. False when it did not exist.
fn delete_namespace(ns: &str) -> anyhow::Result<bool> {
    if !Path::new("/run/netns").join(ns).exists() {
        return Ok(false);
    }
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    ip(&["netns", "del", ns])?;
    Ok(true)
}

/// The demo namespaces that exist now, whoever made them.
pub fn namespaces() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(PREFIX))
        .collect();
    names.sort();
    names
}

/// The pid in a demo's name (`kcdemo<pid>` or `kcdemo<pid>-<host>`).
fn owner(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits = rest.split('-').next()?;
    digits.parse().ok()
}

/// Whether a process with this pid exists (a zombie counts: its demo has not been reaped).
fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes what demos that were killed (their pid is gone) left behind: their processes,
/// namespaces and scratch directories. Returns the namespaces removed.
pub fn remove_leftovers() -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    for ns in namespaces() {
        if owner(&ns).is_some_and(|pid| !alive(pid)) && delete_namespace(&ns)? {
            removed.push(ns);
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner(&name).is_some_and(|pid| !alive(pid)) && !name.contains('-') {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(removed)
}

/// Moves the calling thread into the network namespace named `ns` (see [`Topology::enter`]).
pub fn enter_namespace(ns: &str) -> anyhow::Result<NetnsGuard> {
    use nix::sched::{setns, CloneFlags};
    let home = std::fs::File::open("/proc/thread-self/ns/net")
        .context("opening this thread's network namespace")?;
    let path = format!("/run/netns/{ns}");
    let there = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    setns(&there, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {path}"))?;
    Ok(NetnsGuard { home })
}

/// Returns the thread that entered a host's namespace to where it was.
#[derive(Debug)]
pub struct NetnsGuard {
    home: std::fs::File,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = nix::sched::setns(&self.home, nix::sched::CloneFlags::CLONE_NEWNET);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_says_whose_it_is() {
        assert_eq!(owner("kcdemo4242-memcached1"), Some(4242));
        assert_eq!(owner("kcdemo4242-lan"), Some(4242));
        assert_eq!(owner("kcdemo4242"), Some(4242));
        assert_eq!(owner("kcdemo-x"), None);
        assert_eq!(owner("kcv4242x0-h1"), None);
    }
}
