//! `keepcached node --config FILE`: the roles of one host — cache server, proxy, VRRP — in one
//! process, from one TOML file (node_config.rs), with one shutdown path.
//!
//! Startup: the file is read and validated (a bad one exits 64 naming file, key and why,
//! before anything binds; `--check` stops there), then the server's and the proxy's
//! listeners are bound (the proxy with IP_FREEBIND on the VIP, which this host may not hold),
//! the server's `save_file` loaded, `-d` daemonizes, `-u` switches user, and the roles start;
//! the node reports that it serves (and READY=1 to systemd) once VRRP's sockets are open too.
//!
//! VRRP tracks the proxy and the server in-process, as weight-0 items (FAULT, so the VIP
//! goes to the other node, while either is down): the proxy is down while none of its cache
//! servers answers (it could serve no client) or once it stopped, the server once it stopped.
//! No script, no connection, nothing that depends on holding the VIP.
//!
//! Shutdown (SIGTERM, SIGINT, the server's `shutdown` command with `enable_shutdown`, or a
//! role that fails): VRRP leaves first (a master sends priority 0 and removes the VIP, so the
//! other node takes over at once), then the proxy drains its clients within
//! `drain_timeout_ms`, then the server stops and saves to `save_file`; a second SIGTERM or
//! SIGINT cuts the drain, the stop or the save short (`process::may_cut_short`), not VRRP's
//! leaving. SIGHUP reads the file
//! again and hands the proxy and VRRP their new sections, as their own SIGHUP does; `[server]`
//! changes need a restart, as memcached's do. SIGUSR1 logs VRRP's status; SIGUSR2 saves the
//! cache (as the server's does).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use keepcached_proxy::Reach;
use keepcached_server::{Listeners, Server};
use keepcached_vrrp::track::{Health, Local};
use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::node_config::{self, NodeConfig};
use crate::{process, UsageError};

#[derive(Debug, Parser)]
#[command(
    name = "keepcached node",
    about = "the cache server, the proxy and VRRP of one host, from one TOML file"
)]
struct Cli {
    /// The node's TOML configuration ([server], [proxy], [vrrp]; docs/node.md).
    #[arg(long, short = 'f', value_name = "FILE")]
    config: PathBuf,
    /// Check the configuration and exit (0 if it is good, 64 if not), as keepalived -t.
    #[arg(long, short = 't')]
    check: bool,
    /// Print the effective configuration, defaults filled in, as TOML, and exit.
    #[arg(long)]
    print_config: bool,
    /// Run in the background; the command exits 0 once the node serves.
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Run as this user (only without [vrrp], which needs CAP_NET_ADMIN and CAP_NET_RAW).
    #[arg(short = 'u', long = "user", value_name = "USER")]
    user: Option<String>,
    /// Verbose logging (repeat for more).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(flatten)]
    process: process::ProcessArgs,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(cli) = crate::parse_command::<Cli>("keepcached node", args)? else {
        return Ok(());
    };
    let node = node_config::load(&cli.config).map_err(|e| UsageError(e.to_string()))?;
    if cli.print_config {
        print!("{}", node.config.to_toml());
        return Ok(());
    }
    if cli.check {
        let roles = roles(&node.config);
        eprintln!(
            "keepcached: {}: configuration OK ({roles})",
            cli.config.display()
        );
        return Ok(());
    }
    if cli.user.is_some() && node.config.vrrp.is_some() {
        return Err(UsageError(
            "-u: a node with [vrrp] adds and removes the VIP for as long as it runs, which \
             needs CAP_NET_ADMIN and CAP_NET_RAW: run it as root, or as a user given those \
             capabilities (systemd's AmbientCapabilities=, see examples/systemd)"
                .into(),
        )
        .into());
    }
    let identity = match &cli.user {
        Some(user) if nix::unistd::geteuid().is_root() => {
            Some(process::Identity::resolve(Some(user), None)?)
        }
        _ => None,
    };
    let pidfile_path = cli.process.pidfile.map(process::absolute).transpose()?;
    crate::init_logging_with(
        cli.verbose.max(1),
        "keepcached_server::persist=info",
        cli.process.log_file.as_deref(),
    )?;
    // The server's save signals and the reload signal must not end the node (their default
    // action) before the runtime handles them; see `process::ignore_signals_until_handled`.
    process::ignore_signals_until_handled(&[Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGUSR2])?;
    let node_config::Node { config, server } = node;
    let mut connections = 0;
    if let Some(plan) = &server {
        connections += plan.settings.max_connections;
    }
    if let Some(proxy) = &config.proxy {
        let servers: usize = proxy.pools.iter().map(|p| p.servers.len()).sum();
        connections += proxy.max_connections + servers * proxy.backend.connections;
    }
    process::raise_nofile_limit(connections)?;
    let lock_memory = server.as_ref().is_some_and(|plan| plan.lock_memory);
    let server = match server {
        Some(plan) => {
            let listeners = Listeners::bind(&plan.settings)?;
            let mut settings = plan.settings;
            // -vv shows the clients' requests (memcached's -vv), in the node's log.
            settings.verbose = u32::from(cli.verbose);
            settings.verbose_to_log = true;
            let server = Server::new(settings);
            if let Some(file) = &server.memory_file {
                file.load(&server);
            }
            Some((server, listeners))
        }
        None => None,
    };
    let proxy = config
        .proxy
        .clone()
        .map(keepcached_proxy::bind)
        .transpose()?;
    let metrics = crate::metrics::bind(config.metrics.as_deref())?;
    if cli.daemon {
        process::daemonize(cli.verbose > 0)?;
    }
    // After the fork, which does not pass memory locks on.
    if lock_memory {
        process::lock_memory();
    }
    if let Some(identity) = identity {
        identity.assume()?;
    }
    let saving = server.as_ref().map(|(server, _)| server.clone());
    let path = cli.config;
    let runtime = process::runtime()?;
    // The pid file is kept until the save is done.
    let mut pidfile = None;
    runtime.block_on(async {
        let served = async {
            let roles = Roles::start(config, server, proxy, metrics, &path)?;
            pidfile = pidfile_path.map(process::PidFile::create).transpose()?;
            roles.serve().await
        }
        .await;
        // Saved whatever ended the node: a failure of the proxy or of VRRP leaves the cache
        // whole.
        let saved = match saving {
            Some(server) => crate::server_cmd::save_at_exit(server).await,
            None => Ok(()),
        };
        drop(pidfile);
        served.and(saved)
    })
}

/// "server, proxy, vrrp": the roles a file configures, for messages.
fn roles(config: &NodeConfig) -> String {
    let mut roles = Vec::new();
    if config.server.is_some() {
        roles.push("server");
    }
    if config.proxy.is_some() {
        roles.push("proxy");
    }
    if config.vrrp.is_some() {
        roles.push("vrrp");
    }
    roles.join(", ")
}

/// One running role: its stop signal and its task.
struct Role {
    name: &'static str,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// The running roles, in the order they stop: VRRP, proxy, server.
struct Roles {
    vrrp: Option<Role>,
    proxy: Option<Role>,
    server: Option<Role>,
    shutdown: watch::Receiver<bool>,
    /// Each role's task says here that it ended, whatever the reason.
    ended: mpsc::UnboundedReceiver<&'static str>,
    vrrp_started: Option<oneshot::Receiver<()>>,
}

/// Runs `task` as role `name`: its health (for VRRP) goes down when it ends, and `ended` hears
/// of it.
fn spawn_role(
    name: &'static str,
    stop: watch::Sender<bool>,
    health: Option<watch::Sender<Health>>,
    ended: &mpsc::UnboundedSender<&'static str>,
    task: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
) -> Role {
    let ended = ended.clone();
    // The role runs in a task of its own, so that a panic in it ends it as a failure, heard
    // by the node like any other end.
    let inner = tokio::spawn(task);
    let task = tokio::spawn(async move {
        let result = match inner.await {
            Ok(result) => result,
            Err(e) => Err(anyhow::anyhow!("the {name} failed: {e}")),
        };
        if let Some(health) = health {
            let why = match &result {
                Ok(()) => "it stopped".to_string(),
                Err(e) => format!("it failed: {}", process::error_text(e)),
            };
            health.send_replace(Health { up: false, why });
        }
        let _ = ended.send(name);
        result
    });
    Role { name, stop, task }
}

/// The proxy's health for VRRP: down while none of its servers answers (it could serve no
/// client), and once it stopped.
async fn following_proxy(mut reach: watch::Receiver<Option<Reach>>, health: watch::Sender<Health>) {
    loop {
        // Not known before the proxy has met its servers: counted as up, as keepalived counts
        // a script that has not run yet.
        let now = match *reach.borrow_and_update() {
            Some(Reach { up: 0, servers }) => Health {
                up: false,
                why: format!("none of its {servers} cache servers answers"),
            },
            _ => Health {
                up: true,
                why: String::new(),
            },
        };
        health.send_if_modified(|h| std::mem::replace(h, now.clone()) != now);
        if reach.changed().await.is_err() {
            health.send_replace(Health {
                up: false,
                why: "it stopped".into(),
            });
            return;
        }
    }
}

fn healthy() -> (watch::Sender<Health>, watch::Receiver<Health>) {
    watch::channel(Health {
        up: true,
        why: String::new(),
    })
}

impl Roles {
    /// Starts every configured role on the runtime, with the signal handlers the node needs.
    fn start(
        config: NodeConfig,
        server: Option<(Arc<Server>, Listeners)>,
        proxy: Option<keepcached_proxy::Bound>,
        metrics: Option<keepcached_metrics::Endpoint>,
        path: &std::path::Path,
    ) -> anyhow::Result<Roles> {
        let shutdown = process::shutdown_signal()?;
        // Every role's collector, for one endpoint; made only with `metrics` (the server's
        // turns on its per-request latency clock).
        let mut collectors: Vec<Box<dyn keepcached_metrics::Collector>> = Vec::new();
        let vrrp_metrics = keepcached_vrrp::metrics::VrrpMetrics::default();
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let mut local = Vec::new();
        let server = match server {
            Some((server, listeners)) => {
                crate::server_cmd::save_on_usr2(&server, "[server] has no save_file")?;
                if metrics.is_some() {
                    collectors.push(Box::new(keepcached_server::metrics::ServerMetrics::new(
                        server.clone(),
                    )));
                }
                let (health, rx) = healthy();
                local.push(Local {
                    name: "cache server".into(),
                    weight: 0,
                    health: rx,
                });
                let (stop, stop_rx) = watch::channel(false);
                let requested = server.shutdown_requested.subscribe();
                let task = async move {
                    keepcached_server::listener::serve(server, listeners, stop_rx)
                        .await
                        .context("cache server")?;
                    if *requested.borrow() {
                        tracing::info!("the cache server's shutdown command: stopping the node");
                    }
                    Ok(())
                };
                Some(spawn_role(
                    "cache server",
                    stop,
                    Some(health),
                    &ended_tx,
                    task,
                ))
            }
            None => {
                // Handled rather than left ignored: an ignored signal would stay ignored in the
                // scripts VRRP runs.
                let mut usr2 =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
                        .context("handling SIGUSR2")?;
                tokio::spawn(async move {
                    while usr2.recv().await.is_some() {
                        tracing::warn!("SIGUSR2 asks for a save, but the node has no [server]");
                    }
                });
                None
            }
        };
        let (proxy_reload, proxy_reloads) = mpsc::channel(1);
        let proxy = match proxy {
            Some(bound) => {
                collectors.push(Box::new(bound.metrics()));
                let (health, rx) = healthy();
                local.push(Local {
                    name: "proxy".into(),
                    weight: 0,
                    health: rx,
                });
                tokio::spawn(following_proxy(bound.reach(), health));
                let (stop, mut stop_rx) = watch::channel(false);
                let task = async move {
                    bound
                        .serve_reloading(
                            async move {
                                let _ = stop_rx.wait_for(|s| *s).await;
                            },
                            proxy_reloads,
                        )
                        .await
                        .context("proxy")
                };
                Some(spawn_role("proxy", stop, None, &ended_tx, task))
            }
            None => None,
        };
        let (vrrp_reload, vrrp_reloads) = mpsc::channel(1);
        let report = Arc::new(Notify::new());
        let (vrrp, vrrp_started) = match config.vrrp.clone() {
            Some(vrrp) => {
                let (started_tx, started) = oneshot::channel();
                let (stop, mut stop_rx) = watch::channel(false);
                let task = keepcached_vrrp::run_with(
                    vrrp,
                    async move {
                        let _ = stop_rx.wait_for(|s| *s).await;
                    },
                    Arc::clone(&report),
                    vrrp_reloads,
                    keepcached_vrrp::Embedding {
                        local,
                        started: Some(started_tx),
                        slots: vrrp_metrics.0.clone(),
                        shares_threads: true,
                    },
                );
                let task = async move { task.await.context("vrrp") };
                (
                    Some(spawn_role("vrrp", stop, None, &ended_tx, task)),
                    Some(started),
                )
            }
            None => (None, None),
        };
        match vrrp {
            Some(_) => collectors.push(Box::new(vrrp_metrics)),
            // Nothing in this node's shutdown must finish (see `serve`).
            None => process::may_cut_short("the node's shutdown", None),
        }
        if let Some(endpoint) = metrics {
            crate::metrics::spawn(endpoint, collectors, shutdown.clone());
        }
        on_status_signal(vrrp.is_some().then_some(report))?;
        reload_on_hangup(
            path.to_path_buf(),
            config,
            proxy.is_some().then_some(proxy_reload),
            vrrp.is_some().then_some(vrrp_reload),
        )?;
        Ok(Roles {
            vrrp,
            proxy,
            server,
            shutdown,
            ended,
            vrrp_started,
        })
    }

    /// Reports the node ready once every role runs, waits for the end (a signal, or a role
    /// that ended), then stops the roles in order.
    async fn serve(mut self) -> anyhow::Result<()> {
        let mut first_ended = None;
        if let Some(started) = self.vrrp_started.take() {
            tokio::select! {
                Ok(()) = started => {}
                name = self.ended.recv() => first_ended = name,
            }
        }
        if first_ended.is_none() {
            process::report_ready("node")?;
            tokio::select! {
                _ = self.shutdown.wait_for(|s| *s) => {}
                name = self.ended.recv() => first_ended = name,
            }
        }
        if let Some(name) = first_ended {
            tracing::warn!("the {name} stopped: stopping the node");
            process::service_manager::stopping();
        }
        let mut failure = None;
        for role in [self.vrrp, self.proxy, self.server].into_iter().flatten() {
            tracing::info!("stopping the {}", role.name);
            // A second SIGTERM or SIGINT cuts the proxy's drain and the server's stop short,
            // not VRRP's handover of the VIP (process::STEP's default until here).
            match role.name {
                "proxy" => process::may_cut_short("the drain of the proxy's clients", None),
                "cache server" => process::may_cut_short("the cache server's stop", None),
                _ => {}
            }
            role.stop.send_replace(true);
            let result = match role.task.await {
                Ok(result) => result,
                Err(e) => Err(anyhow::anyhow!("the {}: {e}", role.name)),
            };
            if let Err(e) = result {
                tracing::error!("{}", process::error_text(&e));
                failure.get_or_insert(e);
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

/// SIGUSR1: VRRP's status of every instance, as `keepcached vrrp` logs it.
fn on_status_signal(report: Option<Arc<Notify>>) -> anyhow::Result<()> {
    let mut usr1 = signal(SignalKind::user_defined1()).context("handling SIGUSR1")?;
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            match &report {
                Some(report) => report.notify_one(),
                None => tracing::info!("SIGUSR1: no [vrrp] status to report"),
            }
        }
    });
    Ok(())
}

/// SIGHUP: the file read and validated again; the proxy and VRRP take their sections as their
/// own SIGHUP has them do; `[server]` and which roles run need a restart (logged). A file that
/// does not load is logged and the running configuration kept.
fn reload_on_hangup(
    path: PathBuf,
    running: NodeConfig,
    proxy: Option<
        mpsc::Sender<Result<keepcached_proxy::ProxyConfig, keepcached_proxy::ConfigError>>,
    >,
    vrrp: Option<mpsc::Sender<keepcached_vrrp::Reload>>,
) -> anyhow::Result<()> {
    let mut hangups = signal(SignalKind::hangup()).context("handling SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!(file = %path.display(), "SIGHUP: reading the configuration again");
            process::service_manager::reloading();
            match node_config::load(&path) {
                Err(e) => tracing::error!(
                    "SIGHUP: configuration not reloaded, the running one is kept: {e}"
                ),
                Ok(node) => {
                    let new = node.config;
                    if new.server != running.server {
                        tracing::warn!(
                            "SIGHUP: [server] changed; the cache server's settings change at a \
                             restart only, the running ones are kept"
                        );
                    }
                    if roles(&new) != roles(&running) {
                        tracing::warn!(
                            "SIGHUP: the roles configured changed ({} now, {} running); \
                             starting or stopping a role needs a restart",
                            roles(&new),
                            roles(&running)
                        );
                    }
                    if let (Some(tx), Some(config)) = (&proxy, &new.proxy) {
                        crate::proxy_cmd::hand_over(tx, Ok(config.clone())).await;
                    }
                    if let (Some(tx), Some(config)) = (&vrrp, &new.vrrp) {
                        crate::vrrp_cmd::hand_over(tx, config.clone()).await;
                    }
                }
            }
            process::service_manager::reloaded();
        }
    });
    Ok(())
}
