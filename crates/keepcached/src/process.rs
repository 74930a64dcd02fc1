//! Process-level chores shared by every role: limits, daemonizing, privileges, pid files and
//! signals.
//!
//! The one `unsafe` is in [`ignore_user_signals`]: nix sets a signal's disposition only with an
//! `unsafe` call (the same call installs handlers, which it cannot check), although ignoring a
//! signal runs no code of ours.

use std::path::PathBuf;

use anyhow::{bail, Context};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
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
    eprintln!(
        "keepcached: warning: the open-file limit is {hard} and cannot be raised to {wanted}; \
         about {} connections will fit",
        hard.saturating_sub(SPARE_FDS)
    );
    Ok(())
}

/// `-r`: let a crash leave a full core file.
pub fn raise_core_limit() {
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_CORE) {
        if setrlimit(Resource::RLIMIT_CORE, hard, hard).is_err() {
            eprintln!("keepcached: failed to raise the core file limit");
        }
    }
}

/// `-k`: keep every page in RAM; like memcached, a failure is a warning, not fatal.
pub fn lock_memory() {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    if let Err(e) = mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
        eprintln!("keepcached: warning: -k given but locking memory failed: {e}");
    }
}

/// Detaches from the terminal. Called before any thread exists (the runtime starts after it),
/// because fork keeps only the calling thread.
pub fn daemonize(keep_stdio: bool) -> anyhow::Result<()> {
    nix::unistd::daemon(false, keep_stdio).context("failed to daemonize")
}

/// Switches to `user` (with its primary group unless `group` names another) and drops
/// supplementary groups, as memcached's and magent's `-u` (and magent's `-g`) do.
pub fn drop_privileges(user: Option<&str>, group: Option<&str>) -> anyhow::Result<()> {
    use nix::unistd::{setgid, setgroups, setuid, Group, User};
    let pw = match user {
        Some(name) => match User::from_name(name).context("looking up the user")? {
            Some(pw) => Some(pw),
            None => bail!("can't find the user {name} to switch to"),
        },
        None => None,
    };
    let gid = match group {
        Some(name) => match Group::from_name(name).context("looking up the group")? {
            Some(gr) => Some(gr.gid),
            None => bail!("can't find the group {name} to switch to"),
        },
        None => pw.as_ref().map(|pw| pw.gid),
    };
    setgroups(&[]).context("failed to drop supplementary groups")?;
    if let Some(gid) = gid {
        setgid(gid).context("failed to switch group")?;
    }
    if let Some(pw) = pw {
        setuid(pw.uid).with_context(|| format!("failed to assume identity of user {}", pw.name))?;
    }
    Ok(())
}

/// A pid file that is removed when the process exits normally.
#[derive(Debug)]
pub struct PidFile(PathBuf);

impl PidFile {
    pub fn create(path: PathBuf) -> anyhow::Result<PidFile> {
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("could not write pid file {}", path.display()))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Ignores SIGUSR1 and SIGUSR2 until the runtime handles them: their default action ends the
/// process, and the server handles them (a graceful shutdown, a save) only once its runtime
/// runs, after loading the `-e` file, which takes seconds for a large cache. Without this, a
/// save requested meanwhile (a SIGUSR2 from a cron job, say) would kill the server before it
/// serves. Ignored, such a signal is dropped: the cache being loaded is the file's, so there is
/// nothing new to save, and a SIGUSR1 can be sent again once the server serves. tokio replaces
/// the disposition when it registers its own handlers, and `-d`'s fork keeps it meanwhile.
#[allow(unsafe_code)]
pub fn ignore_user_signals() -> anyhow::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGUSR1, Signal::SIGUSR2] {
        // SAFETY: SIG_IGN installs no handler, so no code of ours runs in a signal context.
        unsafe { sigaction(signal, &ignore) }.with_context(|| format!("ignoring {signal}"))?;
    }
    Ok(())
}

/// Turns true on SIGTERM or SIGINT: the one shutdown signal every task of a role watches.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tx.send_replace(true);
    });
    rx
}

/// The runtime a command runs on: one thread for accepting, signals and housekeeping (and all of
/// VRRP). The cache server and the proxy serve their connections on worker threads of their own.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}
