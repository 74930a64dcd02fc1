//! `keepcached vrrp`: the VIP failover role, from a TOML file or an existing keepalived.conf.
//!
//! A bad configuration is reported (file, line or key, why) and exits with status 64 before
//! any socket is opened. SIGTERM and SIGINT stop the daemon the clean way: a master sends
//! priority 0 so the backup takes over at once, then removes the VIP.

use anyhow::Context;
use clap::Parser;
use keepcached_vrrp::{parse_keepalived_conf, VrrpConfig};

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
    /// Verbose logging (repeat for more).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let cli = match Cli::try_parse_from(
        std::iter::once("keepcached vrrp".to_string()).chain(args.iter().cloned()),
    ) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            print!("{e}");
            return Ok(());
        }
        Err(e) => return Err(UsageError(e.to_string()).into()),
    };
    let path = cli
        .config
        .as_ref()
        .or(cli.keepalived_conf.as_ref())
        .expect("clap requires one of the two");
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    let parsed = if cli.config.is_some() {
        VrrpConfig::from_toml(&text).map(|config| (config, Vec::new()))
    } else {
        parse_keepalived_conf(&text)
    };
    let (config, warnings) = parsed.map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    for warning in warnings {
        eprintln!("keepcached: {}: {warning}", path.display());
    }
    crate::init_logging(cli.verbose.max(1));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let mut shutdown = process::shutdown_signal();
        keepcached_vrrp::run(config, async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
        .context("vrrp")
    })
}
