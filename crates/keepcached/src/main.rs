//! keepcached: memcached, magent and keepalived's VRRP in one binary.
//!
//! Each subcommand is one role with the command line of the program it replaces; see README.md.

mod process;
mod proxy_cmd;
mod server_cmd;

use std::process::ExitCode;

/// A bad command line or configuration: printed and answered with exit status 64 (EX_USAGE),
/// before anything is bound or started.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

const EX_USAGE: u8 = 64;

const USAGE: &str = "\
usage: keepcached <command> [options]

commands:
  server [memcached flags]   the cache server, a drop-in for memcached (-h for its flags)
  proxy [magent flags]       the replicating proxy, a drop-in for magent (--help for its flags)
  up                         a ready-to-use local cache on 127.0.0.1:11211, no flags needed
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(EX_USAGE);
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
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keepcached: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Logs to stderr; `-v` raises the level (warnings by default), `RUST_LOG` overrides it.
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The embedded default: a cache server on loopback with memcached's defaults, runnable as any
/// user (including root, since it binds only to 127.0.0.1).
fn up(rest: &[String]) -> anyhow::Result<()> {
    if !rest.is_empty() {
        return Err(UsageError(format!("up takes no arguments\n{USAGE}")).into());
    }
    let args: Vec<String> = ["-l", "127.0.0.1", "-p", "11211"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let server_cmd::Parsed::Run(mut plan) = server_cmd::parse(&args)? else {
        unreachable!("the embedded default runs a server");
    };
    if nix::unistd::geteuid().is_root() {
        plan.user = Some("root".into());
    }
    eprintln!("keepcached: cache server on 127.0.0.1:11211 (try: telnet 127.0.0.1 11211)");
    server_cmd::run(*plan)
}
