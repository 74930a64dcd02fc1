//! Network-namespace topologies for the daemon tests: a bridge in its own
//! namespace and one namespace per host, joined by veth pairs, addresses in
//! 198.18.0.0/24 and 2001:2::/64 (and link-local), without duplicate address
//! detection so that IPv6 addresses are usable at once. Everything a test creates is removed when its guard drops,
//! also when the test fails; processes are ended by pid.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const VIP: &str = "198.18.0.100";
pub const VIP6: &str = "2001:2::100";

/// keepcached's VRRP TOML for one instance, `VI_1` on eth0 holding [`VIP`]: VRRPv3 with 0.1 s
/// adverts at `priority`.
pub fn v3_instance(priority: u8) -> String {
    format!(
        "[[instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\npriority = {priority}\n\
         version = 3\nadvert_interval = 0.1\nvips = [{{ address = \"{VIP}/32\" }}]\n"
    )
}

/// Whether namespace tests can run; outside CI without root they are skipped.
pub fn root_or_skip(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: CI must run as root"
        );
        eprintln!("SKIPPED {test}: needs root (network namespaces); CI runs it");
    }
    root
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The binary under test.
pub fn keepcached() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keepcached"))
}

/// Failover timings are measured, so topologies of one test binary run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Topology {
    _serial: std::sync::MutexGuard<'static, ()>,
    pub prefix: String,
    pub hosts: Vec<String>,
    pub dir: PathBuf,
    children: Vec<Child>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Topology {
    /// Hosts `h1..hN` at 198.18.0.1..N and 2001:2::1..N on one bridge.
    pub fn new(hosts: usize) -> Topology {
        let prefix = format!(
            "kcv{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let mut t = Topology {
            _serial: SERIAL.lock().unwrap_or_else(|e| e.into_inner()),
            prefix,
            hosts: Vec::new(),
            dir,
            children: Vec::new(),
        };
        let br = t.ns("br");
        ip(&["netns", "add", &br]);
        t.hosts.push("br".into());
        // Without an MLD querier, snooping could keep ff02::12 from a port.
        ip(&[
            "-n",
            &br,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for i in 1..=hosts {
            let h = format!("h{i}");
            let ns = t.ns(&h);
            ip(&["netns", "add", &ns]);
            t.hosts.push(h.clone());
            // Interfaces created from now on in `ns` skip duplicate address
            // detection: their link-local address is usable at once.
            let dad = Command::new("ip")
                .args(["netns", "exec", &ns, "sysctl", "-qw"])
                .arg("net.ipv6.conf.default.accept_dad=0")
                .status()
                .expect("sysctl");
            assert!(dad.success(), "sysctl in {ns}");
            ip(&[
                "-n", &br, "link", "add", &h, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["-n", &br, "link", "set", &h, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("198.18.0.{i}/24"),
                "dev",
                "eth0",
            ]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("2001:2::{i}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        t
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// Starts `argv` inside host's namespace, output to `DIR/<log>`.
    pub fn spawn(&mut self, host: &str, log: &str, argv: &[&str]) -> u32 {
        let out = std::fs::File::create(self.dir.join(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Starts our daemon on `host` with a TOML or keepalived configuration.
    pub fn start_vrrpd(&mut self, host: &str, flag: &str, config: &str) -> u32 {
        let path = self.write(&format!("{host}.conf"), config);
        let exe = keepcached();
        self.spawn(
            host,
            &format!("{host}-vrrpd.log"),
            &[exe.to_str().unwrap(), "vrrp", flag, path.to_str().unwrap()],
        )
    }

    /// Starts Debian's keepalived (VRRP only, in the foreground) on `host`.
    pub fn start_keepalived(&mut self, host: &str, config: &str) -> u32 {
        let conf = self.write(&format!("{host}-keepalived.conf"), config);
        let pid = self.dir.join(format!("{host}-keepalived.pid"));
        let vrrp_pid = self.dir.join(format!("{host}-vrrp.pid"));
        let argv = [
            "/usr/sbin/keepalived",
            "--dont-fork",
            "--log-console",
            "--vrrp",
            "-f",
            conf.to_str().unwrap(),
            "-p",
            pid.to_str().unwrap(),
            "-r",
            vrrp_pid.to_str().unwrap(),
        ];
        self.spawn(host, &format!("{host}-keepalived.log"), &argv)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Sends a signal to one process this topology started and, for a
    /// terminating signal, waits for it.
    pub fn signal(&mut self, pid: u32, sig: nix::sys::signal::Signal) {
        use nix::sys::signal::Signal::*;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        if matches!(sig, SIGTERM | SIGKILL) {
            if let Some(c) = self.children.iter_mut().find(|c| c.id() == pid) {
                let _ = c.wait();
            }
        }
    }

    /// `ip netns exec` starts the daemon as a child of `ip`, which execs it, so
    /// the pid we hold is the daemon's own.
    pub fn link(&self, host: &str, up: bool) {
        ip(&[
            "-n",
            &self.ns("br"),
            "link",
            "set",
            host,
            if up { "up" } else { "down" },
        ]);
    }

    /// Moves the calling thread into `host`'s network namespace: sockets it
    /// (and every thread it starts from now on) creates are that host's. The
    /// guard moves it back, so drop it before the topology.
    pub fn enter(&self, host: &str) -> NetnsGuard {
        use nix::sched::{setns, CloneFlags};
        let home = std::fs::File::open("/proc/thread-self/ns/net").expect("own namespace");
        let there = std::fs::File::open(format!("/var/run/netns/{}", self.ns(host)))
            .expect("host namespace");
        setns(&there, CloneFlags::CLONE_NEWNET).expect("setns");
        NetnsGuard { home }
    }

    /// Removes the VIP from `host`, as its death would: a SIGKILLed VRRP
    /// daemon leaves the address behind (see `two_daemons_fail_over_every_way`).
    pub fn drop_vip(&self, host: &str) {
        ip(&[
            "-n",
            &self.ns(host),
            "addr",
            "del",
            &format!("{VIP}/32"),
            "dev",
            "eth0",
        ]);
    }

    pub fn has_vip(&self, host: &str) -> bool {
        self.has_addr(host, VIP)
    }

    /// Whether `host`'s eth0 carries `addr`: an IPv4 one as /32, an IPv6 one
    /// with any prefix.
    pub fn has_addr(&self, host: &str, addr: &str) -> bool {
        let (family, needle) = if addr.contains(':') {
            ("-6", format!(" {addr}/"))
        } else {
            ("-4", format!("{addr}/32"))
        };
        let out = Command::new("ip")
            .args(["-n", &self.ns(host), family, "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&needle)
    }

    /// Sends `sig` to a process this topology started and returns how it exited.
    pub fn stop_with(
        &mut self,
        pid: u32,
        sig: nix::sys::signal::Signal,
    ) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        let child = self
            .children
            .iter_mut()
            .find(|c| c.id() == pid)
            .expect("a process of this topology");
        child.wait().unwrap()
    }

    /// Waits (polling, up to `limit`) for a process this topology started to exit by itself;
    /// how it exited.
    pub fn wait_exit(&mut self, pid: u32, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            let child = self
                .children
                .iter_mut()
                .find(|c| c.id() == pid)
                .expect("a process of this topology");
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > limit {
                panic!("after {limit:?} pid {pid} still runs\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `DIR/<log>` contains `needle`; returns the log.
    pub fn wait_log(&self, log: &str, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let text = read(&self.dir.join(log));
            if text.contains(needle) {
                return text;
            }
            if start.elapsed() > limit {
                panic!("after {limit:?} {log} has no `{needle}`\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Which of `hosts` hold the VIP.
    pub fn holders(&self, hosts: &[&str]) -> Vec<String> {
        self.holders_of(hosts, VIP)
    }

    /// Which of `hosts` hold `vip`.
    pub fn holders_of(&self, hosts: &[&str], vip: &str) -> Vec<String> {
        hosts
            .iter()
            .filter(|h| self.has_addr(h, vip))
            .map(|h| h.to_string())
            .collect()
    }

    /// Waits until exactly `host` holds the VIP among `hosts`; returns how long it took.
    pub fn wait_holder(&self, hosts: &[&str], host: &str, limit: Duration) -> Duration {
        self.wait_holder_of(hosts, host, VIP, limit)
    }

    /// Waits until exactly `host` holds `vip` among `hosts`; returns how long it took.
    pub fn wait_holder_of(
        &self,
        hosts: &[&str],
        host: &str,
        vip: &str,
        limit: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let holders = self.holders_of(hosts, vip);
            if holders == [host] {
                return start.elapsed();
            }
            if start.elapsed() > limit {
                panic!(
                    "after {limit:?} {vip} is on {holders:?}, wanted only on {host}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Checks that `host` alone keeps the VIP for `span`.
    pub fn stays_holder(&self, hosts: &[&str], host: &str, span: Duration) {
        self.stays_holder_of(hosts, host, VIP, span)
    }

    /// Checks that `host` alone keeps `vip` for `span`.
    pub fn stays_holder_of(&self, hosts: &[&str], host: &str, vip: &str, span: Duration) {
        let start = Instant::now();
        while start.elapsed() < span {
            let holders = self.holders_of(hosts, vip);
            assert_eq!(holders, [host], "VIP moved\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                out += &format!("--- {}\n{}\n", e.path().display(), read(&e.path()));
            }
        }
        out
    }
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

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in &self.hosts {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(h)])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP responder answering every line with `VERSION <name>`, like a
/// memcached `version` reply: the proxy check's target and the client's
/// way to see which host holds the VIP.
pub const RESPONDER: &str = r#"
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2]))); s.listen(64)
def serve(c):
    f = c.makefile("rb")
    for _ in f:
        c.sendall(b"VERSION " + sys.argv[1].encode() + b"\r\n")
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Asks `VIP:port` from `host`'s namespace which host answers.
pub fn who_answers(t: &Topology, host: &str, port: u16) -> String {
    let code = format!(
        "import socket\ns=socket.create_connection(('{VIP}',{port}),timeout=1)\ns.sendall(b'version\\r\\n')\nprint(s.makefile().readline().strip())"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &t.ns(host), "python3", "-c", &code])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Sends `request` to `VIP:12000` from `host`'s namespace; returns the first
/// line of the reply.
pub fn client(t: &Topology, host: &str, request: &str) -> String {
    let code = format!(
        "import socket\ns=socket.create_connection(('{VIP}',12000),timeout=2)\ns.sendall({request:?}.encode())\nprint(s.makefile().readline().strip())"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &t.ns(host), "python3", "-c", &code])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
