//! keepcached: memcached, magent and keepalived's VRRP in one binary.
//!
//! Each subcommand is one role with the command line of the program it replaces; see README.md.

mod convert_cmd;
mod ctl_cmd;
mod metrics;
mod node_cmd;
mod node_config;
mod process;
mod proxy_cmd;
mod server_cmd;
mod vrrp_cmd;

use std::path::Path;
use std::process::ExitCode;

/// A bad command line or configuration: printed and answered with exit status 64 (EX_USAGE,
/// see [`process::exit_status`]), before anything is bound or started.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

const USAGE: &str = "\
usage: keepcached <command> [options]

commands:
  server [memcached flags]   the cache server, a drop-in for memcached (-h for its flags)
  proxy [magent flags]       the replicating proxy, a drop-in for magent (--help for its flags)
  vrrp --config FILE         VIP failover (VRRP), a drop-in for keepalived's VRRP side;
  vrrp --keepalived-conf FILE    reads an existing keepalived.conf
  node --config FILE         server, proxy and VRRP of one host from one TOML file
                             (--check, --print-config; docs/node.md)
  convert [--memcached FLAGS] [--magent FLAGS] [--keepalived-conf FILE]
                             print the node file equivalent to a classic host's setup
  ctl [--proxy ADDR] CMD     operator commands to a running proxy: backends (states),
                             drain|hold|warm|up SERVER
  up                         a local tier, no config: cache servers on 127.0.0.1:11211 and
                             :11212, replicating proxy on 127.0.0.1:12000
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(process::Sysexit::Usage as u8);
    };
    let result = match command.as_str() {
        "server" => match server_cmd::parse(rest) {
            Ok(server_cmd::Parsed::Print(text)) => {
                print!("{text}");
                Ok(())
            }
            Ok(server_cmd::Parsed::Run(plan)) => server_cmd::run(*plan),
            Err(e) => Err(e.into()),
        },
        "proxy" => proxy_cmd::run(rest),
        "vrrp" => vrrp_cmd::run(rest),
        "ctl" => ctl_cmd::run(rest),
        "node" => node_cmd::run(rest),
        "convert" => convert_cmd::run(rest),
        "up" => up(rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        "-V" | "--version" => {
            println!("keepcached {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        other => Err(UsageError(format!("unknown command {other:?}\n{USAGE}")).into()),
    };
    process::exit(result)
}

/// Logs to stderr, or to `log_file`; `-v` raises the level (warnings by default), `RUST_LOG`
/// overrides it.
pub fn init_logging(verbose: u8, log_file: Option<&Path>) -> anyhow::Result<()> {
    init_logging_with(verbose, "", log_file)
}

/// As [`init_logging`], with `always` (EnvFilter directives, comma separated) logged at any
/// level: for rare lines an operator wants without `-v`. The process's own lifecycle (serving,
/// signals, stopping, in [`process`]) is always logged at info.
pub fn init_logging_with(verbose: u8, always: &str, log_file: Option<&Path>) -> anyhow::Result<()> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let mut directives = level.to_string();
    if verbose < 1 {
        directives.push_str(",keepcached::process=info");
    }
    if !always.is_empty() && verbose < 2 {
        directives = format!("{directives},{always}");
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directives));
    // Colours only for a person at a terminal, never in a log file or a service manager's
    // journal.
    let (writer, ansi) = match log_file {
        Some(path) => {
            let file = std::sync::Arc::new(process::open_log_file(path)?);
            (BoxMakeWriter::new(file), false)
        }
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ),
    };
    let _ = tracing_subscriber::fmt()
        .with_ansi(ansi)
        .with_env_filter(filter)
        .with_writer(writer)
        .try_init();
    Ok(())
}

/// The embedded default: the seed's tier on one host's loopback — two cache servers (a main and
/// a backup) and a replicating proxy in front of them — with no configuration and no root.
fn up(rest: &[String]) -> anyhow::Result<()> {
    use anyhow::Context;
    if !rest.is_empty() {
        return Err(UsageError(format!("up takes no arguments\n{USAGE}")).into());
    }
    const MAIN: u16 = 11211;
    const BACKUP: u16 = 11212;
    const PROXY: u16 = 12000;
    init_logging(1, None)?;
    let defaults = keepcached_server::Settings::default();
    // Two servers' clients plus the proxy's.
    process::raise_nofile_limit(3 * defaults.max_connections)?;
    let mut servers = Vec::new();
    for port in [MAIN, BACKUP] {
        let settings = keepcached_server::Settings {
            port,
            listen: vec![std::net::Ipv4Addr::LOCALHOST.into()],
            ..defaults.clone()
        };
        let listeners = keepcached_server::Listeners::bind(&settings)?;
        servers.push((settings, listeners));
    }
    let proxy = keepcached_proxy::ProxyArgs {
        servers: vec![format!("127.0.0.1:{MAIN}")],
        backups: vec![format!("127.0.0.1:{BACKUP}")],
        listen: Some("127.0.0.1".into()),
        port: Some(PROXY),
        ..keepcached_proxy::ProxyArgs::default()
    }
    .into_config()
    .map_err(|e| UsageError(e.to_string()))?;
    let proxy = keepcached_proxy::bind(proxy)?;
    eprintln!(
        "keepcached: cache servers on 127.0.0.1:{MAIN} (main) and 127.0.0.1:{BACKUP} (backup), \
         replicating proxy on 127.0.0.1:{PROXY}\nkeepcached: try: telnet 127.0.0.1 {PROXY}"
    );
    let runtime = process::runtime()?;
    runtime.block_on(async move {
        let shutdown = process::shutdown_signal()?;
        let mut tasks = tokio::task::JoinSet::new();
        for (settings, listeners) in servers {
            let server = keepcached_server::Server::new(settings);
            tasks.spawn(keepcached_server::listener::serve(
                server,
                listeners,
                shutdown.clone(),
            ));
        }
        let mut proxy_shutdown = shutdown.clone();
        let proxy = proxy.serve(async move {
            let _ = proxy_shutdown.wait_for(|s| *s).await;
        });
        proxy.await.context("proxy")?;
        while let Some(done) = tasks.join_next().await {
            done.context("cache server task")?.context("cache server")?;
        }
        Ok(())
    })
}
