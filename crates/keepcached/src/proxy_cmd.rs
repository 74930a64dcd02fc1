//! `keepcached proxy`: magent's command line (or a TOML file) for the replicating proxy.
//!
//! The proxy crate owns the flags that describe the proxy; this module does the process side
//! magent did: open-file limit, binding before daemonizing, `-D`, `-u`/`-g`, `-v`; adds `-P`
//! (pid file) and `--log-file`; and SIGHUP, which reads `--config FILE` again (with the same
//! flags over it) and hands the result to the running proxy (docs/proxy.md).

use anyhow::Context;
use clap::Parser;
use keepcached_proxy::{ConfigError, ProxyArgs, ProxyConfig};

use crate::{process, UsageError};

#[derive(Debug, Parser)]
#[command(
    name = "keepcached proxy",
    about = "the replicating proxy, a drop-in for magent"
)]
struct Cli {
    #[command(flatten)]
    args: ProxyArgs,
    #[command(flatten)]
    process: process::ProcessArgs,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<String>,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(cli) = crate::parse_command::<Cli>("keepcached proxy", args)? else {
        return Ok(());
    };
    let (args, process_args, metrics) = (cli.args, cli.process, cli.metrics);
    let (print_config, foreground, verbose) = (args.print_config, args.foreground, args.verbose);
    let (user, group) = (args.user.clone(), args.group.clone());
    let reload_args = args.clone();
    let config = args.into_config().map_err(|e| UsageError(e.to_string()))?;
    crate::metrics::check(metrics.as_deref())?;
    if print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    // Checked before anything is bound or forked: see `process::daemonize`.
    let identity = match (&user, &group) {
        (None, None) => None,
        _ if !nix::unistd::geteuid().is_root() => None,
        _ => Some(process::Identity::resolve(
            user.as_deref(),
            group.as_deref(),
        )?),
    };
    let pidfile = process_args.pidfile.map(process::absolute).transpose()?;
    // Info by default: every change of a server's state, with its reason, is what the operator
    // reads at 3 a.m.
    crate::init_logging(verbose.max(1), process_args.log_file.as_deref())?;
    process::ignore_signals_until_handled(&[nix::sys::signal::Signal::SIGHUP])?;
    let servers: usize = config.pools.iter().map(|p| p.servers.len()).sum();
    let per_server = config.backend.connections;
    process::raise_nofile_limit(config.max_connections + servers * per_server)?;
    let bound = keepcached_proxy::bind(config)?;
    let metrics = crate::metrics::bind(metrics.as_deref())?;
    if !foreground {
        process::daemonize(verbose > 0)?;
    }
    if let Some(identity) = identity {
        identity.assume()?;
    }
    let runtime = process::runtime()?;
    runtime.block_on(async move {
        let mut shutdown = process::shutdown_signal()?;
        process::may_cut_short("the drain of the proxy's clients", None);
        if let Some(endpoint) = metrics {
            crate::metrics::spawn(endpoint, vec![Box::new(bound.metrics())], shutdown.clone());
        }
        let reloads = reload_on_hangup(reload_args)?;
        // Written once SIGTERM and SIGHUP are handled, so that a signal sent as soon as it
        // appears meets the handler, not the default action.
        let _pidfile = pidfile.map(process::PidFile::create).transpose()?;
        process::report_ready("proxy")?;
        bound
            .serve_reloading(
                async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                },
                reloads,
            )
            .await
            .context("proxy")
    })
}

/// On each SIGHUP: the configuration read again, as at startup (the file, then the flags over
/// it), for the proxy to apply. Without `--config` there is nothing to read again; the signal is
/// logged and the proxy goes on.
fn reload_on_hangup(
    args: ProxyArgs,
) -> anyhow::Result<tokio::sync::mpsc::Receiver<Result<ProxyConfig, ConfigError>>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let Some(path) = &args.config else {
                tracing::warn!(
                    "SIGHUP: no configuration file to read again (started without --config); \
                     nothing changed"
                );
                continue;
            };
            tracing::info!(file = %path.display(), "SIGHUP: reading the configuration again");
            process::service_manager::reloading();
            let handled = hand_over(&tx, args.clone().into_config()).await;
            process::service_manager::reloaded();
            if !handled {
                return;
            }
        }
    });
    Ok(rx)
}

/// Hands a reloaded configuration (or why it could not be read) to the running proxy and waits
/// until the proxy has applied it (or logged it refused), so that READY=1 follows the change,
/// as systemd's reload protocol wants; false once the proxy has stopped.
///
/// The proxy's reloading task takes a configuration off the channel and applies it in the same
/// poll (its reload waits for nothing), on this process's one-thread runtime: so once the
/// channel, which holds one, has room again, the proxy is done with it.
pub async fn hand_over(
    tx: &tokio::sync::mpsc::Sender<Result<ProxyConfig, ConfigError>>,
    config: Result<ProxyConfig, ConfigError>,
) -> bool {
    tx.send(config).await.is_ok() && tx.reserve().await.is_ok()
}
