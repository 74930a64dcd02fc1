//! A stand-alone VRRP daemon over the library, for the namespace tests and
//! the failover benchmark until `keepcached vrrp` is wired:
//!
//! ```text
//! vrrpd --config FILE.toml
//! vrrpd --keepalived-conf keepalived.conf
//! ```
//!
//! SIGTERM and SIGINT stop it the clean way (a master sends priority 0).
//! A bad configuration exits with status 64.

use std::process::ExitCode;

use keepcached_vrrp::{parse_keepalived_conf, run, VrrpConfig};
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (flag, path) = match args.as_slice() {
        [flag, path] if flag == "--config" || flag == "--keepalived-conf" => (flag.as_str(), path),
        _ => {
            eprintln!("usage: vrrpd --config FILE | --keepalived-conf FILE");
            return ExitCode::from(64);
        }
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(64);
        }
    };
    let parsed = if flag == "--config" {
        VrrpConfig::from_toml(&text).map(|c| (c, Vec::new()))
    } else {
        parse_keepalived_conf(&text)
    };
    let config = match parsed {
        Ok((config, warnings)) => {
            for w in warnings {
                eprintln!("{path}: {w}");
            }
            config
        }
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(64);
        }
    };
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    match run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vrrpd: {e}");
            ExitCode::FAILURE
        }
    }
}
