//! `keepcached vrrp`: the VIP failover role, from a TOML file or an existing keepalived.conf.
//!
//! A bad configuration is reported (file, line or key, why) and exits with status 64 before
//! any socket is opened. SIGTERM and SIGINT stop the daemon the clean way: a master sends
//! priority 0, so that a backup takes over after Skew_Time (or less, with fast takeover)
//! rather than Master_Down_Interval, then removes the VIP. SIGUSR1 logs every
//! instance's state and advert counters (and rewrites the status file, if there is one).
//! SIGHUP re-reads the configuration file and applies it as keepalived's reload does
//! (`keepcached_vrrp::run` says how); a file that does not load is logged and the running
//! configuration kept.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use keepcached_vrrp::{parse_keepalived_conf, VrrpConfig};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, Notify};

use crate::{process, UsageError};

#[derive(Debug, Parser)]
#[command(
    name = "keepcached vrrp",
    about = "VIP failover (VRRP v2/v3), wire-compatible with keepalived"
)]
struct Cli {
    /// keepcached's TOML configuration.
    #[arg(long, value_name = "FILE", conflicts_with = "keepalived_conf")]
    config: Option<std::path::PathBuf>,
    /// The vrrp_script and vrrp_instance blocks of an existing keepalived.conf.
    #[arg(long, value_name = "FILE", required_unless_present = "config")]
    keepalived_conf: Option<std::path::PathBuf>,
    /// With --keepalived-conf: take over 1 ms per priority level after the master's
    /// priority 0, not the full Skew_Time (on by default in TOML). Only when every
    /// backup of the virtual router runs keepcached.
    #[arg(long, requires = "keepalived_conf")]
    fast_takeover: bool,
    /// Keep this file up to date with every instance's state and advert counters
    /// (overrides `status_file` in the TOML configuration).
    #[arg(long, value_name = "FILE")]
    status_file: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<String>,
    /// Verbose logging (repeat for more).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(flatten)]
    process: process::ProcessArgs,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(cli) = crate::parse_command::<Cli>("keepcached vrrp", args)? else {
        return Ok(());
    };
    let path = cli
        .config
        .clone()
        .or(cli.keepalived_conf.clone())
        .expect("clap requires one of the two");
    let keepalived = cli.keepalived_conf.is_some();
    let (status_file, fast_takeover) = (cli.status_file.clone(), cli.fast_takeover);
    // Reads the file the daemon was started with, then applies the command-line overrides; the
    // same at startup and at each SIGHUP.
    let load = move || -> Result<(VrrpConfig, Vec<String>), String> {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let parsed = if keepalived {
            parse_keepalived_conf(&text)
        } else {
            VrrpConfig::from_toml(&text).map(|config| (config, Vec::new()))
        };
        let (mut config, warnings) = parsed.map_err(|e| format!("{}: {e}", path.display()))?;
        if status_file.is_some() {
            config.status_file.clone_from(&status_file);
        }
        if fast_takeover {
            for i in &mut config.instances {
                i.fast_takeover = true;
            }
        }
        let warnings = warnings
            .iter()
            .map(|w| format!("{}: {w}", path.display()))
            .collect();
        Ok((config, warnings))
    };
    let (config, warnings) = load().map_err(UsageError)?;
    crate::metrics::check(cli.metrics.as_deref())?;
    for warning in warnings {
        eprintln!("keepcached: {warning}");
    }
    crate::init_logging(cli.verbose.max(1), cli.process.log_file.as_deref())?;
    process::ignore_signals_until_handled(&[nix::sys::signal::Signal::SIGHUP])?;
    let metrics = crate::metrics::bind(cli.metrics.as_deref())?;
    let pidfile = cli.process.pidfile;
    let runtime = process::runtime()?;
    runtime.block_on(async move {
        let mut shutdown = process::shutdown_signal()?;
        let published = keepcached_vrrp::metrics::VrrpMetrics::default();
        if let Some(endpoint) = metrics {
            crate::metrics::spawn(
                endpoint,
                vec![Box::new(published.clone())],
                shutdown.clone(),
            );
        }
        let report = Arc::new(Notify::new());
        let mut usr1 = signal(SignalKind::user_defined1()).context("handling SIGUSR1")?;
        let on_usr1 = Arc::clone(&report);
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                on_usr1.notify_one();
            }
        });
        // SIGHUP re-reads the configuration, as keepalived does: the daemon applies a good one;
        // a bad one is logged here, with its file, and the running one is kept.
        let mut hup = signal(SignalKind::hangup()).context("handling SIGHUP")?;
        let (reload_tx, reload_rx) = mpsc::channel(1);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                process::service_manager::reloading();
                match load() {
                    Ok((config, warnings)) => {
                        for warning in warnings {
                            tracing::warn!("{warning}");
                        }
                        tracing::info!("SIGHUP: reloading the configuration");
                        let applied = hand_over(&reload_tx, config).await;
                        process::service_manager::reloaded();
                        if !applied {
                            return;
                        }
                    }
                    Err(e) => {
                        // One log line: a TOML error comes with a multi-line excerpt.
                        let e: Vec<&str> =
                            e.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
                        tracing::error!(
                            "SIGHUP: configuration not reloaded, the running one is kept: {}",
                            e.join(" ")
                        );
                        process::service_manager::reloaded();
                    }
                }
            }
        });
        // Written once SIGTERM, SIGUSR1 and SIGHUP are handled, as the server and the proxy do,
        // so that a signal sent as soon as it appears meets the handler, not the default action.
        let _pidfile = pidfile.map(process::PidFile::create).transpose()?;
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let vrrp = keepcached_vrrp::run_with(
            config,
            async move {
                let _ = shutdown.wait_for(|s| *s).await;
            },
            report,
            reload_rx,
            keepcached_vrrp::Embedding {
                local: Vec::new(),
                started: Some(started_tx),
                slots: published.0,
                shares_threads: false,
            },
        );
        tokio::pin!(vrrp);
        // Serving once every instance's sockets are open; a failure before that ends `vrrp`.
        tokio::select! {
            done = &mut vrrp => return done.context("vrrp"),
            Ok(()) = started => process::report_ready("vrrp")?,
        }
        vrrp.await.context("vrrp")
    })
}

/// Hands a reloaded configuration to the running VRRP daemon and waits until it is applied
/// (or refused and logged), so that READY=1 follows the change; false once the daemon has
/// stopped.
pub async fn hand_over(tx: &mpsc::Sender<keepcached_vrrp::Reload>, config: VrrpConfig) -> bool {
    let (done, applied) = tokio::sync::oneshot::channel();
    tx.send(keepcached_vrrp::Reload { config, done })
        .await
        .is_ok()
        && applied.await.is_ok()
}
