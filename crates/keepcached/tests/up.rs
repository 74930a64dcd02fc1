//! `keepcached up` as an operator runs it, on loopback: on ports from `--port-base`, beside a
//! program that holds one of its ports, with its default ports (whether or not this machine
//! already runs something on them), and on a terminal with its live line. Each `up` is a
//! child process killed by pid on drop, also when a test fails; each test ends it with SIGINT
//! and asserts it exits 0.

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keepcached_testkit::wait::{child_exit, collect_terminal, poll_until};
use keepcached_testkit::{env, free_port, Client};
use nix::sys::signal::Signal;

pub const BIN: &str = env!("CARGO_BIN_EXE_keepcached");
/// Generous: a debug build on two busy cores.
pub const WAIT: Duration = Duration::from_secs(30);

/// Polls `condition` until it holds or [`WAIT`] passes.
pub fn wait_for(condition: impl FnMut() -> bool) -> bool {
    poll_until(WAIT, condition)
}

/// A port N with N, N+1 and N+2 free right now (another process may take one before `up`
/// binds it: `up` then says so and uses another, which the tests allow for).
pub fn free_port_base() -> u16 {
    for _ in 0..100 {
        let base = free_port().expect("free port");
        if base <= u16::MAX - 2
            && (1..=2).all(|i| TcpListener::bind((Ipv4Addr::LOCALHOST, base + i)).is_ok())
        {
            return base;
        }
    }
    panic!("no three consecutive free ports on 127.0.0.1");
}

/// The three ports `up` announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub main: u16,
    pub backup: u16,
    pub proxy: u16,
}

impl Ports {
    pub fn addr(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }
}

/// Where a child's stderr goes: a file, or a pseudo-terminal whose output a thread collects.
#[derive(Debug)]
enum Output {
    File(PathBuf),
    Terminal(Arc<Mutex<Vec<u8>>>),
}

/// `keepcached up ARGS...`, killed on drop.
#[derive(Debug)]
pub struct Up {
    child: Child,
    output: Output,
    pub ports: Ports,
}

impl Up {
    /// Starts `up` with stderr to a file and waits for its announcement.
    pub fn start(args: &[&str]) -> Up {
        let log = std::env::temp_dir().join(format!(
            "keepcached-up-test-{}-{}.log",
            std::process::id(),
            free_port().expect("free port")
        ));
        let out = File::create(&log).expect("up log");
        let child = Command::new(BIN)
            .arg("up")
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("up log"))
            .stderr(out)
            .spawn()
            .expect("start keepcached up");
        Up::announced(child, Output::File(log))
    }

    /// Starts `up` with stderr on a pseudo-terminal (stdout to nothing).
    pub fn start_on_terminal(args: &[&str]) -> Up {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let child = Command::new(BIN)
            .arg("up")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(pty.slave))
            .spawn()
            .expect("start keepcached up");
        Up::announced(child, Output::Terminal(collect_terminal(pty.master)))
    }

    fn announced(child: Child, output: Output) -> Up {
        let mut up = Up {
            child,
            output,
            ports: Ports {
                main: 0,
                backup: 0,
                proxy: 0,
            },
        };
        let announced = wait_for(|| {
            assert!(
                matches!(up.child.try_wait(), Ok(None)),
                "up exited: {}",
                up.output_text()
            );
            up.output_text().contains("replicating proxy on")
        });
        assert!(
            announced,
            "up did not say where it serves: {}",
            up.output_text()
        );
        let text = up.output_text();
        let port_after = |marker: &str| -> u16 {
            let at = text.find(marker).expect(marker) + marker.len();
            let digits: String = text[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().expect("a port number")
        };
        up.ports = Ports {
            main: port_after("cache servers on 127.0.0.1:"),
            backup: port_after(" and 127.0.0.1:"),
            proxy: port_after("replicating proxy on 127.0.0.1:"),
        };
        up
    }

    /// Everything `up` wrote so far (stderr and stdout).
    pub fn output_text(&self) -> String {
        match &self.output {
            Output::File(path) => fs::read_to_string(path).unwrap_or_default(),
            Output::Terminal(bytes) => {
                String::from_utf8_lossy(&bytes.lock().unwrap_or_else(|e| e.into_inner()))
                    .into_owned()
            }
        }
    }

    /// A client of the proxy (it answers once `up` serves).
    pub fn proxy(&self) -> Client {
        Client::connect(Ports::addr(self.ports.proxy)).expect("connect to up's proxy")
    }

    pub fn server(&self, port: u16) -> Client {
        Client::connect(Ports::addr(port)).expect("connect to up's server")
    }

    /// Sends `signal`, then waits for the exit status.
    pub fn signal(&mut self, signal: Signal) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal up");
        wait_exit(&mut self.child).unwrap_or_else(|| {
            panic!(
                "up still runs {WAIT:?} after {signal}: {}",
                self.output_text()
            )
        })
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Output::File(path) = &self.output {
            let _ = fs::remove_file(path);
        }
    }
}

pub fn wait_exit(child: &mut Child) -> Option<ExitStatus> {
    child_exit(child, WAIT)
}

/// `request` on `client`, its reply as text.
pub fn call(client: &mut Client, request: &str) -> String {
    client
        .call(request)
        .unwrap_or_else(|e| panic!("{request:?}: {e}"))
}

impl Up {
    /// Waits until the proxy answers (the announcement comes once the ports are bound, a
    /// moment before the proxy has reached its servers and serves).
    fn wait_serving(&self) {
        let serving = wait_for(|| {
            Client::connect(Ports::addr(self.ports.proxy))
                .and_then(|mut c| c.call("version\r\n"))
                .is_ok_and(|reply| reply.starts_with("VERSION"))
        });
        assert!(
            serving,
            "up's proxy does not answer: {}",
            self.output_text()
        );
    }

    /// A set through the proxy is on both servers and read back through the proxy.
    fn assert_serves(&self) {
        self.wait_serving();
        let mut proxy = self.proxy();
        assert_eq!(
            call(&mut proxy, "set greeting 0 0 5\r\nhello\r\n"),
            "STORED\r\n"
        );
        let value = "VALUE greeting 0 5\r\nhello\r\nEND\r\n";
        for port in [self.ports.main, self.ports.backup] {
            assert_eq!(
                call(&mut self.server(port), "get greeting\r\n"),
                value,
                "server on {port}"
            );
        }
        assert_eq!(call(&mut proxy, "get greeting\r\n"), value);
    }

    /// SIGINT (Ctrl-C) or SIGTERM, and `up` stops cleanly: exit 0, `stopped` logged.
    fn assert_stops_on(&mut self, signal: Signal) {
        let status = self.signal(signal);
        assert_eq!(status.code(), Some(0), "{status}: {}", self.output_text());
        assert!(
            wait_for(|| self.output_text().contains("stopped")),
            "{}",
            self.output_text()
        );
    }
}

#[test]
fn up_on_a_port_base_serves_a_set_that_lands_on_both_servers() {
    let base = free_port_base();
    let mut up = Up::start(&["--port-base", &base.to_string()]);
    let text = up.output_text();
    // Free a moment ago; only if another process took one since must `up` have moved.
    if !text.contains("is in use") {
        assert_eq!(
            up.ports,
            Ports {
                main: base,
                backup: base + 1,
                proxy: base + 2
            },
            "{text}"
        );
    }
    let Ports {
        main,
        backup,
        proxy,
    } = up.ports;
    assert!(
        text.contains(&format!("try: telnet 127.0.0.1 {proxy}")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "watch it: keepcached status 127.0.0.1:{proxy} 127.0.0.1:{main} 127.0.0.1:{backup} \
             --watch"
        )),
        "{text}"
    );
    up.assert_serves();
    up.assert_stops_on(Signal::SIGINT);
}

#[test]
fn up_beside_a_memcached_on_one_of_its_ports_takes_another_and_says_so() {
    let memcached = keepcached_testkit::memcached(&[]).expect("start memcached");
    let taken = memcached.port();
    let (main, proxy) = (free_port().unwrap(), free_port().unwrap());
    let mut up = Up::start(&["--ports", &format!("{main},{taken},{proxy}")]);
    let text = up.output_text();
    assert_ne!(up.ports.backup, taken, "{text}");
    if !text.contains(&format!("port {main} ")) && !text.contains(&format!("port {proxy} ")) {
        // Only the backup's port moved (the others were free and nobody took them since).
        assert_eq!((up.ports.main, up.ports.proxy), (main, proxy), "{text}");
    }
    let said = format!(
        "port {taken} (backup cache server) is in use, using {} instead",
        up.ports.backup
    );
    let line = text
        .lines()
        .find(|l| l.contains("is in use"))
        .unwrap_or_else(|| panic!("no line says a port was taken:\n{text}"));
    assert!(
        line.starts_with("keepcached: ") && line.contains(&said),
        "{line:?}, not {said:?}:\n{text}"
    );
    up.assert_serves();
    // The set went to up's own backup, not to the memcached that holds the port.
    assert_eq!(
        call(&mut memcached.connect().unwrap(), "get greeting\r\n"),
        "END\r\n"
    );
    up.assert_stops_on(Signal::SIGTERM);
}

#[test]
fn up_with_no_options_uses_the_default_ports_or_says_which_were_taken() {
    // Whether this machine runs a memcached on 11211 (or anything on 11212 or 12000) is not
    // the test's to know: either `up` has the default port, or it says it took another.
    let mut up = Up::start(&[]);
    let text = up.output_text();
    for (role, default, chosen) in [
        ("main cache server", 11211, up.ports.main),
        ("backup cache server", 11212, up.ports.backup),
        ("proxy", 12000, up.ports.proxy),
    ] {
        if chosen != default {
            let said = format!("port {default} ({role}) is in use, using {chosen} instead");
            assert!(text.contains(&said), "no {said:?}:\n{text}");
        }
    }
    if up.ports.main == 11211 && up.ports.backup == 11212 && up.ports.proxy == 12000 {
        assert!(!text.contains("is in use"), "{text}");
        assert!(
            text.contains("watch it: keepcached status --watch"),
            "{text}"
        );
    }
    up.assert_serves();
    up.assert_stops_on(Signal::SIGINT);
}

#[test]
fn up_on_a_terminal_shows_a_live_line_and_ctrl_c_clears_it() {
    let base = free_port_base();
    let mut up = Up::start_on_terminal(&["--port-base", &base.to_string()]);
    up.assert_serves();
    // One hit (in assert_serves) and one miss through the proxy.
    assert_eq!(call(&mut up.proxy(), "get nothing\r\n"), "END\r\n");
    let wanted = [
        "ops/s",
        "hits 50.0%",
        "main up",
        "backup up",
        "Ctrl-C stops",
    ];
    let shown = wait_for(|| {
        let text = up.output_text();
        // The last drawing of the line has every part.
        text.rsplit("\u{1b}[2K")
            .next()
            .is_some_and(|line| wanted.iter().all(|w| line.contains(w)))
    });
    assert!(
        shown,
        "no live line with {wanted:?}:\n{:?}",
        up.output_text()
    );
    up.assert_stops_on(Signal::SIGINT);
    let text = up.output_text();
    let last_line = text.rfind("Ctrl-C stops").expect("the live line");
    let after = &text[last_line..];
    // The line is cleared before the log says why the tier stops, and not drawn again.
    let clear = after
        .find("\u{1b}[2K")
        .unwrap_or_else(|| panic!("the live line was not cleared: {after:?}"));
    let sigint = after
        .find("SIGINT received")
        .unwrap_or_else(|| panic!("no SIGINT line: {after:?}"));
    assert!(clear < sigint, "{after:?}");
}

/// docs/status.md: the live line is cut to the terminal's width (one column spare, so it never
/// wraps): on a 30-column terminal, its first 29 characters.
#[test]
fn the_live_line_is_cut_to_the_terminals_width() {
    if !env::require(
        "the_live_line_is_cut_to_the_terminals_width",
        false,
        &["setsid"],
    ) {
        return;
    }
    let size = nix::pty::Winsize {
        ws_row: 24,
        ws_col: 30,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
    let stdin = pty.slave.try_clone().expect("dup the terminal");
    // The width is the controlling terminal's, as for an operator's shell: `setsid --ctty`
    // makes the terminal on stdin the new session's (the test's own, if any, does not count).
    let base = free_port_base().to_string();
    let child = Command::new("setsid")
        .args(["--ctty", BIN, "up", "--port-base", &base])
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::null())
        .stderr(Stdio::from(pty.slave))
        .spawn()
        .expect("start setsid keepcached up");
    let mut up = Up::announced(child, Output::Terminal(collect_terminal(pty.master)));
    up.assert_serves();
    let last_drawing = |text: &str| -> Option<String> {
        let line = text.rsplit("\u{1b}[2K").next()?;
        line.starts_with("ops/s")
            .then(|| line.chars().take_while(|c| !c.is_control()).collect())
    };
    let mut drawn = None;
    let shown = wait_for(|| {
        drawn = last_drawing(&up.output_text());
        drawn.is_some()
    });
    assert!(shown, "no live line:\n{:?}", up.output_text());
    let drawn = drawn.unwrap_or_default();
    assert_eq!(drawn.chars().count(), 29, "{drawn:?}");
    assert!(
        drawn.starts_with("ops/s ") && drawn.contains(" · hits "),
        "{drawn:?}"
    );
    up.assert_stops_on(Signal::SIGTERM);
}

#[test]
fn bad_port_options_exit_64_before_anything_binds() {
    for (args, said) in [
        (&["--ports", "1,1,3"][..], "must differ"),
        (&["--ports", "1,2"][..], "three ports"),
        (&["--port-base", "65534"][..], "between 1 and 65533"),
        (
            &["--port-base", "1", "--ports", "1,2,3"][..],
            "cannot be used with",
        ),
    ] {
        let out = Command::new(BIN)
            .arg("up")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run up");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert!(!stderr.contains("cache servers on"), "{args:?}: {stderr}");
    }
}

/// A second Ctrl-C while the proxy drains a client that reads nothing of the 100 MB it asked
/// for (its connection waits in a write, so the drain waits for it): `up` exits at once, 1.
#[test]
fn a_second_ctrl_c_cuts_the_drain_short() {
    use std::io::{BufRead, BufReader, Write};
    let mut up = Up::start(&["--port-base", &free_port_base().to_string()]);
    up.wait_serving();
    let mut stuck = std::net::TcpStream::connect(Ports::addr(up.ports.proxy)).unwrap();
    stuck.set_read_timeout(Some(WAIT)).unwrap();
    let value = vec![b'v'; 500_000];
    stuck
        .write_all(format!("set big 0 0 {}\r\n", value.len()).as_bytes())
        .unwrap();
    stuck.write_all(&value).unwrap();
    stuck.write_all(b"\r\n").unwrap();
    let mut line = String::new();
    BufReader::new(stuck.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "STORED\r\n");
    stuck
        .write_all("get big\r\n".repeat(200).as_bytes())
        .unwrap();
    // Until the proxy has answered some of the gets, its drain could find the connection idle
    // (the gets still unread in its socket) and end at once.
    let mut stats = up.proxy();
    assert!(
        wait_for(|| stats.stat("get_hits").unwrap() >= 2),
        "the proxy never answered the gets: {}",
        up.output_text()
    );

    let pid = nix::unistd::Pid::from_raw(up.child.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGINT).unwrap();
    // Two signals before the first is handled may count as one.
    assert!(
        wait_for(|| up.output_text().contains("SIGINT received: shutting down")),
        "{}",
        up.output_text()
    );
    let status = up.signal(Signal::SIGINT);
    assert_eq!(status.code(), Some(1), "{status}: {}", up.output_text());
    assert!(
        up.output_text()
            .contains("second SIGINT: exiting without finishing the drain of the proxy's clients"),
        "{}",
        up.output_text()
    );
}
