//! `keepcached server`: memcached 1.6's command line, with memcached's meanings and defaults.
//!
//! Flags are parsed and validated before any socket is bound. Then: look the `-u` user up,
//! open the log file, raise the open-file limit, bind, load `-e`, daemonize, switch user, write
//! the pid file, serve. Unlike memcached, which binds after daemonizing, `-d` exits 0 only
//! once all of that worked (see `process::daemonize`); otherwise it exits with the status
//! memcached gives the same failure in the foreground.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{ArgAction, Parser};
use keepcached_server::auth::{AuthFile, Users};
use keepcached_server::settings::Protocol;
use keepcached_server::{Listeners, Server, Settings};
use nix::sys::signal::Signal;

use crate::{process, UsageError};

/// memcached-compatible flags. Help is printed by [`print_help`] in memcached's layout, so clap's
/// own help and version flags are off (`-h` and `-V` mean what they mean to memcached).
#[derive(Debug, Parser)]
#[command(
    name = "keepcached server",
    disable_help_flag = true,
    disable_version_flag = true,
    // getopt's rule, which memcached's command lines rely on: a repeated flag's last value wins.
    args_override_self = true
)]
pub struct ServerArgs {
    #[arg(
        short = 'p',
        long = "port",
        default_value_t = 11211,
        allow_negative_numbers = true
    )]
    port: i32,
    #[arg(
        short = 'U',
        long = "udp-port",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    udp_port: i32,
    #[arg(short = 's', long = "unix-socket")]
    unix_socket: Option<PathBuf>,
    #[arg(short = 'a', long = "unix-mask", default_value = "0700")]
    unix_mask: String,
    #[arg(short = 'A', long = "enable-shutdown")]
    enable_shutdown: bool,
    #[arg(short = 'l', long = "listen", value_delimiter = ',', action = ArgAction::Append)]
    listen: Vec<String>,
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    #[arg(short = 'r', long = "enable-coredumps")]
    enable_coredumps: bool,
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    #[arg(short = 'm', long = "memory-limit", default_value = "64")]
    memory_limit: String,
    #[arg(short = 'M', long = "disable-evictions")]
    disable_evictions: bool,
    #[arg(short = 'c', long = "conn-limit", default_value_t = 1024)]
    conn_limit: usize,
    #[arg(short = 'k', long = "lock-memory")]
    lock_memory: bool,
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    verbose: u8,
    #[arg(short = 'h', long = "help")]
    help: bool,
    #[arg(short = 'i', long = "license")]
    license: bool,
    #[arg(short = 'V', long = "version")]
    version: bool,
    #[arg(short = 'P', long = "pidfile")]
    pidfile: Option<PathBuf>,
    /// Not in memcached, which logs to stderr only.
    #[arg(long = "log-file")]
    log_file: Option<PathBuf>,
    #[arg(short = 'f', long = "slab-growth-factor")]
    slab_growth_factor: Option<f64>,
    #[arg(short = 'n', long = "slab-min-size")]
    slab_min_size: Option<u32>,
    #[arg(short = 'L', long = "enable-largepages")]
    enable_largepages: bool,
    #[arg(short = 'D')]
    delimiter: Option<char>,
    #[arg(short = 't', long = "threads", default_value_t = 4)]
    threads: usize,
    #[arg(short = 'R', long = "max-reqs-per-event", default_value_t = 20)]
    max_reqs_per_event: usize,
    #[arg(short = 'C', long = "disable-cas")]
    disable_cas: bool,
    #[arg(short = 'b', long = "listen-backlog", default_value_t = 1024)]
    listen_backlog: u32,
    #[arg(short = 'B', long = "protocol")]
    protocol: Option<String>,
    #[arg(short = 'I', long = "max-item-size", default_value = "1m")]
    max_item_size: String,
    #[arg(short = 'S', long = "enable-sasl")]
    enable_sasl: bool,
    #[arg(short = 'Y', long = "auth-file")]
    auth_file: Option<PathBuf>,
    #[arg(short = 'F', long = "disable-flush-all")]
    disable_flush_all: bool,
    #[arg(short = 'X', long = "disable-dumping")]
    disable_dumping: bool,
    #[arg(short = 'W', long = "disable-watch")]
    disable_watch: bool,
    #[arg(short = 'Z', long = "enable-ssl")]
    enable_ssl: bool,
    #[arg(short = 'e', long = "memory-file")]
    memory_file: Option<PathBuf>,
    #[arg(short = 'N', long = "napi-ids")]
    napi_ids: Option<u32>,
    #[arg(short = 'o', long = "extended", value_delimiter = ',', action = ArgAction::Append)]
    extended: Vec<String>,
    /// Not in memcached: Prometheus metrics served at http://ADDR:PORT/metrics.
    #[arg(long = "metrics")]
    metrics: Option<String>,
}

/// What the command line asked for, ready to run.
#[derive(Debug)]
pub struct ServerPlan {
    pub settings: Settings,
    pub daemon: bool,
    pub user: Option<String>,
    pub pidfile: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub lock_memory: bool,
    pub enable_coredumps: bool,
    /// `--metrics ADDR:PORT`, checked.
    pub metrics: Option<String>,
}

pub enum Parsed {
    Run(Box<ServerPlan>),
    /// `-h`, `-V` or `-i`: print and exit 0.
    Print(String),
}

/// Parses a memory size: a plain number is in `default_unit` bytes; k, m and g suffixes (either
/// case) are kibi-, mebi- and gibibytes. memcached itself reads `-m 32m` as 32 only by accident
/// (its `atoi` stops at the `m`); we accept the suffixes on purpose.
pub fn parse_size(text: &str, default_unit: u64) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last()? {
        (i, 'k' | 'K') => (&text[..i], 1024),
        (i, 'm' | 'M') => (&text[..i], 1024 * 1024),
        (i, 'g' | 'G') => (&text[..i], 1024 * 1024 * 1024),
        _ => (text, default_unit),
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// `-o` options memcached knows that tune its slab allocator, LRU threads or extstore: accepted
/// so existing command lines keep working, with a warning because they change nothing here.
const INERT_OPTIONS: &[&str] = &[
    "maxconns_fast",
    "no_maxconns_fast",
    "hashpower",
    "slab_reassign",
    "no_slab_reassign",
    "slab_automove_ratio",
    "slab_automove_window",
    "slab_automove_freeratio",
    "tail_repair_time",
    "hash_algorithm",
    "lru_crawler_sleep",
    "lru_crawler_tocrawl",
    "lru_maintainer",
    "no_lru_maintainer",
    "hot_lru_pct",
    "warm_lru_pct",
    "hot_max_factor",
    "warm_max_factor",
    "temporary_ttl",
    "worker_logbuf_size",
    "slab_sizes",
    "slab_chunk_max",
    "no_inline_ascii_resp",
    "inline_ascii_resp",
    "modern",
    "no_modern",
    "no_chunked_items",
    "drop_privileges",
    "no_drop_privileges",
    "resp_obj_mem_limit",
    "no_hashexpand",
    "ext_path",
    "ext_wbuf_size",
    "ext_threads",
    "ext_io_depth",
    "ext_page_size",
    "ext_item_size",
    "ext_item_age",
    "ext_low_ttl",
    "ext_recache_rate",
    "ext_compact_under",
    "ext_drop_under",
    "ext_max_sleep",
    "ext_max_frag",
    "ext_drop_unread",
];

pub fn parse(args: &[String]) -> Result<Parsed, UsageError> {
    let args = ServerArgs::try_parse_from(
        std::iter::once("keepcached server".to_string()).chain(args.iter().cloned()),
    )
    .map_err(|e| UsageError(e.to_string()))?;
    if args.help {
        return Ok(Parsed::Print(help_text()));
    }
    if args.version {
        return Ok(Parsed::Print(format!(
            "keepcached {} (memcached {} protocol)\n",
            env!("CARGO_PKG_VERSION"),
            keepcached_server::execute::PROTOCOL_VERSION
        )));
    }
    if args.license {
        return Ok(Parsed::Print(
            "keepcached is distributed under the BSD 3-Clause license.\n".into(),
        ));
    }
    let usage = |msg: String| Err(UsageError(msg));
    let Some((port, tcp_ephemeral)) = port_arg(args.port) else {
        return usage(format!("invalid TCP port (-p): {}", args.port));
    };
    let Some((udp_port, udp_ephemeral)) = port_arg(args.udp_port) else {
        return usage(format!("invalid UDP port (-U): {}", args.udp_port));
    };
    let mut settings = Settings {
        port,
        udp_port,
        tcp_ephemeral,
        udp_ephemeral,
        // As memcached: where to write the ports actually bound (how -p -1 is found out).
        port_file: std::env::var_os("MEMCACHED_PORT_FILENAME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        unix_socket: args.unix_socket,
        shutdown_command: args.enable_shutdown,
        evictions: !args.disable_evictions,
        cas: !args.disable_cas,
        flush_enabled: !args.disable_flush_all,
        dump_enabled: !args.disable_dumping,
        watch_enabled: !args.disable_watch,
        verbose: u32::from(args.verbose),
        backlog: args.listen_backlog,
        ..Settings::default()
    };
    settings.unix_mask = match u32::from_str_radix(&args.unix_mask, 8) {
        Ok(mask) if mask <= 0o777 => mask,
        _ => return usage(format!("invalid unix socket mask: {}", args.unix_mask)),
    };
    for addr in args.listen.iter().filter(|a| !a.is_empty()) {
        // memcached accepts `-l host:port` too; the port part is ignored in favour of -p.
        let host = addr
            .strip_prefix('[')
            .and_then(|a| a.split(']').next())
            .unwrap_or_else(|| match addr.matches(':').count() {
                1 => addr.split(':').next().unwrap_or(addr),
                _ => addr,
            });
        match host.parse::<IpAddr>() {
            Ok(ip) => settings.listen.push(ip),
            Err(_) => match std::net::ToSocketAddrs::to_socket_addrs(&(host, 0)) {
                Ok(resolved) => settings.listen.extend(resolved.map(|a| a.ip())),
                Err(e) => return usage(format!("cannot resolve listen address {host}: {e}")),
            },
        }
    }
    let Some(megabytes) = parse_size(&args.memory_limit, 1024 * 1024) else {
        return usage(format!("invalid memory limit: {}", args.memory_limit));
    };
    if megabytes == 0 {
        return usage("memory limit (-m) must be greater than 0".into());
    }
    settings.max_bytes = megabytes;
    if args.conn_limit == 0 {
        return usage("Number of connections must be greater than 0".into());
    }
    settings.max_connections = args.conn_limit;
    if args.threads == 0 {
        return usage("Number of threads must be greater than 0".into());
    }
    if args.threads > 64 {
        eprintln!("WARNING: Setting a high number of worker threads is not recommended.");
    }
    settings.threads = args.threads;
    if args.max_reqs_per_event == 0 {
        return usage("Number of requests per event must be greater than 0".into());
    }
    settings.reqs_per_event = args.max_reqs_per_event;
    let Some(item_size) = parse_size(&args.max_item_size, 1) else {
        return usage(format!("invalid item size: {}", args.max_item_size));
    };
    if item_size < 1024 {
        return usage("Item max size cannot be less than 1024 bytes.".into());
    }
    if item_size > 1024 * 1024 * 1024 {
        return usage("Cannot set item size limit higher than 1 GB.".into());
    }
    if item_size > settings.max_bytes / 2 {
        return usage("Cannot set item size limit higher than 1/2 of memory max.".into());
    }
    settings.item_size_max = item_size as usize;
    settings.protocol = match args.protocol.as_deref() {
        Some("ascii") => Protocol::Ascii,
        Some("binary") => Protocol::Binary,
        Some("auto") | None => Protocol::Auto,
        Some(other) => return usage(format!("Invalid value for binding protocol: {other}")),
    };
    if let Some(path) = &args.auth_file {
        // As memcached: the authentication request is a text `set`, so -Y makes ASCII the
        // protocol and refuses any other.
        if args.protocol.is_some() && settings.protocol != Protocol::Ascii {
            return usage(
                "ASCII authentication (-Y) needs the ASCII protocol; drop -B or use -B ascii"
                    .into(),
            );
        }
        if args.enable_sasl {
            return usage(
                "-S (SASL, binary) and -Y (ASCII authentication) exclude each other".into(),
            );
        }
        // A UDP request belongs to no connection that could have authenticated.
        if args.udp_port != 0 {
            return usage("ASCII authentication (-Y) cannot be used with UDP; use -U 0".into());
        }
        settings.protocol = Protocol::Ascii;
        match Users::load_authfile(path) {
            Ok(users) => {
                settings.ascii_auth = Some(AuthFile {
                    path: path.clone(),
                    users,
                })
            }
            Err(e) => return usage(e.to_string()),
        }
    }
    if args.enable_sasl {
        // As memcached: SASL is binary-only, so -S makes binary the default and refuses ascii.
        if settings.protocol == Protocol::Ascii {
            return usage("You cannot allow the ASCII protocol while using SASL.".into());
        }
        settings.protocol = Protocol::Binary;
        let Some(pwdb) = std::env::var_os("MEMCACHED_SASL_PWDB") else {
            return usage(
                "-S needs MEMCACHED_SASL_PWDB: the path of a file of user:password lines".into(),
            );
        };
        match Users::load(std::path::Path::new(&pwdb)) {
            Ok(users) => settings.sasl_users = Some(users),
            Err(e) => return usage(e.to_string()),
        }
    }
    if args.enable_ssl {
        return usage("TLS (-Z) is not supported; terminate TLS in front of keepcached".into());
    }
    if let Some(path) = &args.memory_file {
        settings.memory_file = Some(memory_file_path(path).map_err(UsageError)?);
    }
    if let Some(factor) = args.slab_growth_factor {
        // memcached's check and message.
        if factor <= 1.0 || !factor.is_finite() {
            return usage("Factor must be greater than 1".into());
        }
        settings.slab_growth_factor = factor;
    }
    if let Some(size) = args.slab_min_size {
        if size == 0 {
            return usage("Chunk size must be greater than 0".into());
        }
        settings.slab_min_size = size;
    }
    for (flag, given) in [
        ("-L", args.enable_largepages),
        ("-N", args.napi_ids.is_some()),
    ] {
        if given {
            eprintln!("keepcached: {flag} has no effect in keepcached and is ignored");
        }
    }
    if let Some(delimiter) = args.delimiter {
        // As memcached: -D chooses the prefix delimiter and turns `stats detail` on.
        let Ok(byte) = u8::try_from(delimiter) else {
            return usage(format!("-D needs a one-byte delimiter, not {delimiter:?}"));
        };
        settings.prefix_delimiter = byte;
        settings.detail_enabled = true;
    }
    for option in args.extended.iter().filter(|o| !o.is_empty()) {
        let (key, value) = option
            .split_once('=')
            .map_or((option.as_str(), None), |(k, v)| (k, Some(v)));
        match key {
            "idle_timeout" => {
                let Some(secs) = value.and_then(|v| v.parse::<u64>().ok()) else {
                    return usage(format!("invalid idle_timeout: {option}"));
                };
                settings.idle_timeout = (secs > 0).then(|| Duration::from_secs(secs));
            }
            "udp_reply_limit" => {
                let Some(bytes) = value.and_then(|v| v.parse::<usize>().ok()) else {
                    return usage(format!("invalid udp_reply_limit: {option}"));
                };
                settings.udp_reply_limit = Some(bytes);
            }
            "read_buf_mem_limit" => {
                // memcached's unit: megabytes; 0 leaves the default (as much as -m).
                let Some(mb) = value.and_then(|v| v.parse::<u64>().ok()) else {
                    return usage(format!("invalid read_buf_mem_limit: {option}"));
                };
                settings.read_buf_mem_limit = mb.saturating_mul(1024 * 1024);
            }
            "lru_crawler" => settings.lru_crawler = true,
            "track_sizes" => settings.track_sizes = true,
            "watcher_logbuf_size" => {
                // memcached's unit: kilobytes.
                let Some(kb) = value
                    .and_then(|v| v.parse::<usize>().ok())
                    .filter(|kb| *kb > 0)
                else {
                    return usage(format!("invalid watcher_logbuf_size: {option}"));
                };
                settings.watcher_logbuf_size = kb.saturating_mul(1024);
            }
            "no_lru_crawler" => settings.lru_crawler = false,
            "slab_automove" => {
                // memcached: the level, 1 when none is given.
                let Some(level) = value.map_or(Some(1), |v| v.parse::<u32>().ok()) else {
                    return usage(format!("invalid slab_automove: {option}"));
                };
                settings.slab_automove = level;
            }
            "no_slab_automove" => settings.slab_automove = 0,
            _ if INERT_OPTIONS.contains(&key) => {
                eprintln!("keepcached: -o {key} has no effect in keepcached and is ignored");
            }
            _ => return usage(format!("Illegal suboption \"{option}\"")),
        }
    }
    crate::metrics::check(args.metrics.as_deref())?;
    Ok(Parsed::Run(Box::new(ServerPlan {
        settings,
        daemon: args.daemon,
        user: args.user,
        pidfile: args.pidfile,
        log_file: args.log_file,
        lock_memory: args.lock_memory,
        enable_coredumps: args.enable_coredumps,
        metrics: args.metrics,
    })))
}

/// memcached's port argument: a port, 0 (off) or -1 (one the kernel chooses, per socket);
/// `(port, ephemeral)`.
fn port_arg(value: i32) -> Option<(u16, bool)> {
    match value {
        -1 => Some((0, true)),
        _ => u16::try_from(value).ok().map(|port| (port, false)),
    }
}

/// Checks `-e FILE` before anything starts, as memcached checks its usage: the file's directory
/// must exist (the save writes a temporary file there and renames it) and FILE must not be a
/// directory. The path is made absolute, because daemonizing changes the working directory.
fn memory_file_path(path: &Path) -> Result<PathBuf, String> {
    let path = std::path::absolute(path)
        .map_err(|e| format!("-e {}: cannot resolve the path: {e}", path.display()))?;
    if path.is_dir() {
        return Err(format!("-e {}: is a directory, not a file", path.display()));
    }
    match path.parent() {
        Some(dir) if dir.is_dir() => Ok(path),
        Some(dir) => Err(format!(
            "-e {}: the directory {} does not exist",
            path.display(),
            dir.display()
        )),
        None => Err(format!("-e {}: not a file path", path.display())),
    }
}

fn help_text() -> String {
    let rows: &[(&str, &str)] = &[
        (
            "-p, --port=<num>",
            "TCP port (default: 11211; 0 is off, -1 a free one per socket)",
        ),
        (
            "-U, --udp-port=<num>",
            "UDP port (default: 0, off; -1 a free one per socket)",
        ),
        (
            "-s, --unix-socket=<file>",
            "unix socket to listen on (turns TCP off)",
        ),
        (
            "-a, --unix-mask=<mask>",
            "permissions of the unix socket, octal (default: 0700)",
        ),
        ("-A, --enable-shutdown", "allow the shutdown command"),
        (
            "-l, --listen=<addr>",
            "addresses to listen on, comma separated (default: all)",
        ),
        ("-d, --daemon", "run in the background"),
        (
            "-r, --enable-coredumps",
            "raise the core file limit to its maximum",
        ),
        (
            "-u, --user=<user>",
            "user to run as (required when started as root)",
        ),
        (
            "-m, --memory-limit=<num>",
            "memory for items in megabytes; 32m, 1g work too (default: 64)",
        ),
        (
            "-M, --disable-evictions",
            "return an error when memory is full instead of evicting",
        ),
        (
            "-c, --conn-limit=<num>",
            "maximum simultaneous connections (default: 1024)",
        ),
        ("-k, --lock-memory", "lock all memory pages into RAM"),
        ("-v, --verbose", "print errors and warnings"),
        ("-vv", "also print client commands"),
        ("-h, --help", "print this help and exit"),
        ("-i, --license", "print the license and exit"),
        ("-V, --version", "print the version and exit"),
        (
            "-P, --pidfile=<file>",
            "write the process id to this file (removed at exit)",
        ),
        (
            "--log-file=<file>",
            "log to this file (appended, plain text) instead of stderr",
        ),
        (
            "-f, --slab-growth-factor=<num>",
            "growth factor of the slab classes stats describe items by",
        ),
        (
            "-n, --slab-min-size=<bytes>",
            "item space of the first of those classes (default: 48)",
        ),
        ("-L, --enable-largepages", "accepted for compatibility"),
        (
            "-D <char>",
            "key prefix delimiter of `stats detail`, which it turns on",
        ),
        ("-t, --threads=<num>", "worker threads (default: 4)"),
        (
            "-R, --max-reqs-per-event=<num>",
            "requests per connection before yielding (default: 20)",
        ),
        ("-C, --disable-cas", "turn off CAS (saves 8 bytes per item)"),
        (
            "-b, --listen-backlog=<num>",
            "listen backlog (default: 1024)",
        ),
        (
            "-B, --protocol=<name>",
            "ascii, binary or auto (default: auto)",
        ),
        (
            "-I, --max-item-size=<num>",
            "largest item, k/m suffixes (default: 1m; min 1k, max 1g)",
        ),
        (
            "-S, --enable-sasl",
            "SASL PLAIN for binary clients (users: MEMCACHED_SASL_PWDB)",
        ),
        (
            "-Y, --auth-file=<file>",
            "ASCII clients authenticate first (user:password lines)",
        ),
        ("-F, --disable-flush-all", "refuse flush_all"),
        (
            "-X, --disable-dumping",
            "refuse stats cachedump and lru_crawler metadump",
        ),
        ("-W, --disable-watch", "refuse the watch command"),
        (
            "-e, --memory-file=<file>",
            "restartable cache: items saved to <file> on SIGTERM, SIGINT,",
        ),
        (
            "",
            "SIGUSR1 and shutdown (SIGUSR2 saves and goes on), loaded at start",
        ),
        (
            "-o, --extended=<opts>",
            "comma separated: idle_timeout=<secs>, no_lru_crawler,",
        ),
        (
            "",
            "udp_reply_limit=<bytes> (default: 10 x the request datagram),",
        ),
        (
            "",
            "read_buf_mem_limit=<mb> (values being received, all connections;",
        ),
        ("", "default: as much as -m), track_sizes (stats sizes),"),
        (
            "",
            "watcher_logbuf_size=<KiB> (per watch client; default: 256), and",
        ),
        ("", "memcached's tuning options (accepted with a warning)"),
        (
            "--metrics=<addr:port>",
            "serve Prometheus metrics at http://<addr:port>/metrics",
        ),
    ];
    let mut text = format!(
        "keepcached {} (memcached {} protocol)\n",
        env!("CARGO_PKG_VERSION"),
        keepcached_server::execute::PROTOCOL_VERSION
    );
    for (flag, what) in rows {
        text.push_str(&format!("{flag:<34}{what}\n"));
    }
    text
}

/// Runs the server described by `plan` until SIGTERM/SIGINT/SIGUSR1 or the `shutdown` command;
/// then, with `-e`, saves the items (a failed save makes the exit status 1).
pub fn run(plan: ServerPlan) -> anyhow::Result<()> {
    let ServerPlan {
        settings,
        daemon,
        user,
        pidfile,
        log_file,
        lock_memory,
        enable_coredumps,
        metrics,
    } = plan;
    let running_as_root = nix::unistd::geteuid().is_root() || nix::unistd::getuid().is_root();
    if running_as_root && user.as_deref().unwrap_or("").is_empty() {
        bail!(UsageError("can't run as root without the -u switch".into()));
    }
    // Everything that can fail is tried before the parent exits: names and files here, in
    // the foreground; what must happen in the daemon (switching user, the pid file) before
    // it reports to the waiting parent.
    let identity = match &user {
        Some(user) if running_as_root => Some(process::Identity::resolve(Some(user), None)?),
        _ => None,
    };
    let pidfile = pidfile.map(process::absolute).transpose()?;
    // The save and load lines are rare and say what became of the cache, SIGUSR1's why the
    // server stopped: shown without -v.
    crate::init_logging_with(
        u8::try_from(settings.verbose).unwrap_or(u8::MAX),
        "keepcached_server::persist=info,keepcached::server_cmd=info",
        log_file.as_deref(),
    )?;
    // Before the load, which may take seconds, so that a signal sent meanwhile does not end
    // the server (the default action of all three); the runtime handles them after it.
    process::ignore_signals_until_handled(&[Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGHUP])?;
    if enable_coredumps {
        process::raise_core_limit();
    }
    process::raise_nofile_limit(settings.max_connections)?;
    let listeners = Listeners::bind(&settings)?;
    let metrics = crate::metrics::bind(metrics.as_deref())?;
    let server = Server::new(settings);
    // Loaded before daemonizing, so that what became of the file reaches the terminal (or the
    // service manager's log) even under -d. Clients that connect meanwhile wait in the listen
    // backlog and are served from the loaded cache, never from an empty one.
    if let Some(file) = &server.memory_file {
        file.load(&server);
    }
    if daemon {
        process::daemonize(server.settings.verbose > 0)?;
    }
    if lock_memory {
        process::lock_memory();
    }
    if let Some(identity) = identity {
        identity.assume()?;
    }
    let runtime = process::runtime()?;
    // The pid file is written once signals are handled, so that a SIGTERM sent as soon as it
    // appears removes it; it is kept until the save is done.
    let _pidfile = runtime.block_on(async {
        let shutdown = process::shutdown_signal()?;
        process::may_cut_short("the shutdown", None);
        on_user_signals(&server)?;
        process::log_ignored_hangups()?;
        if let Some(endpoint) = metrics {
            // Only then: the collector turns on the per-request latency clock.
            let collector = keepcached_server::metrics::ServerMetrics::new(server.clone());
            crate::metrics::spawn(endpoint, vec![Box::new(collector)], shutdown.clone());
        }
        let pidfile = pidfile.map(process::PidFile::create).transpose()?;
        process::report_ready("cache server")?;
        keepcached_server::listener::serve(server.clone(), listeners, shutdown)
            .await
            .context("serving")?;
        save_at_exit(server).await?;
        anyhow::Ok(pidfile)
    })?;
    Ok(())
}

/// The save that ends a shutdown (`-e`, a node's `save_file`), if there is a file to save to.
/// It runs on a blocking thread, so that the runtime still handles a second SIGTERM or SIGINT,
/// which cuts it short: the previous file is kept whole and the temporary one removed
/// ([`process::may_cut_short`]).
pub async fn save_at_exit(server: Arc<Server>) -> anyhow::Result<()> {
    let Some(file) = &server.memory_file else {
        return Ok(());
    };
    process::may_cut_short(
        format!("the save to {}", file.path().display()),
        Some(file.temp_path()),
    );
    tokio::task::spawn_blocking(move || match &server.memory_file {
        Some(file) => file
            .save(&server)
            .map(drop)
            .with_context(|| format!("saving the cache to {}", file.path().display())),
        None => Ok(()),
    })
    .await
    .context("the save's thread")?
}

/// memcached 1.6's SIGUSR1, a graceful shutdown (which saves with `-e`), and SIGUSR2, a save
/// while serving ([`save_on_usr2`]).
fn on_user_signals(server: &Arc<Server>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = signal(SignalKind::user_defined1()).context("handling SIGUSR1")?;
    let graceful = server.clone();
    tokio::spawn(async move {
        if usr1.recv().await.is_some() {
            // Logged and reported as SIGTERM's is, so the log says why the server stopped.
            tracing::info!("SIGUSR1 received: shutting down");
            process::service_manager::stopping();
            graceful.shutdown_requested.send_replace(true);
        }
    });
    save_on_usr2(server, "no file was given with -e")
}

/// SIGUSR2: a save while serving (`missing`: why there is nothing to save to, when there is
/// not). The save runs on a blocking thread, so accepting goes on; the workers serve
/// throughout, since the cache is copied out a batch at a time.
pub fn save_on_usr2(server: &Arc<Server>, missing: &'static str) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr2 = signal(SignalKind::user_defined2()).context("handling SIGUSR2")?;
    let server = server.clone();
    tokio::spawn(async move {
        while usr2.recv().await.is_some() {
            if server.memory_file.is_none() {
                tracing::warn!("SIGUSR2 asks for a save, but {missing}");
                continue;
            }
            let server = server.clone();
            // A failed save has been logged, and the previous file is still whole.
            let _ = tokio::task::spawn_blocking(move || {
                server.memory_file.as_ref().map(|file| file.save(&server))
            })
            .await;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> Result<ServerPlan, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&args) {
            Ok(Parsed::Run(plan)) => Ok(*plan),
            Ok(Parsed::Print(text)) => Err(format!("printed: {text}")),
            Err(e) => Err(e.0),
        }
    }

    #[test]
    fn seed_command_line() {
        let plan = plan(&["-d", "-m", "32m", "-p11211", "-u", "root"]).unwrap();
        assert!(plan.daemon);
        assert_eq!(plan.settings.max_bytes, 32 * 1024 * 1024);
        assert_eq!(plan.settings.port, 11211);
        assert_eq!(plan.user.as_deref(), Some("root"));
    }

    #[test]
    fn memcached_defaults() {
        let s = plan(&[]).unwrap().settings;
        assert_eq!(s.max_bytes, 64 * 1024 * 1024);
        assert_eq!(s.max_connections, 1024);
        assert_eq!(s.threads, 4);
        assert_eq!(s.item_size_max, 1024 * 1024);
        assert!(s.evictions && s.cas && s.flush_enabled && !s.shutdown_command);
        assert_eq!(s.udp_port, 0, "UDP is off unless -U asks for it");
    }

    #[test]
    fn long_forms_and_lists() {
        let s = plan(&[
            "--port=1234",
            "--memory-limit=1g",
            "--threads=2",
            "-l",
            "127.0.0.1,::1",
            "-I",
            "2m",
            "-vv",
            "-o",
            "idle_timeout=5,hashpower=20,udp_reply_limit=4096,read_buf_mem_limit=32",
        ])
        .unwrap()
        .settings;
        assert_eq!(s.udp_reply_limit, Some(4096));
        assert_eq!(s.port, 1234);
        assert_eq!(s.max_bytes, 1024 * 1024 * 1024);
        assert_eq!(s.threads, 2);
        assert_eq!(s.listen.len(), 2);
        assert_eq!(s.item_size_max, 2 * 1024 * 1024);
        assert_eq!(s.verbose, 2);
        assert_eq!(s.idle_timeout, Some(Duration::from_secs(5)));
        assert_eq!(s.read_buffer_budget(), 32 * 1024 * 1024);
        assert_eq!(
            plan(&["-m", "16"]).unwrap().settings.read_buffer_budget(),
            16 * 1024 * 1024,
            "the default follows -m"
        );
    }

    #[test]
    fn slab_class_flags_are_checked_as_memcached_checks_them() {
        let s = plan(&[
            "-f",
            "2",
            "-n",
            "100",
            "-o",
            "track_sizes,watcher_logbuf_size=8",
        ])
        .unwrap()
        .settings;
        assert_eq!((s.slab_growth_factor, s.slab_min_size), (2.0, 100));
        assert!(s.track_sizes);
        assert_eq!(s.watcher_logbuf_size, 8 * 1024);
        assert_eq!(
            plan(&["-f", "1"]).unwrap_err(),
            "Factor must be greater than 1"
        );
        assert_eq!(
            plan(&["-n", "0"]).unwrap_err(),
            "Chunk size must be greater than 0"
        );
        assert!(!plan(&["-W"]).unwrap().settings.watch_enabled);
    }

    #[test]
    fn ephemeral_ports() {
        let s = plan(&["-p", "-1", "-U", "-1"]).unwrap().settings;
        assert!(s.tcp_ephemeral && s.udp_ephemeral);
        assert_eq!((s.port, s.udp_port), (0, 0));
        let s = plan(&["-p", "0", "-U", "11211"]).unwrap().settings;
        assert!(!s.tcp_ephemeral && !s.udp_ephemeral);
        assert!(plan(&["-p", "-2"]).unwrap_err().contains("-p"));
        assert!(plan(&["-U", "65536"]).unwrap_err().contains("-U"));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        assert!(plan(&["-o", "no_such_option"])
            .unwrap_err()
            .contains("Illegal suboption"));
        assert!(plan(&["-I", "512"]).is_err());
        assert!(plan(&["-m", "2", "-I", "2m"]).is_err());
        assert!(plan(&["-t", "0"]).is_err());
        assert!(plan(&["--no-such-flag"]).is_err());
        assert!(plan(&["-m", "lots"]).is_err());
    }

    #[test]
    fn ascii_auth_file_and_its_conflicts() {
        let dir = std::env::temp_dir().join(format!("keepcached-authfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("auth");
        std::fs::write(&file, "app:secret\n").unwrap();
        let path = file.to_str().unwrap();
        let s = plan(&["-Y", path]).unwrap().settings;
        assert_eq!(s.protocol, Protocol::Ascii);
        assert!(s.ascii_auth.unwrap().users.check(b"app", b"secret"));
        assert!(plan(&["-Y", path, "-B", "ascii"]).is_ok());
        assert!(plan(&["-Y", path, "-B", "auto"]).is_err());
        assert!(plan(&["-Y", path, "-U", "11211"]).is_err());
        assert!(plan(&["-Y", path, "-U", "11211", "-U", "0"]).is_ok());
        std::fs::write(&file, "app:secret\n\n").unwrap();
        assert!(plan(&["-Y", path]).unwrap_err().contains("line 2"));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(plan(&["-Y", path]).is_err());
    }

    #[test]
    fn memory_file_needs_an_existing_directory() {
        let dir = std::env::temp_dir();
        let file = dir.join(format!("keepcached-e-{}", std::process::id()));
        let s = plan(&["-e", file.to_str().unwrap()]).unwrap().settings;
        assert_eq!(s.memory_file.as_deref(), Some(file.as_path()));
        let relative = plan(&["--memory-file=cache.dump"]).unwrap().settings;
        assert!(relative.memory_file.unwrap().is_absolute());
        let missing = dir.join("keepcached-no-such-dir").join("cache");
        assert!(plan(&["-e", missing.to_str().unwrap()])
            .unwrap_err()
            .contains("does not exist"));
        assert!(plan(&["-e", dir.to_str().unwrap()])
            .unwrap_err()
            .contains("is a directory"));
    }

    #[test]
    fn help_lists_long_names() {
        let Ok(Parsed::Print(text)) = parse(&["-h".to_string()]) else {
            panic!("-h should print help")
        };
        assert!(text.contains("--memory-limit"));
        assert!(text.contains("--conn-limit"));
    }
}
