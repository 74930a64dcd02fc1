//! `keepcached demo` end to end (root; CI runs it): the whole runbook passes and says so in its
//! transcript, and nothing it created is left afterwards — after a clean run, after SIGINT,
//! SIGTERM or SIGHUP mid-run (exit 128 + N), after a step that failed (exit 1, the step
//! named), and after a run killed with SIGKILL (the next run removes what it left).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keepcached_testkit::env;

/// A demo killed by one test leaves namespaces that another test's demo would remove.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn demo() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keepcached"));
    cmd.arg("demo");
    cmd
}

/// The namespaces of the demo with pid `pid`.
fn namespaces_of(pid: u32) -> Vec<String> {
    let prefix = format!("kcdemo{pid}-");
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Links named after the demo in the machine's own namespace (the demo makes none there).
fn links_of(pid: u32) -> Vec<String> {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("kcdemo{pid}")))
        .map(str::to_owned)
        .collect()
}

fn assert_nothing_left(pid: u32, transcript: &str) {
    assert_eq!(namespaces_of(pid), Vec::<String>::new(), "{transcript}");
    assert_eq!(links_of(pid), Vec::<String>::new(), "{transcript}");
    let dir = std::env::temp_dir().join(format!("kcdemo{pid}"));
    assert!(!dir.exists(), "{} left\n{transcript}", dir.display());
}

/// Removes what the demo with pid `pid` left, when a test fails before the demo (or the next
/// one) did: its processes (by pid, from its namespaces), namespaces and scratch directory.
struct Cleanup(u32);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in namespaces_of(self.0) {
            let pids = Command::new("ip").args(["netns", "pids", &ns]).output();
            if let Ok(out) = pids {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("kcdemo{}", self.0)));
    }
}

/// A running demo whose stdout lines arrive on a channel.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: String,
}

impl Running {
    fn start() -> Running {
        let mut child = demo()
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: String::new(),
        }
    }

    /// Waits for a line containing `needle`; returns it.
    fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with `{needle}` within {limit:?}\n{}", self.seen),
            }
        }
    }

    /// The rest of the transcript, once the demo has exited, and its exit status.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        (status, std::mem::take(&mut self.seen))
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pids a transcript says the demo started (`keepcached node --config FILE (pid N)`).
fn started_pids(transcript: &str) -> Vec<i32> {
    transcript
        .split("(pid ")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// Waits until none of `pids` runs any more (a zombie still counts as running: nobody reaped it).
fn await_gone(pids: &[i32], transcript: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .collect();
        if alive.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still running: {alive:?}\n{transcript}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_runbook_passes_and_leaves_nothing() {
    if !env::require("the_runbook_passes_and_leaves_nothing", true, &["ip"]) {
        return;
    }
    let _serial = serial();
    let run = Running::start();
    let pid = run.child.id();
    let _cleanup = Cleanup(pid);
    let (status, transcript) = run.finish();
    println!("{transcript}");
    assert!(status.success(), "{status}\n{transcript}");
    for line in [
        // The seed's session through the VIP, and the value on both servers.
        "< STORED",
        "ok: both servers hold test = nihao: the proxy replicated the write",
        "ok: 10000 keys on both servers",
        // Failover.
        "VIP 198.18.111.100 now on memcached2",
        "memcached1 stopped: node exit status: 0",
        "read back through the VIP: 100 keys, 0 stale, 0 lost",
        // The return: loaded from its save file (test = nihao), flushed, warmed, repaired.
        "flushing it before it is read again",
        "to=warming",
        "from=warming to=up reason=\"it holds nothing stale\"",
        "VIP now on memcached1",
        "ok: memcached1's server repaired and up in both proxies, VIP back on memcached1, 0 stale reads",
        "the working set on memcached1's server alone: 10000 of 10000 keys",
        "100 failover keys on memcached1's server alone: 0 stale, 0 lost",
        "100 failover keys on the VIP: 0 stale, 0 lost",
        "ok: no namespace named",
        "demo passed: 11 steps ok",
        "stale reads: 0",
    ] {
        assert!(transcript.contains(line), "no `{line}` in\n{transcript}");
    }
    // The save file held the working set, test and the failover keys.
    let loaded: u64 = transcript
        .split("memcached1's server: loaded ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no load line in\n{transcript}"));
    assert!(loaded > 10_000, "{transcript}");
    let reads = transcript
        .lines()
        .find(|l| l.contains("reads of test through the VIP meanwhile:"))
        .unwrap();
    assert!(reads.contains(" 0 stale, 0 missing,"), "{reads}");
    assert!(!reads.contains(": 0 zaijian"), "{reads}");
    assert_nothing_left(pid, &transcript);
    await_gone(&started_pids(&transcript), &transcript);
}

#[test]
fn a_killed_run_is_cleaned_up_by_the_next_and_sigint_cleans_up() {
    if !env::require(
        "a_killed_run_is_cleaned_up_by_the_next_and_sigint_cleans_up",
        true,
        &["ip"],
    ) {
        return;
    }
    let _serial = serial();
    // A run killed once its nodes run and hold the VIP: it leaves everything behind.
    let mut killed = Running::start();
    let killed_pid = killed.child.id();
    let _killed_cleanup = Cleanup(killed_pid);
    killed.wait_line(
        "ok: VIP 198.18.111.100 on memcached1",
        Duration::from_secs(30),
    );
    killed.signal(nix::sys::signal::Signal::SIGKILL);
    let (status, killed_transcript) = killed.finish();
    assert_eq!(status.code(), None, "{status}");
    let left = namespaces_of(killed_pid);
    assert_eq!(left.len(), 4, "{left:?}\n{killed_transcript}");
    let orphans = started_pids(&killed_transcript);
    assert_eq!(orphans.len(), 2, "{killed_transcript}");

    // The next run removes it first.
    let mut next = Running::start();
    let next_pid = next.child.id();
    let _next_cleanup = Cleanup(next_pid);
    let removed = next.wait_line("removed what a killed demo left:", Duration::from_secs(30));
    for ns in &left {
        assert!(removed.contains(ns.as_str()), "{removed}");
    }
    assert_eq!(namespaces_of(killed_pid), Vec::<String>::new());
    await_gone(&orphans, &killed_transcript);
    assert!(!std::env::temp_dir()
        .join(format!("kcdemo{killed_pid}"))
        .exists());

    // Interrupted mid-failover: both nodes up, one of them being stopped, the client writing.
    next.wait_line("memcached1$ kill -TERM", Duration::from_secs(60));
    assert_eq!(namespaces_of(next_pid).len(), 4);
    next.signal(nix::sys::signal::Signal::SIGINT);
    let (status, transcript) = next.finish();
    assert_eq!(status.code(), Some(130), "{status}\n{transcript}");
    // (The demo notices the signal at its next poll: in step 6, or 7 if step 6 just ended.)
    assert!(
        transcript.contains("demo interrupted by SIGINT during step 6 (fault")
            || transcript.contains("demo interrupted by SIGINT during step 7 (writes"),
        "{transcript}"
    );
    assert!(
        transcript.contains("everything it created was removed"),
        "{transcript}"
    );
    assert_nothing_left(next_pid, &transcript);
    await_gone(&started_pids(&transcript), &transcript);
}

/// Without root the demo says so and exits 77 (EX_NOPERM), creating nothing. As root, the
/// test drops to nobody with setpriv to see it.
#[test]
fn without_root_it_says_so_and_exits_77() {
    let mut cmd = if env::is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_keepcached"),
            "demo",
        ]);
        cmd
    } else {
        demo()
    };
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(
        stderr.contains("keepcached demo: needs root (it creates network namespaces"),
        "{stderr}"
    );
}

/// README: a step that fails makes the demo exit 1 naming it, and it still removes everything
/// it created. Step 2 waits for the VRRP election (Master_Down_Interval 3.6 s) checking that
/// both nodes run; memcached2's node is killed as soon as the transcript gives its pid, so
/// step 2 is the one that fails.
#[test]
fn a_failed_step_exits_1_naming_it_and_cleans_up() {
    if !env::require(
        "a_failed_step_exits_1_naming_it_and_cleans_up",
        true,
        &["ip"],
    ) {
        return;
    }
    let _serial = serial();
    let mut run = Running::start();
    let pid = run.child.id();
    let _cleanup = Cleanup(pid);
    let line = run.wait_line("memcached2: keepcached node", Duration::from_secs(30));
    let node = *started_pids(&line).first().expect("the node's pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (status, transcript) = run.finish();
    assert_eq!(status.code(), Some(1), "{status}\n{transcript}");
    let failed = format!(
        "demo FAILED at step 2 (start memcached1 and memcached2 (server, proxy, VRRP each); \
         wait for the VIP): memcached2's node (pid {node}) exited"
    );
    assert!(
        transcript.contains(&failed),
        "no `{failed}` in\n{transcript}"
    );
    assert_nothing_left(pid, &transcript);
    await_gone(&started_pids(&transcript), &transcript);
}

/// README: stopped by signal N the demo exits 128 + N after removing everything it created,
/// for SIGTERM (143) and SIGHUP (129) as for SIGINT (130, above).
#[test]
fn sigterm_and_sighup_exit_128_plus_n_and_clean_up() {
    if !env::require(
        "sigterm_and_sighup_exit_128_plus_n_and_clean_up",
        true,
        &["ip"],
    ) {
        return;
    }
    let _serial = serial();
    for (signal, code) in [
        (nix::sys::signal::Signal::SIGTERM, 143),
        (nix::sys::signal::Signal::SIGHUP, 129),
    ] {
        let mut run = Running::start();
        let pid = run.child.id();
        let _cleanup = Cleanup(pid);
        // Once both nodes run: their processes are among what must go.
        run.wait_line("memcached2: keepcached node", Duration::from_secs(30));
        run.signal(signal);
        let (status, transcript) = run.finish();
        assert_eq!(status.code(), Some(code), "{status}\n{transcript}");
        assert!(
            transcript.contains(&format!(
                "demo interrupted by {signal} during step 2 (start"
            )),
            "{transcript}"
        );
        assert!(
            transcript.contains("everything it created was removed"),
            "{transcript}"
        );
        assert_nothing_left(pid, &transcript);
        await_gone(&started_pids(&transcript), &transcript);
    }
}
