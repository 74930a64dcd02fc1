//! keepcached: memcached, magent and keepalived's VRRP in one binary.
//!
//! Each subcommand is one role with the command line of the program it replaces; see README.md.

mod convert_cmd;
mod ctl_cmd;
mod demo_cmd;
mod metrics;
mod node_cmd;
mod node_config;
mod process;
mod proxy_cmd;
mod server_cmd;
mod status_cmd;
mod up_cmd;
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

/// Parses a subcommand's command line (`name` as clap shows it): `None` when it asked for
/// `--help` or `--version`, whose text clap wrote to stdout (exit 0); a bad line is a
/// [`UsageError`] (exit 64).
pub fn parse_command<C: clap::Parser>(name: &str, args: &[String]) -> anyhow::Result<Option<C>> {
    match C::try_parse_from(std::iter::once(name.to_string()).chain(args.iter().cloned())) {
        Ok(cli) => Ok(Some(cli)),
        Err(e) if !e.use_stderr() => {
            print!("{e}");
            Ok(None)
        }
        Err(e) => Err(UsageError(e.to_string()).into()),
    }
}

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
  up [--port-base N | --ports MAIN,BACKUP,PROXY]
                             a local tier, no config: cache servers on 127.0.0.1:11211 and
                             :11212, replicating proxy on 127.0.0.1:12000 (taken ports are
                             replaced by free ones, and it says so)
  status [--json|--watch] [ADDR...]
                             the tier at a glance: servers, proxies and their backends
                             (HOST:PORT), VRRP nodes (http://HOST:PORT/metrics)
  demo                       (root) the two-host tier in network namespaces, its failover
                             runbook played as a transcript (exit 77 when not root)
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
        "demo" => return demo_cmd::run(rest),
        "up" => up_cmd::run(rest),
        "status" => match status_cmd::run(rest) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(status_cmd::UNREACHABLE_EXIT),
            Err(e) => Err(e),
        },
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
    install_logging(verbose, always, writer, ansi);
    Ok(())
}

/// [`init_logging_with`]'s levels, writing with `writer` (`ansi`: with colours).
pub fn install_logging(
    verbose: u8,
    always: &str,
    writer: tracing_subscriber::fmt::writer::BoxMakeWriter,
    ansi: bool,
) {
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
    let _ = tracing_subscriber::fmt()
        .with_ansi(ansi)
        .with_env_filter(filter)
        .with_writer(writer)
        .try_init();
}
