//! `keepcached up`: the embedded default, the seed's tier on one host's loopback — two cache
//! servers (a main and a backup) and a replicating proxy in front of them — in one process,
//! with no configuration and no root.
//!
//! ```text
//! keepcached up                              main 11211, backup 11212, proxy 12000
//! keepcached up --port-base N                main N, backup N+1, proxy N+2
//! keepcached up --ports MAIN,BACKUP,PROXY
//! ```
//!
//! A port that is taken (a host that already runs memcached on 11211) is replaced by a free
//! one, and one line says which ports were taken and which were chosen. When stderr is a
//! terminal, a live line below the log shows the proxy's requests per second, hit ratio and
//! each backend's state, sampled once a second over the proxy's own port (the way
//! `keepcached status` reads it); SIGINT (Ctrl-C) or SIGTERM clears it and stops the tier.

use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ratatui::crossterm::{cursor, queue, terminal};

use crate::status_cmd::{self, Probe, Sample, Target};
use crate::{process, UsageError};

#[derive(Debug, Parser)]
#[command(
    name = "keepcached up",
    about = "a local tier on 127.0.0.1, no configuration: two cache servers (main, backup) and \
             a replicating proxy"
)]
struct Cli {
    /// Ports from N on: main server N, backup server N+1, proxy N+2.
    #[arg(long, value_name = "N", conflicts_with = "ports")]
    port_base: Option<u16>,
    /// The three ports, in this order.
    #[arg(long, value_name = "MAIN,BACKUP,PROXY")]
    ports: Option<String>,
}

/// The ports of the three roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ports {
    main: u16,
    backup: u16,
    proxy: u16,
}

/// 11211 as memcached's, 11212 beside it, 12000 as the seed's magent.
const DEFAULT_PORTS: Ports = Ports {
    main: 11211,
    backup: 11212,
    proxy: 12000,
};

/// Attempts at a free port: one found free can be taken before we bind it.
const FREE_PORT_ATTEMPTS: usize = 8;

impl Cli {
    fn ports(&self) -> Result<Ports, UsageError> {
        if let Some(base) = self.port_base {
            if base == 0 || base > u16::MAX - 2 {
                return Err(UsageError(format!(
                    "--port-base {base}: between 1 and {} (N, N+1 and N+2 are used)",
                    u16::MAX - 2
                )));
            }
            return Ok(Ports {
                main: base,
                backup: base + 1,
                proxy: base + 2,
            });
        }
        let Some(text) = &self.ports else {
            return Ok(DEFAULT_PORTS);
        };
        let ports: Vec<u16> = text
            .split(',')
            .map(|p| p.trim().parse::<u16>().ok().filter(|&p| p != 0))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                UsageError(format!(
                    "--ports {text:?}: three port numbers from 1 to 65535, MAIN,BACKUP,PROXY"
                ))
            })?;
        let [main, backup, proxy] = ports[..] else {
            return Err(UsageError(format!(
                "--ports {text:?}: three ports are needed, MAIN,BACKUP,PROXY"
            )));
        };
        if main == backup || main == proxy || backup == proxy {
            return Err(UsageError(format!(
                "--ports {text:?}: the three ports must differ"
            )));
        }
        Ok(Ports {
            main,
            backup,
            proxy,
        })
    }
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(cli) = crate::parse_command::<Cli>("keepcached up", args)? else {
        return Ok(());
    };
    let wanted = cli.ports()?;
    let live = std::io::stderr().is_terminal();
    init_logging(live);
    let defaults = keepcached_server::Settings::default();
    // Two servers' clients plus the proxy's.
    process::raise_nofile_limit(3 * defaults.max_connections)?;
    let mut moved = Vec::new();
    let mut servers = Vec::new();
    for (role, port) in [
        ("main cache server", wanted.main),
        ("backup cache server", wanted.backup),
    ] {
        let (settings, listeners) = bind_port(role, port, &mut moved, |port| {
            let settings = keepcached_server::Settings {
                port,
                listen: vec![Ipv4Addr::LOCALHOST.into()],
                ..defaults.clone()
            };
            match keepcached_server::Listeners::bind(&settings) {
                Ok(listeners) => Ok(Ok((settings, listeners))),
                Err(keepcached_server::ServeError::Tcp { source, .. })
                    if source.kind() == std::io::ErrorKind::AddrInUse =>
                {
                    Ok(Err(source))
                }
                Err(e) => Err(e.into()),
            }
        })?;
        servers.push((settings, listeners));
    }
    let (main, backup) = (servers[0].0.port, servers[1].0.port);
    let proxy = bind_port("proxy", wanted.proxy, &mut moved, |port| {
        let config = keepcached_proxy::ProxyArgs {
            servers: vec![format!("127.0.0.1:{main}")],
            backups: vec![format!("127.0.0.1:{backup}")],
            listen: Some("127.0.0.1".into()),
            port: Some(port),
            ..keepcached_proxy::ProxyArgs::default()
        }
        .into_config()
        .map_err(|e| UsageError(e.to_string()))?;
        match keepcached_proxy::bind(config) {
            Ok(bound) => Ok(Ok((port, bound))),
            Err(keepcached_proxy::ProxyError::Bind { error, .. })
                if error.kind() == std::io::ErrorKind::AddrInUse =>
            {
                Ok(Err(error))
            }
            Err(e) => Err(e.into()),
        }
    })?;
    let (proxy_port, proxy) = proxy;
    let ports = Ports {
        main,
        backup,
        proxy: proxy_port,
    };
    if !moved.is_empty() {
        eprintln!("keepcached: {}", moved.join("; "));
    }
    eprint!("{}", announcement(ports));
    let runtime = process::runtime()?;
    let mut ticker = None;
    let result = runtime.block_on(async {
        let shutdown = process::shutdown_signal()?;
        process::may_cut_short("the drain of the proxy's clients", None);
        if live {
            let (stop, stopped) = mpsc::channel::<()>();
            let mut on_shutdown = shutdown.clone();
            tokio::spawn(async move {
                let _ = on_shutdown.wait_for(|s| *s).await;
                let _ = stop.send(());
            });
            let target = Target::Memcache(format!("127.0.0.1:{proxy_port}"));
            ticker = Some(std::thread::spawn(move || live_line(target, stopped)));
        }
        // The servers stop after the proxy has drained its clients, as a node stops.
        let (servers_stop, servers_stopped) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for (settings, listeners) in servers {
            let server = keepcached_server::Server::new(settings);
            tasks.spawn(keepcached_server::listener::serve(
                server,
                listeners,
                servers_stopped.clone(),
            ));
        }
        let mut proxy_shutdown = shutdown.clone();
        let proxy = proxy.serve(async move {
            let _ = proxy_shutdown.wait_for(|s| *s).await;
        });
        tokio::pin!(proxy);
        // A server that ends before the proxy has failed: the tier ends with its error rather
        // than going on without it.
        tokio::select! {
            done = &mut proxy => done.context("proxy")?,
            Some(done) = tasks.join_next() => {
                done.context("cache server task")?.context("cache server")?;
                anyhow::bail!("a cache server stopped while the tier was serving");
            }
        }
        servers_stop.send_replace(true);
        while let Some(done) = tasks.join_next().await {
            done.context("cache server task")?.context("cache server")?;
        }
        Ok(())
    });
    // The ticker's stop is sent when the shutdown starts; a failure that ends the tier
    // without a signal drops the sender with the runtime, which stops the ticker too.
    drop(runtime);
    if let Some(ticker) = ticker {
        let _ = ticker.join();
    }
    result
}

/// Binds `role` on `port` with `bind`, which answers `Ok(Err(_))` when the port is in use;
/// then on free ports, noting the change in `moved`. Other errors end `up`.
fn bind_port<T>(
    role: &str,
    port: u16,
    moved: &mut Vec<String>,
    mut bind: impl FnMut(u16) -> anyhow::Result<Result<T, std::io::Error>>,
) -> anyhow::Result<T> {
    let mut error = match bind(port)? {
        Ok(bound) => return Ok(bound),
        Err(error) => error,
    };
    for _ in 0..FREE_PORT_ATTEMPTS {
        let free = free_port()?;
        match bind(free)? {
            Ok(bound) => {
                moved.push(format!(
                    "port {port} ({role}) is in use, using {free} instead"
                ));
                return Ok(bound);
            }
            Err(e) => error = e,
        }
    }
    Err(anyhow::Error::new(error).context(format!(
        "port {port} ({role}) is in use, and so were the free ports tried instead"
    )))
}

/// A port nothing on 127.0.0.1 listens on now (the OS's choice of an ephemeral port).
fn free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("looking for a free port")?;
    Ok(listener.local_addr()?.port())
}

/// What `up` serves, how to connect and how to watch it.
fn announcement(ports: Ports) -> String {
    let Ports {
        main,
        backup,
        proxy,
    } = ports;
    let status = if ports == DEFAULT_PORTS {
        "keepcached status".to_string()
    } else {
        format!("keepcached status 127.0.0.1:{proxy} 127.0.0.1:{main} 127.0.0.1:{backup}")
    };
    format!(
        "keepcached: cache servers on 127.0.0.1:{main} (main) and 127.0.0.1:{backup} (backup), \
         replicating proxy on 127.0.0.1:{proxy}\n\
         keepcached: try: telnet 127.0.0.1 {proxy}\n\
         keepcached: watch it: {status} --watch\n"
    )
}

/// Whether the live line is on the terminal now: a log line clears it first, and the next
/// tick draws it again below that line.
static LINE_SHOWN: Mutex<bool> = Mutex::new(false);

fn line_shown() -> std::sync::MutexGuard<'static, bool> {
    LINE_SHOWN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Logging as `init_logging(1, None)` sets it up (info, `RUST_LOG` overrides it), to stderr;
/// with the live line, through [`LiveStderr`], so a log line never lands in the middle of it.
fn init_logging(live: bool) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let writer = if live {
        BoxMakeWriter::new(|| LiveStderr)
    } else {
        BoxMakeWriter::new(std::io::stderr)
    };
    crate::install_logging(1, "", writer, std::io::stderr().is_terminal());
}

/// stderr for log lines, clearing the live line before the first byte of each.
#[derive(Debug)]
struct LiveStderr;

impl Write for LiveStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut shown = line_shown();
        let mut stderr = std::io::stderr().lock();
        if *shown {
            clear_line(&mut stderr)?;
            *shown = false;
        }
        stderr.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn clear_line(out: &mut impl Write) -> std::io::Result<()> {
    queue!(
        out,
        cursor::MoveToColumn(0),
        terminal::Clear(terminal::ClearType::CurrentLine)
    )
}

/// The live line's loop: samples the proxy about once a second and redraws the line, until
/// `stop` says the tier stops (or its sender is gone); then clears the line.
fn live_line(target: Target, stop: mpsc::Receiver<()>) {
    let mut probe = Probe::new(target);
    let mut last: Option<(Instant, u64)> = None;
    loop {
        let sample = status_cmd::sample_all(std::slice::from_mut(&mut probe));
        let now = Instant::now();
        let text = match sample.into_iter().next() {
            Some(Sample::Proxy(figures)) => {
                let rate = last.and_then(|(then, ops)| {
                    let seconds = now.duration_since(then).as_secs_f64();
                    let delta = figures.ops.checked_sub(ops)?;
                    (seconds > 0.0).then(|| (delta as f64 / seconds).round() as u64)
                });
                last = Some((now, figures.ops));
                summary(&figures, rate)
            }
            Some(Sample::Unreachable(error)) => format!("proxy not answering: {error}"),
            _ => "proxy not answering".into(),
        };
        draw_line(&text);
        if !matches!(
            stop.recv_timeout(Duration::from_secs(1)),
            Err(mpsc::RecvTimeoutError::Timeout)
        ) {
            break;
        }
    }
    let mut shown = line_shown();
    if *shown {
        let mut stderr = std::io::stderr().lock();
        let _ = clear_line(&mut stderr).and_then(|()| stderr.flush());
        *shown = false;
    }
}

/// `ops/s 120 · hits 97.1% · main up · backup warming 30% · Ctrl-C stops`: short enough for
/// an 80-column terminal (the tier has one server per pool, so the pool names it).
fn summary(figures: &status_cmd::ProxyFigures, rate: Option<u64>) -> String {
    let mut parts = vec![
        format!("ops/s {}", rate.map_or("-".into(), |r| r.to_string())),
        format!("hits {}", status_cmd::percent(figures.hit_ratio)),
    ];
    for b in &figures.backends {
        let warm = b.warm_pct.map_or(String::new(), |p| format!(" {p}%"));
        parts.push(format!("{} {}{warm}", b.pool, b.state));
    }
    parts.push("Ctrl-C stops".into());
    parts.join(" · ")
}

/// Replaces the live line with `text`, cut to the terminal's width so it never wraps (a
/// wrapped line could not be cleared in one go).
fn draw_line(text: &str) {
    // A terminal that reports no size (a new pseudo-terminal says 0x0) gets a common width.
    let width = terminal::size()
        .ok()
        .filter(|(w, _)| *w > 0)
        .map_or(80, |(w, _)| w as usize);
    let text: String = text.chars().take(width.saturating_sub(1)).collect();
    let mut shown = line_shown();
    let mut stderr = std::io::stderr().lock();
    let drawn = clear_line(&mut stderr)
        .and_then(|()| stderr.write_all(text.as_bytes()))
        .and_then(|()| stderr.flush());
    *shown = drawn.is_ok();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(args: &[&str]) -> Result<Ports, String> {
        let cli = Cli::try_parse_from(std::iter::once("up").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.ports().map_err(|e| e.0)
    }

    #[test]
    fn the_port_layouts() {
        assert_eq!(ports(&[]), Ok(DEFAULT_PORTS));
        assert_eq!(
            ports(&["--port-base", "21000"]),
            Ok(Ports {
                main: 21000,
                backup: 21001,
                proxy: 21002
            })
        );
        assert_eq!(
            ports(&["--ports", "1,2,3"]),
            Ok(Ports {
                main: 1,
                backup: 2,
                proxy: 3
            })
        );
        assert!(ports(&["--port-base", "65534"])
            .unwrap_err()
            .contains("between 1 and 65533"));
        assert!(ports(&["--port-base", "0"]).is_err());
        assert!(ports(&["--ports", "1,2"])
            .unwrap_err()
            .contains("three ports"));
        assert!(ports(&["--ports", "1,1,3"]).unwrap_err().contains("differ"));
        assert!(ports(&["--ports", "1,x,3"])
            .unwrap_err()
            .contains("three port numbers"));
        assert!(ports(&["--port-base", "1", "--ports", "1,2,3"])
            .unwrap_err()
            .contains("cannot be used with"));
    }

    #[test]
    fn the_summary_names_each_backend_state() {
        let figures = status_cmd::ProxyFigures {
            hit_ratio: Some(0.5),
            backends: vec![status_cmd::BackendFigures {
                pool: "main".into(),
                addr: "127.0.0.1:11211".into(),
                state: "warming".into(),
                warm_pct: Some(30),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            summary(&figures, Some(12)),
            "ops/s 12 · hits 50.0% · main warming 30% · Ctrl-C stops"
        );
    }
}
