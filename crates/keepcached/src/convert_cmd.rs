//! `keepcached convert`: a host's memcached command line, magent command line and
//! keepalived.conf (any of them) turned into one `keepcached node` file, printed on stdout,
//! so that a host of the classic tier migrates in one step.
//!
//! Each input goes through the parser of the role that replaces it (`keepcached server`'s
//! memcached flags, `keepcached proxy`'s magent flags, `keepcached vrrp --keepalived-conf`),
//! so the output means what the old programs did, and then through the node's own validation.
//! Only keys that differ from their defaults are written. What the file cannot say (process
//! options such as `-d` and `-u`, options without a TOML key) and what changes meaning in a
//! node (the keepalived scripts that started, killed or checked magent, which VRRP's
//! in-process tracking of the proxy replaces) is said in comments.

use std::path::{Path, PathBuf};

use clap::Parser;
use keepcached_proxy::ProxyArgs;
use keepcached_vrrp::config::split_command;
use keepcached_vrrp::VrrpConfig;

use crate::node_config::{self, NodeConfig, ServerSection, Size};
use crate::{server_cmd, UsageError};

#[derive(Debug, Parser)]
#[command(
    name = "keepcached convert",
    about = "print the `keepcached node` TOML equivalent to a host's memcached, magent and \
             keepalived configuration"
)]
struct Cli {
    /// The host's keepalived.conf (its vrrp_script and vrrp_instance blocks).
    #[arg(long, value_name = "FILE")]
    keepalived_conf: Option<PathBuf>,
    /// magent's command line, as one argument ('-u root -n 51200 -l VIP -p 12000 -s A -b B').
    #[arg(long, value_name = "FLAGS", allow_hyphen_values = true)]
    magent: Option<String>,
    /// memcached's command line, as one argument ('-d -m 32m -p 11211 -u root').
    #[arg(long, value_name = "FLAGS", allow_hyphen_values = true)]
    memcached: Option<String>,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(cli) = crate::parse_command::<Cli>("keepcached convert", args)? else {
        return Ok(());
    };
    print!("{}", convert(&cli).map_err(UsageError)?);
    Ok(())
}

/// The node file for `cli`'s inputs, comments first.
fn convert(cli: &Cli) -> Result<String, String> {
    if cli.keepalived_conf.is_none() && cli.magent.is_none() && cli.memcached.is_none() {
        return Err(
            "nothing to convert: give --memcached FLAGS, --magent FLAGS and/or \
             --keepalived-conf FILE"
                .into(),
        );
    }
    let mut notes =
        vec!["keepcached node configuration, written by `keepcached convert` from:".to_string()];
    let mut config = NodeConfig {
        metrics: None,
        server: None,
        proxy: None,
        vrrp: None,
    };
    if let Some(flags) = &cli.memcached {
        notes.push(format!("  memcached {flags}"));
    }
    if let Some(flags) = &cli.magent {
        notes.push(format!("  magent {flags}"));
    }
    if let Some(path) = &cli.keepalived_conf {
        notes.push(format!("  {}", path.display()));
    }
    notes.push("Check it with `keepcached node --check --config FILE`; docs/node.md.".into());
    if let Some(flags) = &cli.memcached {
        config.server = Some(server_section(flags, &mut notes)?);
    }
    if let Some(flags) = &cli.magent {
        config.proxy = Some(proxy_section(flags, &mut notes)?);
    }
    if let Some(path) = &cli.keepalived_conf {
        config.vrrp = Some(vrrp_section(path, cli.magent.is_some(), &mut notes)?);
    }
    if let (Some(proxy), Some(_)) = (&mut config.proxy, &config.vrrp) {
        proxy.freebind = true;
    }
    let text = compact(&config.to_toml(), &config);
    // What is printed must load as it is, and mean what was converted: the node's own
    // validation, on the printed text.
    let loaded = node_config::parse(&text, Path::new("converted configuration"))
        .map_err(|e| format!("the converted configuration does not validate: {e}"))?;
    if loaded.config != config {
        return Err(format!(
            "the converted configuration reads back differently:\n{text}"
        ));
    }
    let mut out: String = notes
        .iter()
        .map(|n| {
            if n.is_empty() {
                "#\n".to_string()
            } else {
                format!("# {n}\n")
            }
        })
        .collect();
    out.push('\n');
    out.push_str(text.trim_end());
    out.push('\n');
    Ok(out)
}

/// memcached's flags, as `keepcached server` reads them, as a `[server]` section.
fn server_section(flags: &str, notes: &mut Vec<String>) -> Result<ServerSection, String> {
    let args = split_command(flags);
    let plan = match server_cmd::parse(&args) {
        Ok(server_cmd::Parsed::Run(plan)) => *plan,
        Ok(server_cmd::Parsed::Print(_)) => {
            return Err(format!(
                "--memcached {flags:?}: prints, does not run a server"
            ))
        }
        Err(e) => return Err(format!("--memcached {flags:?}: {}", e.0.trim())),
    };
    let s = plan.settings;
    let defaults = keepcached_server::Settings::default();
    notes.push(String::new());
    if plan.daemon {
        notes.push(
            "memcached -d: run `keepcached node -d`, or under systemd \
             (examples/systemd/keepcached-node.service)."
                .into(),
        );
    }
    if let Some(user) = &plan.user {
        notes.push(format!(
            "memcached -u {user}: a process option, `keepcached node -u {user}` (only without \
             [vrrp]; with it, root or systemd's AmbientCapabilities)."
        ));
    }
    if plan.pidfile.is_some() || plan.log_file.is_some() {
        notes.push("memcached -P / --log-file: `keepcached node -P FILE --log-file FILE`.".into());
    }
    if plan.enable_coredumps {
        notes.push("memcached -r: not carried over (set LimitCORE= in the unit).".into());
    }
    if s.sasl_users.is_some() {
        notes.push("memcached -S: not carried over; [server] has no SASL key.".into());
    }
    if s.detail_enabled {
        notes.push("memcached -D: not carried over; [server] has no key for it.".into());
    }
    let mut extended = Vec::new();
    if let Some(t) = s.idle_timeout {
        extended.push(format!("idle_timeout={}", t.as_secs()));
    }
    if let Some(bytes) = s.udp_reply_limit {
        extended.push(format!("udp_reply_limit={bytes}"));
    }
    if s.read_buf_mem_limit != defaults.read_buf_mem_limit {
        extended.push(format!(
            "read_buf_mem_limit={}",
            s.read_buf_mem_limit / (1024 * 1024)
        ));
    }
    if !s.lru_crawler {
        extended.push("no_lru_crawler".into());
    }
    Ok(ServerSection {
        listen: s.listen.iter().map(ToString::to_string).collect(),
        port: s.port,
        udp_port: s.udp_port,
        unix_socket: s.unix_socket.clone(),
        unix_mask: format!("{:04o}", s.unix_mask),
        memory_limit: megabytes(s.max_bytes),
        max_item_size: size(s.item_size_max as u64),
        threads: s.threads,
        max_connections: s.max_connections,
        max_reqs_per_event: s.reqs_per_event,
        listen_backlog: s.backlog,
        protocol: match s.protocol {
            keepcached_server::settings::Protocol::Ascii => "ascii",
            keepcached_server::settings::Protocol::Binary => "binary",
            keepcached_server::settings::Protocol::Auto => "auto",
        }
        .into(),
        save_file: s.memory_file.clone(),
        auth_file: s.ascii_auth.as_ref().map(|a| a.path.clone()),
        disable_evictions: !s.evictions,
        disable_cas: !s.cas,
        disable_flush_all: !s.flush_enabled,
        enable_shutdown: s.shutdown_command,
        lock_memory: plan.lock_memory,
        extended,
    })
}

fn megabytes(bytes: u64) -> Size {
    const MB: u64 = 1024 * 1024;
    if bytes.is_multiple_of(MB) {
        Size::Number(bytes / MB)
    } else {
        Size::Text(format!("{}k", bytes / 1024))
    }
}

fn size(bytes: u64) -> Size {
    match bytes {
        b if b % (1024 * 1024) == 0 => Size::Text(format!("{}m", b / (1024 * 1024))),
        b if b % 1024 == 0 => Size::Text(format!("{}k", b / 1024)),
        b => Size::Number(b),
    }
}

/// magent's flags, as `keepcached proxy` reads them, as a `[proxy]` section.
fn proxy_section(
    flags: &str,
    notes: &mut Vec<String>,
) -> Result<keepcached_proxy::ProxyConfig, String> {
    #[derive(Parser)]
    struct Magent {
        #[command(flatten)]
        args: ProxyArgs,
    }
    let argv = std::iter::once("magent".to_string()).chain(split_command(flags));
    let args = Magent::try_parse_from(argv)
        .map_err(|e| {
            let first = e.to_string();
            format!(
                "--magent {flags:?}: {}",
                first.lines().next().unwrap_or_default()
            )
        })?
        .args;
    if args.config.is_some() {
        return Err(format!(
            "--magent {flags:?}: --config: give magent's own flags; a proxy TOML file's keys \
             go under [proxy] as they are"
        ));
    }
    notes.push(String::new());
    if let Some(user) = &args.user {
        notes.push(format!(
            "magent -u {user}: a process option (see memcached -u above), not in this file."
        ));
    }
    if !args.foreground {
        notes.push("magent daemonized by default: `keepcached node -d`, or systemd's unit.".into());
    }
    args.into_config()
        .map_err(|e| format!("--magent {flags:?}: {e}"))
}

/// keepalived.conf's VRRP part as a `[vrrp]` section. With a proxy in the node, the
/// scripts that managed or checked magent are dropped: VRRP tracks the node's proxy and
/// cache server in-process.
fn vrrp_section(
    path: &Path,
    has_proxy: bool,
    notes: &mut Vec<String>,
) -> Result<VrrpConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let (mut vrrp, warnings) = keepcached_vrrp::parse_keepalived_conf(&text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    notes.push(String::new());
    for warning in warnings {
        notes.push(format!("{}: {warning}", path.display()));
    }
    if !has_proxy {
        return Ok(vrrp);
    }
    let dropped: Vec<String> = vrrp
        .script
        .iter()
        .filter(|(_, s)| manages_magent(&s.command))
        .map(|(name, _)| name.clone())
        .collect();
    for name in &dropped {
        let script = vrrp
            .script
            .remove(name)
            .map(|s| s.command)
            .unwrap_or_default();
        notes.push(format!(
            "vrrp_script {name} ({script}) managed or checked magent: dropped. In a node, VRRP \
             tracks the proxy and the cache server in-process (FAULT, and the VIP to the other \
             node, while the proxy reaches no cache server or a role stopped), and the proxy \
             listens on the VIP before holding it (freebind), so nothing starts or kills it."
        ));
    }
    for instance in &mut vrrp.instances {
        instance.track_script.retain(|t| !dropped.contains(&t.name));
        let notify = &mut instance.notify;
        for slot in [
            &mut notify.master,
            &mut notify.backup,
            &mut notify.fault,
            &mut notify.stop,
            &mut notify.any,
        ] {
            if slot.as_deref().is_some_and(manages_magent) {
                notes.push(format!(
                    "instance {}: notify {} managed magent: dropped (the proxy runs in the node).",
                    instance.name,
                    slot.take().unwrap_or_default()
                ));
            }
        }
    }
    if vrrp.instances.iter().any(|i| !i.fast_takeover) {
        notes.push(
            "fast_takeover is off, as for any keepalived.conf: once every node of the virtual \
             router runs keepcached, fast_takeover = true lets a backup take over 1 ms per \
             priority level after the master's priority-0 advert instead of Skew_Time."
                .into(),
        );
    }
    if !dropped.is_empty() {
        notes.push(
            "Their weights no longer apply: every node's priority is its configured one, so \
             the order of the nodes stays as it was while all were healthy."
                .into(),
        );
    }
    Ok(vrrp)
}

/// Whether a keepalived script or notify command managed or checked magent: its command
/// line, or the script file it runs, names magent.
fn manages_magent(command: &str) -> bool {
    if command.contains("magent") {
        return true;
    }
    split_command(command)
        .iter()
        .filter(|word| word.starts_with('/'))
        .any(|file| std::fs::read_to_string(file).is_ok_and(|text| text.contains("magent")))
}

/// The printed configuration without the keys at their defaults (the file stays readable; a
/// key left out takes the same value), and with the proxy's `freebind`, which a node sets
/// itself, left out too.
fn compact(text: &str, config: &NodeConfig) -> String {
    let mut value: toml::Table = toml::from_str(text).unwrap_or_default();
    let defaults = defaults_for(config);
    strip_defaults(&mut value, &defaults, &[]);
    // A section all at its defaults still says that its role runs.
    for (section, present) in [
        ("server", config.server.is_some()),
        ("proxy", config.proxy.is_some()),
        ("vrrp", config.vrrp.is_some()),
    ] {
        if present && !value.contains_key(section) {
            value.insert(section.into(), toml::Value::Table(Default::default()));
        }
    }
    toml::to_string(&value).unwrap_or_else(|_| text.to_string())
}

/// The same sections with every value at its default (pools, instances and VIPs kept, so the
/// rest can be compared).
fn defaults_for(config: &NodeConfig) -> toml::Table {
    let mut table = toml::Table::new();
    if config.server.is_some() {
        table.insert(
            "server".into(),
            toml::Value::try_from(ServerSection::default())
                .unwrap_or(toml::Value::Table(Default::default())),
        );
    }
    if config.proxy.is_some() {
        let default = ProxyArgs {
            servers: vec!["127.0.0.1".into()],
            ..ProxyArgs::default()
        }
        .into_config()
        .map(|mut d| {
            d.freebind = config.vrrp.is_some();
            d
        });
        if let Ok(default) = default {
            if let Ok(v) = toml::Value::try_from(default) {
                table.insert("proxy".into(), v);
            }
        }
    }
    if let Some(vrrp) = &config.vrrp {
        let instances: Vec<toml::Value> = vrrp
            .instances
            .iter()
            .filter_map(|i| {
                let minimal = format!(
                    "[[instance]]\nname = {:?}\ninterface = {:?}\nvrid = {}\nvips = []\n",
                    i.name, i.interface, i.vrid
                );
                let parsed: toml::Table = toml::from_str(&minimal).ok()?;
                let cfg: keepcached_vrrp::config::InstanceConfig =
                    parsed.get("instance")?.get(0)?.clone().try_into().ok()?;
                toml::Value::try_from(cfg).ok()
            })
            .collect();
        let mut v = toml::Table::new();
        v.insert("script".into(), toml::Value::Table(Default::default()));
        v.insert("proxy_check".into(), toml::Value::Table(Default::default()));
        v.insert("instance".into(), toml::Value::Array(instances));
        table.insert("vrrp".into(), toml::Value::Table(v));
    }
    table
}

/// Keys an entry of an array of tables keeps even at their defaults: required, or what tells
/// the nodes apart.
const KEEP: &[&str] = &["name", "interface", "vrid", "priority"];

/// Removes from `value` what equals `default` (tables compared key by key, arrays of tables
/// element by element; empty tables left out), except the keys in `keep`.
fn strip_defaults(value: &mut toml::Table, default: &toml::Table, keep: &[&str]) {
    value.retain(|key, v| {
        if keep.contains(&key) {
            return true;
        }
        let Some(d) = default.get(key) else {
            return true;
        };
        match (v, d) {
            (toml::Value::Table(t), toml::Value::Table(d)) => {
                strip_defaults(t, d, &[]);
                !t.is_empty()
            }
            (toml::Value::Array(items), toml::Value::Array(ds))
                if items.iter().all(toml::Value::is_table) && !ds.is_empty() =>
            {
                for (item, d) in items.iter_mut().zip(ds) {
                    if let (toml::Value::Table(t), toml::Value::Table(d)) = (item, d) {
                        strip_defaults(t, d, KEEP);
                    }
                }
                true
            }
            (v, d) => v != d,
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_written_as_memcached_takes_them() {
        assert_eq!(megabytes(32 * 1024 * 1024), Size::Number(32));
        assert_eq!(megabytes(1536 * 1024), Size::Text("1536k".into()));
        assert_eq!(size(1024 * 1024), Size::Text("1m".into()));
        assert_eq!(size(2048), Size::Text("2k".into()));
        assert_eq!(size(1500), Size::Number(1500));
    }
}
