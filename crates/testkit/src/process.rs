//! Start a cache server on a free loopback port and own its process.
//!
//! [`ServerProcess`] holds exactly one child process. Dropping it kills that pid and reaps it,
//! which also happens while a failing test unwinds, so no server outlives its test. The child's
//! stdout and stderr go to a log file whose text is put into every error about the process.

use std::fs::{self, File};
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::client::Client;

/// How long a server may take to accept its first connection. Debug builds on a loaded 2-core CI
/// machine start in well under a second; the margin is for that machine being busy.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A free port is only free until someone binds it: another test's server (or an outgoing
/// connection's ephemeral port) can take it between our probe and the server's bind. The server
/// then fails with "Address already in use" and we try another port.
const BIND_ATTEMPTS: usize = 8;

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Debian's memcached as `memcached -u root -l 127.0.0.1 -p PORT -U 0 EXTRA...`.
pub fn memcached(extra: &[&str]) -> io::Result<ServerProcess> {
    ServerProcess::spawn("memcached", Path::new("memcached"), &[], extra)
}

/// Our proxy as `BIN proxy -D -l 127.0.0.1 -p PORT EXTRA...` (magent's flags: `-s MAIN -b
/// BACKUP`, or `--config FILE`), owned and waited for as a server is.
pub fn keepcached_proxy(bin: &Path, extra: &[&str]) -> io::Result<ServerProcess> {
    let before_port = ["proxy", "-D", "-l", "127.0.0.1", "-p"];
    ServerProcess::spawn_listening("keepcached-proxy", bin, &before_port, &[], extra)
}

/// Our server as `BIN server -u root -l 127.0.0.1 -p PORT -U 0 EXTRA...`; `bin` is the keepcached
/// binary (`env!("CARGO_BIN_EXE_keepcached")` in the binary crate's tests).
pub fn keepcached_server(bin: &Path, extra: &[&str]) -> io::Result<ServerProcess> {
    ServerProcess::spawn("keepcached", bin, &["server"], extra)
}

/// A running server process on 127.0.0.1, killed on drop.
#[derive(Debug)]
pub struct ServerProcess {
    label: String,
    child: Child,
    port: u16,
    log: PathBuf,
    /// The program and its arguments, to start it again on the same port.
    program: PathBuf,
    args: Vec<String>,
}

impl ServerProcess {
    /// Runs `program SUBCOMMAND... -u root -l 127.0.0.1 -p PORT -U 0 EXTRA...` and waits until the
    /// port accepts connections.
    pub fn spawn(
        label: &str,
        program: &Path,
        subcommand: &[&str],
        extra: &[&str],
    ) -> io::Result<ServerProcess> {
        let mut before_port = subcommand.to_vec();
        before_port.extend(["-u", "root", "-l", "127.0.0.1", "-p"]);
        ServerProcess::spawn_listening(label, program, &before_port, &["-U", "0"], extra)
    }

    /// Runs `program BEFORE_PORT... PORT AFTER_PORT... EXTRA...` on a free port and waits until
    /// the port accepts connections.
    fn spawn_listening(
        label: &str,
        program: &Path,
        before_port: &[&str],
        after_port: &[&str],
        extra: &[&str],
    ) -> io::Result<ServerProcess> {
        let mut last_log = String::new();
        for _ in 0..BIND_ATTEMPTS {
            let port = free_port()?;
            let log = log_path(label);
            let out = File::create(&log)?;
            let port_arg = port.to_string();
            let mut args: Vec<&str> = before_port.to_vec();
            args.push(&port_arg);
            args.extend(after_port);
            args.extend(extra);
            let child = start(program, &args, out)?;
            let mut server = ServerProcess {
                label: format!("{label} {}", args.join(" ")),
                child,
                port,
                log,
                program: program.to_path_buf(),
                args: args.iter().map(|a| a.to_string()).collect(),
            };
            match server.wait_ready() {
                Ok(()) => return Ok(server),
                Err(e) => {
                    last_log = server.log_text();
                    if !last_log.to_ascii_lowercase().contains("in use") {
                        return Err(e);
                    }
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{label}: no free port after {BIND_ATTEMPTS} attempts; last log:\n{last_log}"),
        ))
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "{} exited with {status} before accepting connections; its output:\n{}",
                    self.label,
                    self.log_text()
                )));
            }
            if self.is_listening() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} did not accept connections within {READY_TIMEOUT:?}; its output:\n{}",
                        self.label,
                        self.log_text()
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether this process holds a listening socket on 127.0.0.1:port. Checked in /proc rather
    /// than by connecting, because a probe connection would show up in the server's
    /// total_connections and make that stat differ between runs.
    fn is_listening(&self) -> bool {
        let wanted = format!("0100007F:{:04X}", self.port);
        let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
            return TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok();
        };
        let inodes: Vec<String> = table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // local_address, state 0A = LISTEN, inode
                (fields.len() > 9 && fields[1] == wanted && fields[3] == "0A")
                    .then(|| format!("socket:[{}]", fields[9]))
            })
            .collect();
        if inodes.is_empty() {
            return false;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{}/fd", self.pid())) else {
            return false;
        };
        fds.flatten().any(|fd| {
            fs::read_link(fd.path())
                .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
        })
    }

    /// Ends the process now (SIGKILL, by pid; it also ends a stopped process) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` to exactly this process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> io::Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).map_err(io::Error::from)
    }

    /// Starts the program again, empty, on the same port (after [`ServerProcess::kill`]),
    /// waiting while the old socket still holds the port.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let out = File::create(&self.log)?;
            self.child = start(&self.program, &self.args, out)?;
            match self.wait_ready() {
                Ok(()) => return Ok(()),
                Err(e) if !self.log_text().to_ascii_lowercase().contains("in use") => {
                    return Err(e)
                }
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The command line, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// A new client connection with the default timeouts.
    pub fn connect(&self) -> io::Result<Client> {
        Client::connect(self.addr())
    }

    /// Whether the process has not exited (it may have crashed during a test).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit on its own; its status, or None.
    pub fn wait_exit(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process printed so far.
    pub fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The process's resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> io::Result<u64> {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// The highest resident memory the process has had so far, in KiB (the kernel's high-water
    /// mark, so a peak between two samples is not missed).
    pub fn peak_rss_kib(&self) -> io::Result<u64> {
        proc_status_kib(self.pid(), "VmHWM:")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Child::kill signals exactly this pid (SIGKILL); wait reaps it so no zombie remains.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
    }
}

/// A `kB` field of `/proc/PID/status`.
pub fn proc_status_kib(pid: u32, field: &str) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

fn start<A: AsRef<std::ffi::OsStr>>(program: &Path, args: &[A], out: File) -> io::Result<Child> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start {}: {e}", program.display())))
}

fn log_path(label: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "keepcached-testkit-{label}-{}-{n}.log",
        std::process::id()
    ))
}

/// What a finished (or killed) command printed.
#[derive(Debug)]
pub struct CommandOutput {
    /// None when the command was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command to completion, killing exactly that child if it outlives `timeout` (a client
/// tool waiting on a server that never answers must not hang the test run).
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> io::Result<CommandOutput> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let text = |h: thread::JoinHandle<Vec<u8>>| {
        String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned()
    };
    Ok(CommandOutput {
        status,
        stdout: text(out),
        stderr: text(err),
    })
}

/// Raises this process's open-file soft limit to at least `wanted` (up to the hard limit), for
/// tests that hold thousands of connections. Returns the new soft limit.
pub fn raise_open_file_limit(wanted: u64) -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft >= wanted {
        return Ok(soft);
    }
    let new = wanted.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, new, hard).map_err(io::Error::from)?;
    Ok(new)
}
