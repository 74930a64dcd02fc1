//! Process-level chores shared by every role: limits, daemonizing, privileges, pid files, log
//! files, signals, and what a fatal error prints and exits with.
//!
//! Two functions hold `unsafe`: [`ignore_signals_until_handled`] (nix sets a signal's
//! disposition only with an `unsafe` call, since the same call installs handlers, which it
//! cannot check, although ignoring a signal runs no code of ours) and [`daemonize`] (fork,
//! which is sound only while the process has one thread).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::Signal;
use tokio::sync::watch;

/// Descriptors kept for listeners, log files and backends beyond the connection limit.
const SPARE_FDS: u64 = 64;

/// Raises the open-file limit so that `connections` clients fit, as memcached does for `-c`.
///
/// Where the hard limit cannot be raised (no CAP_SYS_RESOURCE, as in most containers), the soft
/// limit goes up to the hard one and a warning says how many connections will really fit: a
/// cache that starts with fewer connections beats one that does not start.
pub fn raise_nofile_limit(connections: usize) -> anyhow::Result<()> {
    let wanted = connections as u64 + SPARE_FDS;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    if soft >= wanted {
        return Ok(());
    }
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, hard.max(wanted)).is_ok() {
        return Ok(());
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
        .context("failed to raise the open-file limit")?;
    tracing::warn!(
        "the open-file limit is {hard} and cannot be raised to {wanted}; about {} connections \
         will fit",
        hard.saturating_sub(SPARE_FDS)
    );
    Ok(())
}

/// `-r`: let a crash leave a full core file.
pub fn raise_core_limit() {
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_CORE) {
        if setrlimit(Resource::RLIMIT_CORE, hard, hard).is_err() {
            tracing::warn!("-r given but raising the core file limit failed");
        }
    }
}

/// `-k`: keep every page in RAM; like memcached, a failure is a warning, not fatal.
pub fn lock_memory() {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    if let Err(e) = mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
        tracing::warn!("-k given but locking memory failed: {e}");
    }
}

/// Exit statuses from sysexits.h, used where memcached 1.6 uses them (and for the failures it
/// has no status for, the one with the same meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sysexit {
    /// EX_USAGE: a bad command line or configuration, found before anything starts.
    Usage = 64,
    /// EX_NOUSER: `-u` or `-g` names nobody (memcached: "can't find the user").
    NoUser = 67,
    /// EX_OSERR: the system refused — a port in use, a limit, setuid, fork.
    OsError = 71,
    /// EX_CANTCREAT: a file we write (pid file, log file) cannot be created.
    CantCreate = 73,
}

/// The exit status an error means: the one place where kinds of failure map to codes. A
/// failure of no known kind (a `-e` save that failed, a refused `ctl` command) exits 1.
pub fn exit_status(error: &anyhow::Error) -> u8 {
    use keepcached_proxy::ProxyError;
    use keepcached_server::ServeError;
    let status = error.chain().find_map(|cause| {
        if cause.is::<crate::UsageError>() {
            Some(Sysexit::Usage)
        } else if let Some(e) = cause.downcast_ref::<LifecycleError>() {
            Some(match e {
                LifecycleError::NoUser(_) | LifecycleError::NoGroup(_) => Sysexit::NoUser,
                LifecycleError::CantCreate { .. } => Sysexit::CantCreate,
            })
        } else if let Some(e) = cause.downcast_ref::<ServeError>() {
            Some(match e {
                ServeError::NothingToListen => Sysexit::Usage,
                _ => Sysexit::OsError,
            })
        } else if let Some(e) = cause.downcast_ref::<ProxyError>() {
            match e {
                ProxyError::Config(_) => Some(Sysexit::Usage),
                ProxyError::Bind { .. } => Some(Sysexit::OsError),
                _ => None,
            }
        } else if cause.is::<keepcached_metrics::BindError>() {
            Some(Sysexit::OsError)
        } else if cause.is::<nix::errno::Errno>() {
            // A system call of the setup here: a limit, setuid, fork.
            Some(Sysexit::OsError)
        } else {
            None
        }
    });
    status.map_or(1, |s| s as u8)
}

/// How the process ends: a clean stop is logged; a failure is said once — to the parent that
/// waits for a daemon in the foreground if there is one (it prints the message), else on
/// stderr — and also logged when the log goes to a file (a daemon's stderr leads nowhere).
pub fn exit(result: anyhow::Result<()>) -> std::process::ExitCode {
    let error = match result {
        Ok(()) => {
            tracing::info!("stopped");
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => e,
    };
    let status = exit_status(&error);
    let text = error_text(&error);
    if LOG_TO_FILE.get().is_some() {
        tracing::error!("exiting with status {status}: {text}");
    }
    if !report_failure(status, &text) {
        eprintln!("keepcached: {text}");
    }
    std::process::ExitCode::from(status)
}

/// Set once the log goes to `--log-file`.
static LOG_TO_FILE: std::sync::OnceLock<()> = std::sync::OnceLock::new();

/// An error's message with its causes, each said once: our errors quote their source's text
/// ("failed to listen on ...: Address already in use (os error 98)") and also return it as
/// their source, so printing the whole chain would repeat the OS error.
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Failures of the process's own setup, each with its exit status in [`exit_status`].
#[derive(Debug)]
pub enum LifecycleError {
    NoUser(String),
    NoGroup(String),
    CantCreate {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl std::fmt::Display for LifecycleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LifecycleError::NoUser(name) => write!(f, "can't find the user {name} to switch to"),
            LifecycleError::NoGroup(name) => {
                write!(f, "can't find the group {name} to switch to")
            }
            LifecycleError::CantCreate { what, path, source } => {
                write!(
                    f,
                    "could not create the {what} {}: {source}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for LifecycleError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LifecycleError::CantCreate { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The write end of the pipe to the parent that waits in the foreground for a daemon (see
/// [`daemonize`]) until the daemon reports that it serves or why it failed.
static PARENT: Mutex<Option<Parent>> = Mutex::new(None);

#[derive(Debug)]
struct Parent {
    pipe: File,
    keep_stdio: bool,
}

/// Goes to the background and returns in the child, which is the daemon. Called before any
/// thread exists (the runtime starts after it), because fork keeps only the calling thread.
///
/// The parent does not exit at once, as daemon(3)'s does: it waits on a pipe until the child
/// calls [`report_ready`] (then it exits 0) or fails (then it prints the child's message and
/// exits with its status), so that a failure after the fork — switching user, writing the
/// pid file — is seen by whoever started the daemon, and an exit status of 0 means a daemon
/// is serving. The child keeps the terminal until then, for the same reason; `keep_stdio`
/// (memcached's `-d -v`) keeps it afterwards too.
#[allow(unsafe_code)]
pub fn daemonize(keep_stdio: bool) -> anyhow::Result<()> {
    use nix::fcntl::OFlag;
    use nix::unistd::{fork, pipe2, setsid, ForkResult};
    // Close-on-exec, so that no program the daemon starts (a VRRP track script) holds the
    // parent waiting.
    let (read, write) = pipe2(OFlag::O_CLOEXEC).context("failed to create a pipe")?;
    // SAFETY: no other thread exists yet (callers start the runtime after this), so the
    // child's memory is consistent: no lock is held by a thread that fork leaves behind.
    match unsafe { fork() }.context("failed to fork")? {
        ForkResult::Parent { child } => {
            drop(write);
            std::process::exit(wait_for_daemon(File::from(read), child));
        }
        ForkResult::Child => {
            drop(read);
            *lock_parent() = Some(Parent {
                pipe: File::from(write),
                keep_stdio,
            });
            setsid().context("failed to start a new session")?;
            std::env::set_current_dir("/").context("failed to change directory to /")?;
            Ok(())
        }
    }
}

/// The parent's side of [`daemonize`]: the exit status to leave with.
fn wait_for_daemon(mut pipe: File, child: nix::unistd::Pid) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    let mut report = Vec::new();
    let _ = pipe.read_to_end(&mut report);
    if let Some((&status, message)) = report.split_first() {
        if status != 0 {
            eprintln!("keepcached: {}", String::from_utf8_lossy(message));
        }
        return i32::from(status);
    }
    // The pipe closed with no report: the child ended without reaching its error handling.
    match waitpid(child, None) {
        Ok(WaitStatus::Exited(_, status)) => {
            eprintln!("keepcached: the daemon exited with status {status} before serving");
            if status == 0 {
                1
            } else {
                status
            }
        }
        Ok(WaitStatus::Signaled(_, signal, _)) => {
            eprintln!("keepcached: the daemon was killed by {signal} before serving");
            Sysexit::OsError as i32
        }
        other => {
            eprintln!("keepcached: lost track of the daemon (pid {child}): {other:?}");
            Sysexit::OsError as i32
        }
    }
}

fn lock_parent() -> std::sync::MutexGuard<'static, Option<Parent>> {
    PARENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Logs that `role` serves, and tells the waiting parent (if this process is a daemon that
/// has not reported yet) so that it exits 0; then lets go of the terminal unless asked to keep
/// it.
pub fn report_ready(role: &str) -> anyhow::Result<()> {
    tracing::info!("{role} serving, pid {}", std::process::id());
    service_manager::ready();
    let Some(Parent {
        mut pipe,
        keep_stdio,
    }) = lock_parent().take()
    else {
        return Ok(());
    };
    // A parent that is gone (killed while waiting) leaves nobody to tell; the daemon serves on.
    let _ = pipe.write_all(&[0]);
    drop(pipe);
    if !keep_stdio {
        use std::os::fd::AsRawFd;
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .context("opening /dev/null")?;
        for fd in 0..=2 {
            nix::unistd::dup2(null.as_raw_fd(), fd).context("detaching from the terminal")?;
        }
    }
    Ok(())
}

/// Hands a fatal error's message and status to the waiting parent, which prints it; false if
/// there is no parent waiting (the caller prints it).
pub fn report_failure(status: u8, text: &str) -> bool {
    let Some(mut parent) = lock_parent().take() else {
        return false;
    };
    let mut report = vec![status];
    report.extend_from_slice(text.as_bytes());
    parent.pipe.write_all(&report).is_ok()
}

/// The identity `-u` (and the proxy's `-g`) asks for, looked up before anything is bound or
/// forked so that a name that does not exist fails at once, in the foreground.
#[derive(Debug)]
pub struct Identity {
    user: Option<nix::unistd::User>,
    gid: Option<nix::unistd::Gid>,
}

impl Identity {
    pub fn resolve(user: Option<&str>, group: Option<&str>) -> anyhow::Result<Identity> {
        use nix::unistd::{Group, User};
        let user = match user {
            Some(name) => match User::from_name(name).context("looking up the user")? {
                Some(pw) => Some(pw),
                None => return Err(LifecycleError::NoUser(name.into()).into()),
            },
            None => None,
        };
        let gid = match group {
            Some(name) => match Group::from_name(name).context("looking up the group")? {
                Some(gr) => Some(gr.gid),
                None => return Err(LifecycleError::NoGroup(name.into()).into()),
            },
            None => user.as_ref().map(|pw| pw.gid),
        };
        Ok(Identity { user, gid })
    }

    /// Switches to the user (with its primary group unless a group was named) and drops
    /// supplementary groups, as memcached's and magent's `-u` (and magent's `-g`) do.
    pub fn assume(self) -> anyhow::Result<()> {
        use nix::unistd::{setgid, setgroups, setuid};
        setgroups(&[]).context("failed to drop supplementary groups")?;
        if let Some(gid) = self.gid {
            setgid(gid).context("failed to switch group")?;
        }
        if let Some(pw) = self.user {
            setuid(pw.uid)
                .with_context(|| format!("failed to assume identity of user {}", pw.name))?;
        }
        Ok(())
    }
}

/// A pid file that is removed when the process exits cleanly (a return from the role, after
/// SIGTERM or SIGINT, or a fatal error after it was written), and when a second signal cuts the
/// shutdown short ([`may_cut_short`]).
#[derive(Debug)]
pub struct PidFile(PathBuf);

/// The pid file's path while it exists, for an exit that runs no destructor.
static PIDFILE: Mutex<Option<PathBuf>> = Mutex::new(None);

fn lock_pidfile() -> std::sync::MutexGuard<'static, Option<PathBuf>> {
    PIDFILE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PidFile {
    /// Writes the pid to a temporary file beside `path` and renames it, so that a reader never
    /// sees a half-written file. `path` must be absolute once the process has daemonized.
    pub fn create(path: PathBuf) -> anyhow::Result<PidFile> {
        let cant = |source| LifecycleError::CantCreate {
            what: "pid file",
            path: path.clone(),
            source,
        };
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        std::fs::write(&tmp, format!("{}\n", std::process::id())).map_err(cant)?;
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(cant(e).into());
        }
        *lock_pidfile() = Some(path.clone());
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        lock_pidfile().take();
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The pid and log file flags of the roles that have no memcached command line to follow (the
/// server has memcached's `-P` and adds `--log-file`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ProcessArgs {
    /// Write the process id to this file; it is removed at a clean exit.
    #[arg(short = 'P', long = "pidfile", value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Log to this file (appended to, plain text) instead of stderr.
    #[arg(long = "log-file", value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

/// Opens `--log-file` for appending (so logrotate's `copytruncate` works: every line is written
/// at the file's end, wherever that is after a truncation), before daemonizing or switching user, so that a path
/// only root may write works and a bad one fails in the foreground.
pub fn open_log_file(path: &Path) -> anyhow::Result<File> {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|source| LifecycleError::CantCreate {
            what: "log file",
            path: path.to_path_buf(),
            source,
        })?;
    let _ = LOG_TO_FILE.set(());
    Ok(file)
}

/// Makes `path` absolute, because daemonizing changes the working directory to /.
pub fn absolute(path: PathBuf) -> anyhow::Result<PathBuf> {
    std::path::absolute(&path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// Ignores `signals` until the role handles them on its runtime: their default action ends the
/// process. Ignored, such a signal is dropped; tokio replaces the disposition when a role
/// registers its own handler, and `-d`'s fork keeps it meanwhile.
///
/// SIGHUP: the server ignores it for good, as memcached does; the proxy and vrrp must not die
/// of it (keepalived and twemproxy users send it to reload) before, or unless, they handle it.
/// SIGUSR1 and SIGUSR2: the server handles them (a graceful shutdown, a save) only once its
/// runtime runs, after loading the `-e` file, which takes seconds for a large cache; a save
/// requested meanwhile (a SIGUSR2 from a cron job, say) would otherwise kill it before it
/// serves. The cache being loaded is the file's, so there is nothing new to save, and a
/// SIGUSR1 can be sent again once the server serves.
#[allow(unsafe_code)]
pub fn ignore_signals_until_handled(signals: &[Signal]) -> anyhow::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    for &signal in signals {
        // SAFETY: SIG_IGN installs no handler, so no code of ours runs in a signal context.
        unsafe { sigaction(signal, &ignore) }.with_context(|| format!("ignoring {signal}"))?;
    }
    Ok(())
}

/// SIGHUP on a role that reloads nothing (the server): ignored, as memcached does, and logged,
/// so that an operator who expected a reload learns there is none. Called on the runtime.
pub fn log_ignored_hangups() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).context("handling SIGHUP")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP received: ignored, there is no configuration to reload");
        }
    });
    Ok(())
}

/// Turns true on SIGTERM or SIGINT: the one shutdown signal every task of a role watches. The
/// signal is logged, so the log says why the process stopped. Called on the runtime, before
/// the role reports that it serves: the handlers are in place when this returns, so a signal
/// that follows at once is not met by the default action (which ends the process at once,
/// leaving the pid file behind).
///
/// A second SIGTERM or SIGINT during the shutdown ends the process at once if the step under
/// way may be cut short ([`may_cut_short`]): an operator who sends it does not want to wait
/// for a long drain or save, and should not need SIGKILL, which would leave the pid file and
/// a save's temporary file behind.
pub fn shutdown_signal() -> anyhow::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{name} received: shutting down");
        service_manager::stopping();
        tx.send_replace(true);
        loop {
            let again = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            cut_short(again);
        }
    });
    Ok(rx)
}

/// The step of a shutdown under way, as a second SIGTERM or SIGINT sees it.
#[derive(Debug)]
enum Step {
    /// Ends at the second signal: what it is, for the log, and the file it would leave half
    /// written (a save's temporary file), removed then.
    Cut {
        what: String,
        leftover: Option<PathBuf>,
    },
    /// Goes on despite the second signal: why.
    Finish(&'static str),
}

/// Until a role names its steps: VRRP's, which hands the VIP over as it stops.
static STEP: Mutex<Step> = Mutex::new(Step::Finish(
    "VRRP sends priority 0 and removes the VIP first, or both nodes would hold it",
));

fn lock_step() -> std::sync::MutexGuard<'static, Step> {
    STEP.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// From now on a second SIGTERM or SIGINT during the shutdown ends the process at once, in the
/// middle of `what` ("the drain of the proxy's clients", "the save to FILE"): logged, `leftover`
/// and the pid file removed, exit status 1 (the shutdown did not finish, as when a save fails).
pub fn may_cut_short(what: impl Into<String>, leftover: Option<PathBuf>) {
    *lock_step() = Step::Cut {
        what: what.into(),
        leftover,
    };
}

/// A second `signal` during the shutdown: see [`may_cut_short`].
fn cut_short(signal: &str) {
    let step = lock_step();
    let (what, leftover) = match &*step {
        Step::Finish(why) => {
            tracing::warn!("second {signal}: the shutdown goes on: {why}");
            return;
        }
        Step::Cut { what, leftover } => (what, leftover),
    };
    tracing::error!("second {signal}: exiting without finishing {what}");
    // Removed under the lock, so that no new step names another file meanwhile; a save that
    // completes meanwhile has renamed it already, and its file is whole.
    if let Some(path) = leftover {
        let _ = std::fs::remove_file(path);
    }
    if let Some(path) = lock_pidfile().take() {
        let _ = std::fs::remove_file(path);
    }
    std::process::exit(1);
}

/// The runtime a command runs on: one thread for accepting, signals and housekeeping (and all of
/// VRRP). The cache server and the proxy serve their connections on worker threads of their own.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// systemd's service notifications (`Type=notify`), through the sd-notify crate: each role
/// says READY=1 once it serves ([`report_ready`]), STOPPING=1 when a shutdown begins
/// ([`shutdown_signal`]), RELOADING=1 then READY=1 around a SIGHUP reload, and WATCHDOG=1 at
/// half of `WatchdogSec=` while its main runtime runs. Without `NOTIFY_SOCKET` (not started by
/// systemd) each call does nothing.
pub mod service_manager {
    use sd_notify::NotifyState;

    fn send(states: &[NotifyState]) {
        // A service manager that went away cannot be told anything more; the role serves on.
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::warn!("could not notify the service manager: {e}");
        }
    }

    /// READY=1, and the watchdog's pings from then on if the unit asks for them. Called on the
    /// main runtime, whose stall (the one thread that accepts, handles signals and runs VRRP)
    /// is what the watchdog should see.
    pub fn ready() {
        send(&[NotifyState::Ready]);
        let mut usec = 0;
        if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let period = std::time::Duration::from_micros(usec / 2);
        static STARTED: std::sync::Once = std::sync::Once::new();
        // A reload says READY=1 again; one pinger is enough.
        STARTED.call_once(|| {
            tracing::info!(?period, "systemd watchdog enabled: pinging");
            runtime.spawn(async move {
                let mut ticks = tokio::time::interval(period);
                loop {
                    ticks.tick().await;
                    send(&[NotifyState::Watchdog]);
                }
            });
        });
    }

    pub fn stopping() {
        send(&[NotifyState::Stopping]);
    }

    /// RELOADING=1 with the time, as `Type=notify-reload` wants it (plain `Type=notify` takes
    /// it too); [`reloaded`] ends the reload.
    pub fn reloading() {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(_) => send(&[NotifyState::Reloading]),
        }
    }

    /// READY=1 after a reload, whether the new configuration was taken or refused (the
    /// running one is kept and serves).
    pub fn reloaded() {
        send(&[NotifyState::Ready]);
    }
}
